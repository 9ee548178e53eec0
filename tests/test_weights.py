"""Pretrained encoders as users have them (harness/models/weights.py, `udabench weights`).

Each official format is written here under its official key names (SegFormer's MiT: `patch_embed1`,
`block{s}.{i}`, `dwconv.dwconv`, `norm{s}`, a `head`; mmseg's ResNetV1c: `stem.0..7`, a
`{"state_dict": ...}` wrapper and an `fc`; torchvision's ResNet), from a timm reference model with
random weights; loaded through `model.pretrained`, the encoder's stage outputs must equal the
reference's exactly. Wrong files are refused naming the file, exit 2, before anything is written.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch

from harness.cli import main
from harness.models import create_segmentor
from harness.models.weights import OFFICIAL, detect_format, verify

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"


def mit_names(timm_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm pvt_v2 names -> SegFormer MiT names (mix_transformer.py), written out from the official keys."""
    out = {}
    for k, v in timm_sd.items():
        k = re.sub(r"^patch_embed\.", "patch_embed1.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", k)
        k = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", k)
        k = k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
        out[k] = v
    return out


def mmseg_v1c_names(timm_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm resnet*c names -> mmseg ResNetV1c names (deep stem `stem.0..8`, BN at 1, 4, 7)."""
    out = {}
    for k, v in timm_sd.items():
        k = re.sub(r"^conv1\.(\d)\.", r"stem.\1.", k)
        k = re.sub(r"^bn1\.", "stem.7.", k)
        out[k] = v
    return out


def reference(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a mismatched stem or norm shows in the outputs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def stage_outputs(model: torch.nn.Module, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return list(model.forward_intermediates(x, indices=indices, intermediates_only=True))


def check_mit(tmp_path: Path, backbone: str) -> None:
    ref = reference(backbone)
    sd = mit_names(ref.state_dict())
    assert {"patch_embed1.proj.weight", "patch_embed4.norm.weight", "block3.0.mlp.dwconv.dwconv.weight",
            "norm4.weight", "block1.0.attn.kv.weight", "head.weight"} <= set(sd)  # the official names
    path = tmp_path / "mit.pth"
    torch.save(sd, path)
    model = create_segmentor("daformer", backbone=backbone, pretrained=str(path), embed_dim=16).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        ours = model.encode(x)
    for a, b in zip(ours, stage_outputs(ref, x, [0, 1, 2, 3]), strict=True):
        assert torch.equal(a, b)
    v = verify(path, backbone)
    assert v.format == "mit" and v.dropped == ["head.weight", "head.bias"]
    assert v.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def check_mmseg_v1c(tmp_path: Path, backbone: str) -> None:
    ref = reference(backbone)
    sd = mmseg_v1c_names(ref.state_dict())
    assert {"stem.0.weight", "stem.1.running_var", "stem.3.weight", "stem.6.weight", "stem.7.weight",
            "layer4.2.conv3.weight", "fc.weight"} <= set(sd)
    path = tmp_path / "resnet_v1c.pth"
    torch.save({"meta": {"mmcv_version": "1.3.7"}, "state_dict": sd}, path)  # mmcv's checkpoint wrapper
    model = create_segmentor("deeplabv2", backbone=backbone, pretrained=str(path), output_stride=32).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        (ours,) = model.encode(x)
    assert torch.equal(ours, stage_outputs(ref, x, [4])[0])
    assert verify(path, backbone).format == "mmseg-resnet-v1c"


def test_segformer_mit_file_as_distributed_gives_the_reference_encoder(tmp_path):
    check_mit(tmp_path, "pvt_v2_b0")  # the key layout of every MiT size; b5 below


def test_mmseg_resnet_v1c_file_as_distributed_gives_the_reference_encoder(tmp_path):
    check_mmseg_v1c(tmp_path, "resnet50c")  # resnet101c below


def test_paper_encoders_mit_b5_and_resnet101_v1c(tmp_path):  # about 6 s: the two real paper networks
    check_mit(tmp_path, OFFICIAL["mit_b5"].backbone)
    check_mmseg_v1c(tmp_path, OFFICIAL["resnet101_v1c"].backbone)


def test_torchvision_resnet_and_safetensors(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18-torchvision.safetensors"
    save_file(tv.state_dict(), str(path))
    model = create_segmentor("deeplabv2", backbone="resnet18", pretrained=str(path), output_stride=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        (ours,) = model.encode(x)
        layers = torch.nn.Sequential(*list(tv.children())[:-2])
        assert torch.equal(ours, layers(x))
    assert detect_format(tv.state_dict()) == "timm"


class _Code:  # a pickled object: weights_only refuses to build it, so its code never runs
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("case, message", [
    ("another_network", r"\(timm format\) does not match timm backbone 'pvt_v2_b0': .*missing"),
    ("mit_of_another_size", r"\(mit format\) does not match timm backbone 'pvt_v2_b0': .*shape mismatch"),
    ("truncated", "is not a readable state dict"),
    ("not_a_state_dict", "is not a readable state dict"),
    ("pickled_code", "is not a readable state dict"),
    ("missing", r"does not exist\. List what each scale expects"),
])
def test_a_wrong_weights_file_is_refused_by_train_before_anything_is_written(case, message, tmp_path, capsys):
    path = tmp_path / f"{case}.pth"
    if case == "another_network":
        torch.save(timm.create_model("resnet18").state_dict(), path)
    elif case == "mit_of_another_size":
        torch.save(mit_names(timm.create_model("pvt_v2_b1").state_dict()), path)
    elif case == "truncated":
        torch.save(mit_names(timm.create_model("pvt_v2_b0").state_dict()), path)
        path.write_bytes(path.read_bytes()[:4096])
    elif case == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    elif case == "pickled_code":
        torch.save({"w": _Code()}, path)
    out = tmp_path / "out"
    rc = main(["train", str(CONFIGS / "daformer.yaml"), "--scale", "smoke", "--set", f"model.pretrained={path}",
               "--output", str(out)])
    err = capsys.readouterr()
    assert rc == 2, err.err
    assert re.search(message, err.err) and str(path) in err.err, err.err
    assert len(err.err.strip().splitlines()) == 1 and "pickled code ran" not in err.out + err.err
    assert not out.exists()


def test_udabench_weights_list_and_verify(tmp_path, capsys):
    assert main(["weights", "list", "--scale", "paper", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"paper\s+daformer\s+pvt_v2_b5\s+pretrained/mit_b5.pth\s+MISSING", out)
    assert re.search(r"paper\s+deeplabv2\s+resnet101c\s+pretrained/resnet101_v1c.pth\s+MISSING", out)
    assert "resnet101_v1c-e67eebb6.pth" in out and "NVlabs/SegFormer" in out

    ref = reference("pvt_v2_b0")
    (tmp_path / "pretrained").mkdir()
    path = tmp_path / "pretrained" / "mit_b0.pth"
    torch.save(mit_names(ref.state_dict()), path)
    assert main(["weights", "verify", str(path), "--backbone", "pvt_v2_b0"]) == 0
    out = capsys.readouterr().out
    n = len([k for k in ref.state_dict() if not k.startswith("head.")])
    assert f"OK for timm pvt_v2_b0: mit format, {n} tensors matched, classifier dropped (2 tensors)" in out
    assert hashlib.sha256(path.read_bytes()).hexdigest() in out
    assert main(["weights", "verify", str(path), "--arch", "daformer"]) == 2  # paper: pvt_v2_b5, not b0
    assert "shape mismatch" in capsys.readouterr().err


def test_paper_scale_refuses_to_start_without_its_weights_and_says_where_to_get_them(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(CONFIGS / "daformer.yaml"), "--scale", "paper"]) == 2
    err = capsys.readouterr().err
    assert "pretrained/mit_b5.pth' does not exist; it is SegFormer's ImageNet-1k MiT-B5" in err
    assert "model.pretrained: null" in err
    assert main(["train", str(CONFIGS / "daformer.yaml"), "--scale", "paper", "--set", "model.pretrained=null",
                 "--print-config"]) == 0
    assert "pretrained: null" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
