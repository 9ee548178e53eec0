"""Methods: host (self-training) methods and auxiliary tasks, each one module, registered by name.

A new auxiliary task is one file in this package plus one line in `_MODULES` below.
"""

from __future__ import annotations

import importlib

from harness.registry import Registry

HOSTS = Registry("host method")
AUX_TASKS = Registry("auxiliary task")

register_host = HOSTS.register
register_aux = AUX_TASKS.register

_MODULES = ("source_only", "dacs", "oracle", "contrastive", "mim", "mfm")

for _m in _MODULES:
    try:
        importlib.import_module(f"methods.{_m}")
    except ModuleNotFoundError as e:  # a module not written yet
        if e.name != f"methods.{_m}":
            raise
