"""`udabench eval CHECKPOINT`: checkpoint loading, --data resolution, the table and the JSON, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from harness.cli import main
from harness.cli.eval import dataset_config, load_model
from harness.config import ConfigError
from harness.engine import checkpoint as ckpt
from harness.engine.resolve import load_config
from harness.models import create_segmentor
from harness.scales import scale_overlay

torch.set_num_threads(1)


def write_checkpoint(folder, val_root="datasets/synthetic", arch="deeplabv2", **state):
    # domain and split spelled out: a partial `data.val` override resets the other fields to
    # DatasetConfig's defaults (source/train), not to data.val's (target/val).
    cfg = load_config(None, [f"data.val.root={val_root}", "data.val.domain=target", "data.val.split=val",
                             f"model.arch={arch}", "eval.max_images=2"],
                      extra=scale_overlay("smoke", arch))
    torch.manual_seed(123)
    model = create_segmentor(cfg.model.arch, backbone=cfg.model.backbone, **cfg.model.options)
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "iteration": 4, **state}
    return ckpt.save(state, folder), cfg, model


def test_load_model_restores_the_student_exactly(tmp_path):
    path, cfg, model = write_checkpoint(tmp_path / "run", arch="daformer")
    loaded, loaded_cfg = load_model(tmp_path / "run")  # a folder holding checkpoint.pt works
    assert loaded_cfg == cfg and loaded.backbone == "pvt_v2_b0"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_checkpoints_name_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["eval", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["eval", str(garbage)]) == 2
    assert f"{garbage}: not a readable udabench checkpoint" in capsys.readouterr().err
    no_model = tmp_path / "nomodel.pt"
    torch.save({"config": {}}, no_model)
    assert main(["eval", str(no_model)]) == 2
    assert "expected a dict with 'config' and 'model'" in capsys.readouterr().err
    # weights of another backbone than the config says
    path, cfg, _ = write_checkpoint(tmp_path / "run")
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["backbone"] = "resnet34"
    torch.save(state, tmp_path / "mismatch.pt")
    assert main(["eval", str(tmp_path / "mismatch.pt")]) == 2
    err = capsys.readouterr().err
    assert "mismatch.pt: model weights do not match deeplabv2/resnet34" in err
    state["config"]["model"]["arch"] = "deeplabv3"
    torch.save(state, tmp_path / "badcfg.pt")
    assert main(["eval", str(tmp_path / "badcfg.pt")]) == 2
    assert "badcfg.pt (config): model.arch: unknown model architecture 'deeplabv3'" in capsys.readouterr().err


def test_data_spec_resolution(tmp_path):
    default = object()
    assert dataset_config(None, default) is default
    ds = dataset_config("name=cityscapes,root=/data/cs,split=val,domain=null,resize=[1024, 512]", default)
    assert (ds.name, ds.root, ds.split, ds.domain, ds.resize) == ("cityscapes", "/data/cs", "val", None, (1024, 512))
    ds_file = tmp_path / "val.yaml"
    ds_file.write_text(yaml.safe_dump({"name": "synthetic", "root": "x", "domain": "target-fog", "split": "val"}))
    assert dataset_config(str(ds_file), default).domain == "target-fog"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"data": {"val": {"root": "y", "domain": "target-night", "split": "val"}}}))
    ds = dataset_config(str(run_file), default)
    assert (ds.root, ds.domain, ds.split) == ("y", "target-night", "val")
    with pytest.raises(ConfigError, match="rooot: unknown key.*did you mean 'root'"):
        dataset_config("name=synthetic,rooot=x", default)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "synthetic", "split": ["val"]}))
    with pytest.raises(ConfigError, match="bad.yaml: split"):
        dataset_config(str(bad), default)


def test_bad_data_argument_is_a_usage_error(tmp_path, capsys):
    write_checkpoint(tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), "--data", "nothing-here"]) == 2
    assert "--data 'nothing-here': not a file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "--data", "name=synthetic,spilt=val"]) == 2
    assert "did you mean 'split'" in capsys.readouterr().err


def test_eval_prints_the_table_and_writes_json(synth_root, tmp_path, capsys):
    from harness.config import DatasetConfig
    from harness.data import build_dataset
    from harness.engine.evaluation import evaluate

    _, cfg, model = write_checkpoint(tmp_path / "run", val_root=synth_root)
    out = tmp_path / "results" / "eval.json"
    assert main(["eval", str(tmp_path / "run"), "--max-images", "2", "--json", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "traffic light" in text and "mIoU (19)" in text and "mIoU16" in text and "(2 images, whole)" in text
    result = json.loads(out.read_text())
    assert result["num_images"] == 2 and result["units"] == "percent" and len(result["iou"]) == 19
    assert result["data"]["root"] == str(synth_root) and result["data"]["split"] == "val"
    # the same numbers as evaluate() on the checkpoint's model
    ds = build_dataset(DatasetConfig(name="synthetic", root=str(synth_root), domain="target", split="val"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1)
    direct = evaluate(model, loader, "cpu", max_images=2)
    assert result["miou"] == pytest.approx(100 * direct["miou"], abs=1e-3)
    for v, d in zip(result["iou"].values(), direct["iou"]):
        assert (v is None) == (d != d) and (v is None or v == pytest.approx(100 * d, abs=1e-3))
    # --data spec and sliding window (crop covering the image = whole-image numbers)
    spec = f"name=synthetic,root={synth_root},domain=target,split=val"
    h, w = ds[0]["image"].shape[-2:]
    out2 = tmp_path / "slide.json"
    assert main(["eval", str(tmp_path / "run"), "--data", spec, "--max-images", "2", "--mode", "slide",
                 "--crop", str(h), str(w), "--json", str(out2)]) == 0
    slide = json.loads(out2.read_text())
    assert slide["mode"] == "slide" and slide["miou"] == pytest.approx(result["miou"], abs=1e-6)


@pytest.mark.parametrize("layout", ["synthetic", "cityscapes", "gta5"])
def test_eval_on_an_empty_dataset_folder_is_one_line_exit_2(layout, tmp_path, capsys):
    """An empty folder (or one with the layout's folders but no images) given to `eval --data`."""
    path, _, _ = write_checkpoint(tmp_path / "run")
    root = tmp_path / "empty"
    root.mkdir()
    if layout == "cityscapes":
        for sub in ("leftImg8bit/val", "gtFine/val"):
            (root / sub).mkdir(parents=True)
        spec = f"name=cityscapes,root={root},split=val"
    elif layout == "gta5":
        for sub in ("images", "labels"):
            (root / sub).mkdir()
        spec = f"name=gta5,root={root}"
    else:
        spec = f"name=synthetic,root={root},domain=target,split=val"
    assert main(["eval", str(path), "--data", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udabench eval: error: ") and str(root) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in root.rglob("*")) == sorted(p.name for p in root.rglob("*") if p.is_dir())
