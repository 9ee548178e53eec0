"""Shared test setup: offline switches for every test, and a tiny synthetic dataset.

`synth_root` (session scope) is a real synthetic benchmark generated once per test session into a
temporary folder, in the same layout `udabench data synth` writes (see datasets/README.md):

    size 128x64 (width x height), seed 0
    source/train 16, target/train 16, target/val 8,
    target-fog/train 4, target-fog/val 4, target-night/train 4, target-night/val 4   (56 images)

Generating it takes well under a second. Use it through `DatasetConfig(root=str(synth_root), ...)`;
do not write into it (it is shared by the whole session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.env import offline

offline()

SYNTH_FIXTURE_SPLITS = {
    "source": {"train": 16},
    "target": {"train": 16, "val": 8},
    "target-fog": {"train": 4, "val": 4},
    "target-night": {"train": 4, "val": 4},
}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (128x64, 56 images; see the module docstring)."""
    from harness.data.synthetic import SynthParams, generate

    root = tmp_path_factory.mktemp("synthetic") / "synthetic"
    generate(SynthParams(seed=0, width=128, height=64, splits=SYNTH_FIXTURE_SPLITS), root)
    return root
