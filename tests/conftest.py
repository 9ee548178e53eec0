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
    tiny_segmentor   a few layers behind a Segmentor's interface, for a host's arithmetic
    smoke_config     (session scope) a `dacs` run config at the smoke scale on `synth_root`
    reuse_and_fresh  a `Trainer.step` with MFM reusing the host's encoder pass and one without: losses, gradients
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


def tiny_segmentor(num_classes: int = 19):
    """A Segmentor around a few layers (its single-view passes, param_groups): conv stride 2 -> BN -> ReLU,
    then dropout -> 1x1 classifier."""
    from torch import nn

    from harness.models.base import Segmentor

    class TinySegmentor(Segmentor):
        arch = "tiny"

        def __init__(self) -> None:  # no timm encoder: Segmentor's attributes set here
            nn.Module.__init__(self)
            self.num_classes, self.backbone = num_classes, "tiny"
            self.feature_channels, self.feature_strides = [8], [2]
            self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Sequential(nn.Dropout2d(0.5), nn.Conv2d(8, num_classes, 1))

        def encode(self, x):
            return [self.encoder(x)]

        def decode(self, feats):
            return self.head(feats[-1])

    return TinySegmentor()


@pytest.fixture(scope="session")
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


def reuse_and_fresh(trainer, src, tgt, before=None, after=None):
    """One `Trainer.step` on (`src`, `tgt`) with MFM reusing the host's encoder pass of the mixed image
    ("reuse") and one with MFM encoding it itself ("fresh"), both from the trainer's weights as they are now
    and the same random draws (seed 7: ClassMix, augmentation, masks); the optimiser step is replaced by a
    record of the summed gradients of host + tasks. `before(variant)` runs right before each step,
    `after(variant)` right after it. Returns {variant: (student encoder passes, summed losses)} and
    {variant: {parameter name ("aux." + name for the tasks'): gradient}}."""
    import copy
    from collections import defaultdict

    import torch

    start = copy.deepcopy({"model": trainer.model.state_dict(), "host": trainer.host.state_dict(),
                           "aux": trainer.aux.state_dict()})
    mfm = trainer.aux["mfm"]
    calls = []
    hook = trainer.model.encoder.register_forward_hook(lambda *_: calls.append(1))  # the student's
    grads = {}

    def capture(*_, **__):
        params = [*trainer.model.named_parameters(), *(("aux." + n, p) for n, p in trainer.aux.named_parameters())]
        grads[variant] = {n: p.grad.clone() for n, p in params if p.grad is not None}

    trainer.optimizer.step = capture
    ran = {}
    for variant in ("reuse", "fresh"):
        trainer.model.load_state_dict(start["model"])
        trainer.host.load_state_dict(start["host"])
        trainer.aux.load_state_dict(start["aux"])
        mfm.reuses = frozenset({"mixed_features"}) if variant == "reuse" else frozenset()
        if before:
            before(variant)
        calls.clear()
        torch.manual_seed(7)
        sums = defaultdict(float)
        trainer.step(src, tgt, sums)
        ran[variant] = (len(calls), dict(sums))
        if after:
            after(variant)
    hook.remove()
    return ran, grads


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
