"""Keep everything the project runs on this machine: no telemetry, no hub downloads, no cloud probes.

`offline()` is called by the CLI before anything heavy is imported, and by the tests (conftest).
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",               # timm/huggingface: never download weights
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow usage telemetry
    "DVC_NO_ANALYTICS": "1",             # DVC analytics daemon
    "RAY_USAGE_STATS_ENABLED": "0",      # Ray usage stats
    "RAY_AUTH_MODE": "disabled",         # Ray token auth (avoids writing ~/.ray/auth_token)
    "DO_NOT_TRACK": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "2",     # Ray Tune: persist experiment state every 2 s
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "100",
}


def offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
