"""The engine: one run. A run config resolved against the registries (`resolve`), the training loop
(`training`), the evaluation protocol (`evaluation`) and checkpoints (`checkpoint`).

Imports the foundation, `harness.data`, `harness.models` and `methods`; nothing above (study, report,
cli).
"""
