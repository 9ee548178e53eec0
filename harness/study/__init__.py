"""Studies: many runs. A study file (`spec`: its schema; `fields`: config paths in words) is loaded and
checked in full (`load`), expanded into trials (`trials`), estimated (`estimate`) and run as a Ray Tune
experiment (`runner`, in a Ray `session`, each trial a `trainable`), every trial an MLflow run
(`tracking`).

Imports the foundation, `harness.data` and `harness.engine`; nothing above (report, cli).
"""
