"""The training engine: every host on both architectures, determinism, resume, NaN stop."""

from __future__ import annotations

import math
import re

import pytest

from harness.engine import checkpoint as ckpt
from harness.engine.training import TrainingDiverged, train
from harness.errors import UsageError

ARCHS = {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0"}


def comparable(metrics):
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
            for k, v in metrics.items() if k not in ("step_time", "throughput", "peak_mem_mb")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("host", ["source_only", "dacs", "oracle"])
def test_each_host_trains_on_each_architecture(smoke_config, tmp_path, host, arch):
    cfg = smoke_config(tmp_path / "run", f"method.host={host}", arch=arch)
    seen = []
    metrics = train(cfg, on_eval=lambda it, m, d: seen.append((it, m, d)), progress=False)
    assert [it for it, _, _ in seen] == [2, 4]
    assert 0 <= metrics["target_miou"] <= 100 and metrics["iteration"] == 4
    assert metrics["loss/sup"] > 0
    if host == "dacs":
        assert metrics["loss/uda"] >= 0 and 0 <= metrics["stat/pseudo_weight"] <= 1
    state = ckpt.load(seen[-1][2])
    assert state["iteration"] == 4 and set(state) >= {"model", "host", "optimizer", "scheduler", "rng"}
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_same_seed_same_metrics_to_the_last_digit(smoke_config, tmp_path):
    a = train(smoke_config(tmp_path / "a" / "run", "method.host=dacs"), progress=False)
    b = train(smoke_config(tmp_path / "b" / "run", "method.host=dacs"), progress=False)
    c = train(smoke_config(tmp_path / "c" / "run", "method.host=dacs", "seed=1"), progress=False)
    assert comparable(a) == comparable(b)
    assert comparable(a) != comparable(c)


class _Killed(Exception):
    pass


def test_resumed_run_ends_like_an_uninterrupted_one(smoke_config, tmp_path):
    full = train(smoke_config(tmp_path / "full" / "run", "method.host=dacs"), progress=False)

    def kill_after_first_eval(iteration, metrics, folder):
        raise _Killed(iteration)

    cfg = smoke_config(tmp_path / "part" / "run", "method.host=dacs")
    with pytest.raises(_Killed):
        train(cfg, on_eval=kill_after_first_eval, progress=False)
    assert ckpt.load(tmp_path / "part" / "run" / "checkpoint")["iteration"] == 2
    resumed = train(cfg, resume=tmp_path / "part" / "run" / "checkpoint", progress=False)
    assert comparable(resumed) == comparable(full)


def test_resume_refuses_a_checkpoint_of_another_config(smoke_config, tmp_path):
    cfg = smoke_config(tmp_path / "run", "method.host=source_only")
    train(cfg, progress=False)
    other = smoke_config(tmp_path / "run", "method.host=source_only", "seed=5")
    with pytest.raises(UsageError, match="different config.*seed"):
        train(other, resume=tmp_path / "run" / "checkpoint", progress=False)


def test_checkpoint_is_data_not_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="not a readable udabench checkpoint"):
        ckpt.load(tmp_path)


def test_diverging_loss_stops_the_run_naming_loss_and_iteration(smoke_config, tmp_path):
    cfg = smoke_config(tmp_path / "run", "method.host=source_only", "optim.lr=1e30",
                       "schedule.warmup=0", "schedule.iterations=8", "eval.interval=8")
    with pytest.raises(TrainingDiverged, match=r"loss 'sup' is (nan|inf|-inf) at iteration [1-7]"):
        train(cfg, progress=False)


def test_rare_class_sampling_prefers_rare_classes(synth_root):
    import numpy as np

    from harness.config import DatasetConfig
    from harness.data import build_dataset
    from harness.engine.training import SampleStream

    ds = build_dataset(DatasetConfig(root=str(synth_root), domain="source"))
    counts = np.asarray(ds.class_pixel_counts())
    plain = SampleStream(ds, seed=0)
    rcs = SampleStream(ds, seed=0, rcs=(0.01, 1))
    rarest = int(np.argmin(np.where(counts.sum(0) > 0, counts.sum(0), np.inf)))
    has_rare = counts[:, rarest] >= 1
    n = 400
    frac_plain = np.mean([has_rare[plain.index(k)[0]] for k in range(n)])
    frac_rcs = np.mean([has_rare[rcs.index(k)[0]] for k in range(n)])
    assert frac_rcs > frac_plain
    assert [rcs.index(k) for k in range(20)] == [SampleStream(ds, 0, (0.01, 1)).index(k) for k in range(20)]


def test_progress_without_a_terminal_prints_plain_lines(smoke_config, tmp_path, capsys):
    """Under pytest stderr is not a terminal: no progress bar, but a line per tenth of the schedule."""
    train(smoke_config(tmp_path / "run", "schedule.iterations=10", "eval.interval=10"))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if re.search(r"\(\d+%\) loss", ln)]
    assert len(lines) == 10, lines
    assert lines[0].startswith("[run] 1/10 (10%) loss ") and lines[-1].startswith("[run] 10/10 (100%)")
    train(smoke_config(tmp_path / "quiet" / "run", "schedule.iterations=10"), progress=False)
    assert "(10%)" not in capsys.readouterr().err
