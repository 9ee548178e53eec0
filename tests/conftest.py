"""Shared test setup: offline switches for every test, and a tiny synthetic dataset.

`synth_root` (session scope) is a real synthetic benchmark generated once per test session into a
temporary folder, in the same layout `udabench data synth` writes (see datasets/README.md):

    size 128x64 (width x height), seed 0
    source/train 16, target/train 16, target/val 8,
    target-fog/train 4, target-fog/val 4, target-night/train 4, target-night/val 4   (56 images)

Generating it takes well under a second. Use it through `DatasetConfig(root=str(synth_root), ...)`;
do not write into it (it is shared by the whole session).

Shared by several test files:

    one_thread       (module scope) one torch thread while a module's tests run
                     (`pytestmark = pytest.mark.usefixtures("one_thread")`)
    small_segmentor  the CPU-scale segmentors (SMALL_MODELS), seeded
    smoke_config     a `dacs` run config at the smoke scale on `synth_root`
    fill_store       benchmarks/bench_report.py `fill_store`: a real MLflow store of synthetic runs
    add_train_logs   benchmarks/bench_dense_logs.py `add_train_logs`: dense `train/` logs for a study's runs
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from harness.env import offline

offline()

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while the module's tests run: the machine's two cores are shared, and
    oversubscribed threads crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# the segmentors of the CPU scale, small enough for unit tests: architecture -> create_segmentor options
SMALL_MODELS = {
    "deeplabv2": {"backbone": "resnet18"},
    "daformer": {"backbone": "pvt_v2_b0", "embed_dim": 64},
}


def small_segmentor(arch: str = "daformer", seed: int = 0):
    """A SMALL_MODELS segmentor (19 classes, not pretrained), its weights drawn after `manual_seed(seed)`."""
    import torch

    from harness.models import create_segmentor

    torch.manual_seed(seed)
    opts = dict(SMALL_MODELS[arch])
    return create_segmentor(arch, backbone=opts.pop("backbone"), num_classes=19, **opts)


@pytest.fixture
def smoke_config(synth_root):
    """`smoke_config(out, *overrides, arch="deeplabv2", aux=None) -> RunConfig`: `dacs` on `synth_root`
    at the smoke scale of `arch`, one thread, output in `out`; `aux` is `method.aux` (task -> fields)."""
    from harness.engine.resolve import load_config
    from harness.scales import scale_overlay

    def build(out, *overrides: str, arch: str = "deeplabv2", aux: dict | None = None):
        data = [f"data.{part}.root={synth_root}" for part in ("source", "target", "val")]
        extra = scale_overlay("smoke", arch)
        if aux:
            extra["method"] = {**extra.get("method", {}), "aux": aux}
        return load_config(None, [*data, f"output={out}", "threads=1", "method.host=dacs", f"model.arch={arch}",
                                  *overrides], extra=extra)

    return build


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fill_store():
    """benchmarks/bench_report.py `fill_store(uri, n_runs, studies, evals, prefix=..., failed=..., ...)`:
    synthetic runs in the tracking schema, logged into a real MLflow store through the MLflow client."""
    return load_benchmark("bench_report").fill_store


@pytest.fixture(scope="session")
def add_train_logs():
    """benchmarks/bench_dense_logs.py `add_train_logs(uri, study, every, iterations)`: dense `train/` logs
    for every run of a study, as `TrialRun.log_train` writes them."""
    return load_benchmark("bench_dense_logs").add_train_logs
