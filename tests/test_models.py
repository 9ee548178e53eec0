"""Segmentation architectures: shapes and strides, the encode/decode split, param groups, options,
local pretrained weights (matching and mismatching files), and the `udabench models` command."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F

from harness.cli import main
from harness.cli.models import parameter_counts
from harness.config import ConfigError
from harness.engine.resolve import load_config
from harness.env import offline
from harness.models import MODELS, PAPER_BACKBONES, create_segmentor
from harness.models.base import count_parameters
from harness.models.weights import WeightsFileError
from harness.registry import UnknownNameError

offline()
torch.set_num_threads(1)

# (arch, backbone, options, expected strides)
SMALL = [
    ("deeplabv2", "resnet18", {}, [8]),
    ("deeplabv2", "resnet18", {"aspp_dilations": (6, 12)}, [8]),
    ("daformer", "pvt_v2_b0", {"embed_dim": 32}, [4, 8, 16, 32]),
    ("segformer", "pvt_v2_b0", {"embed_dim": 32}, [4, 8, 16, 32]),
    ("daformer", "resnet18", {"embed_dim": 16}, [4, 8, 16, 32]),  # any timm features_only encoder
]


def small_id(case):
    arch, backbone, options, _ = case
    return f"{arch}-{backbone}" + ("-" + "-".join(map(str, options.values())) if options else "")


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)  # not square: catches height/width swaps


def test_registry_lists_the_architectures():
    assert {"deeplabv2", "daformer", "segformer", "hrda"} <= set(MODELS.names())
    assert set(PAPER_BACKBONES) == {"deeplabv2", "daformer", "segformer", "hrda"}


@pytest.mark.parametrize("case", SMALL, ids=small_id)
def test_shapes_and_strides(case, x):
    arch, backbone, options, strides = case
    model = create_segmentor(arch, backbone=backbone, num_classes=19, **options).eval()
    assert model.feature_strides == strides
    feats = model.encode(x)
    assert len(feats) == len(model.feature_channels) == len(strides)
    for f, c, s in zip(feats, model.feature_channels, model.feature_strides):
        assert tuple(f.shape) == (2, c, 64 // s, 96 // s)
    logits = model.decode(feats)
    ds = model.decoder_stride
    assert ds == strides[0]
    assert tuple(logits.shape) == (2, 19, 64 // ds, 96 // ds)
    out = model(x)
    assert tuple(out.shape) == (2, 19, 64, 96)
    expected = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)


def test_deeplabv2_exposes_layer4_only(x):
    model = create_segmentor("deeplabv2", backbone="resnet18")
    assert model.feature_channels == [512]  # resnet18 layer4
    assert len(model.encode(x)) == 1


def test_num_classes_option(x):
    model = create_segmentor("segformer", backbone="pvt_v2_b0", num_classes=7, embed_dim=16)
    assert model(x).shape[1] == 7


def test_deeplabv2_group_norm_has_no_batch_statistics(x):
    """norm=group: no BatchNorm and no running statistics, so an image's output in training mode does
    not depend on the other images of its batch (with BatchNorm it does)."""
    def outputs(norm):
        torch.manual_seed(0)
        model = create_segmentor("deeplabv2", backbone="resnet18", output_stride=16, norm=norm).train()
        return model, model(x)[:1], model(torch.cat([x[:1], 5 * x[1:]]))[:1]

    model, alone, mixed = outputs("group")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any("running" in name for name, _ in model.named_buffers())
    torch.testing.assert_close(alone, mixed)
    model, alone, mixed = outputs("batch")
    assert any("running_mean" in name for name, _ in model.named_buffers())
    assert not torch.allclose(alone, mixed)


@pytest.mark.parametrize("dilations", [(6, 12, 18, 24), (6, 12)])
def test_aspp_is_a_sum_of_dilated_convs(dilations, x):
    model = create_segmentor("deeplabv2", backbone="resnet18", aspp_dilations=dilations).eval()
    convs = model.head.convs
    assert [c.dilation[0] for c in convs] == list(dilations)
    assert all(c.kernel_size == (3, 3) and c.out_channels == 19 for c in convs)
    feats = model.encode(x)
    manual = sum(F.conv2d(feats[-1], c.weight, c.bias, padding=d, dilation=d) for c, d in zip(convs, dilations))
    torch.testing.assert_close(model.decode(feats), manual)


def test_daformer_head_structure():
    model = create_segmentor("daformer", backbone="pvt_v2_b0", embed_dim=64)
    head = model.head
    assert [e.out_channels for e in head.embed] == [64] * 4
    assert len(head.fusion) == 4  # dilations 1, 6, 12, 18
    dw = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert sorted(m.dilation[0] for m in dw) == [6, 12, 18]
    assert all(m.groups == m.in_channels == 4 * 64 for m in dw)  # depthwise on the 4 concatenated stages
    assert head.dropout.p == pytest.approx(0.1)


@pytest.mark.parametrize("arch,backbone", [("daformer", "pvt_v2_b0"), ("segformer", "pvt_v2_b0"),
                                           ("deeplabv2", "resnet18")])
def test_decode_uses_every_stage_and_backpropagates(arch, backbone, x):
    """MFM feeds rebuilt features to decode: gradients must reach every stage and through it the encoder."""
    model = create_segmentor(arch, backbone=backbone, embed_dim=16) if arch != "deeplabv2" else \
        create_segmentor(arch, backbone=backbone)
    model.train()
    feats = [f.detach().requires_grad_() for f in model.encode(x)]
    model.decode(feats).square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    model.zero_grad()
    model(x).square().mean().backward()
    enc = model.param_groups()["encoder"]
    assert sum(p.grad.abs().sum() for p in enc if p.grad is not None) > 0


@pytest.mark.parametrize("case", SMALL[:1] + SMALL[2:4], ids=small_id)
def test_param_groups_partition_the_model(case):
    arch, backbone, options, _ = case
    model = create_segmentor(arch, backbone=backbone, **options)
    groups = model.param_groups()
    enc, dec = {id(p) for p in groups["encoder"]}, {id(p) for p in groups["decoder"]}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in model.parameters()}
    assert enc == {id(p) for p in model.encoder.parameters()}


def test_bad_options_and_names():
    with pytest.raises(ConfigError, match="embed_dims: unknown key.*did you mean 'embed_dim'"):
        create_segmentor("daformer", backbone="pvt_v2_b0", embed_dims=64)
    with pytest.raises(ConfigError, match="embed_dim"):
        create_segmentor("segformer", backbone="pvt_v2_b0", embed_dim=0)
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        create_segmentor("deeplabv2", backbone="resnet181")
    with pytest.raises(UnknownNameError, match="did you mean 'segformer'"):
        create_segmentor("segformr", backbone="pvt_v2_b0")
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224.*output_stride"):
        create_segmentor("deeplabv2", backbone="vit_tiny_patch16_224")


def test_check_options_without_building():
    from harness.models import check_options

    check_options("daformer", {"embed_dim": 64, "fusion_dilations": [1, 6]})
    with pytest.raises(ConfigError, match="deeplabv2.*aspp_dilation: unknown key.*did you mean 'aspp_dilations'"):
        check_options("deeplabv2", {"aspp_dilation": [6, 12]})


def test_config_validates_model_arch_against_the_registry():
    assert load_config(None, ["model.arch=segformer"]).model.arch == "segformer"
    with pytest.raises(ConfigError, match="model.arch.*did you mean 'daformer'"):
        load_config(None, ["model.arch=dformer"])


# --------------------------------------------------------------------------------------------------
# local pretrained weights

def test_pretrained_resnet_from_local_file(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18")
    with torch.no_grad():
        reference.bn1.running_var.uniform_(0.5, 2.0)  # not the init value: loading must copy buffers too
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_segmentor("deeplabv2", backbone="resnet18", pretrained=path)
    ref = reference.state_dict()
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, ref[key], msg=key)
    assert torch.equal(model.encoder.bn1.running_var, reference.bn1.running_var)
    random = create_segmentor("deeplabv2", backbone="resnet18")
    assert not torch.equal(random.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_pretrained_pvt_from_safetensors_without_classifier(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("pvt_v2_b0", num_classes=0)  # no classifier in the file
    path = tmp_path / "pvt_v2_b0.safetensors"
    save_file(reference.state_dict(), str(path))
    model = create_segmentor("daformer", backbone="pvt_v2_b0", pretrained=str(path), embed_dim=16)
    assert torch.equal(model.encoder.stages_3.blocks[1].mlp.fc1.weight, reference.stages[3].blocks[1].mlp.fc1.weight)
    assert torch.equal(model.encoder.patch_embed.proj.weight, reference.patch_embed.proj.weight)


def test_pretrained_wrapped_state_dict(tmp_path):
    reference = timm.create_model("resnet18")
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)
    model = create_segmentor("deeplabv2", backbone="resnet18", pretrained=path)
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)


def test_pretrained_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsFileError, match=re.escape(str(path)) + ".*does not exist.*model.pretrained: null"):
        create_segmentor("deeplabv2", backbone="resnet18", pretrained=path)


def test_pretrained_wrong_architecture_names_file_and_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsFileError, match=re.escape(str(path)) + r".*'resnet34'.*missing \(layer1\.2\."):
        create_segmentor("deeplabv2", backbone="resnet34", pretrained=path)


def test_pretrained_shape_mismatch_names_the_tensor(tmp_path):
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(timm.create_model("pvt_v2_b0").state_dict(), path)
    with pytest.raises(WeightsFileError, match=r"shape mismatch \(patch_embed\.proj\.weight \(32, 3, 7, 7\) in "
                                               r"the file, \(64, 3, 7, 7\) in the model"):
        create_segmentor("segformer", backbone="pvt_v2_b1", pretrained=path, embed_dim=16)


def test_pretrained_unexpected_keys_and_garbage(tmp_path):
    sd = timm.create_model("resnet18").state_dict()
    sd["extra.weight"] = torch.zeros(3)
    extra = tmp_path / "extra.pth"
    torch.save(sd, extra)
    with pytest.raises(WeightsFileError, match=r"1 unexpected \(extra\.weight\)"):
        create_segmentor("deeplabv2", backbone="resnet18", pretrained=extra)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsFileError, match=re.escape(str(garbage)) + ".*not a readable state dict"):
        create_segmentor("deeplabv2", backbone="resnet18", pretrained=garbage)


# --------------------------------------------------------------------------------------------------
# parameter counts and `udabench models`

def test_meta_parameter_counts_equal_a_real_build():
    real = create_segmentor("daformer", backbone="resnet18", embed_dim=16)
    groups = real.param_groups()
    counts = parameter_counts("daformer", "resnet18", embed_dim=16)
    assert counts == {"encoder": sum(p.numel() for p in groups["encoder"]),
                      "decoder": sum(p.numel() for p in groups["decoder"]),
                      "total": count_parameters(real)}


def test_udabench_models_prints_paper_scale_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["deeplabv2"][1] == "resnet101c" and rows["daformer"][1] == "pvt_v2_b5"
    assert rows["segformer"][1] == "pvt_v2_b5"
    millions = {arch: [float(v.rstrip("M")) for v in rows[arch][2:5]] for arch in PAPER_BACKBONES}
    # Encoders as measured in the stack notes (timm resnet101 at OS8 42.5M, pvt_v2_b5 81.4M); resnet101c's
    # deep stem (3x3 convs 3-32-32-64 and their BN) replaces the 7x7 3->64 conv; heads from their formulas
    # at 19 classes, DeepLab-v2's with the paper's ASPP (6, 12).
    deep_stem = (3 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64) - (3 * 64 * 49 + 2 * 64)
    head = head_params("deeplabv2", [2048], dilations=(6, 12))
    with torch.device("meta"):
        resnet101 = sum(p.numel() for p in timm.create_model("resnet101", features_only=True).parameters())
    assert round(resnet101 / 1e6, 2) == 42.50
    assert millions["deeplabv2"] == [round((resnet101 + deep_stem) / 1e6, 2), round(head / 1e6, 2),
                                     round((resnet101 + deep_stem + head) / 1e6, 2)]
    assert millions["daformer"][:2] == [81.44, round(head_params("daformer", [64, 128, 320, 512], 256) / 1e6, 2)]
    assert millions["segformer"][:2] == [81.44, round(head_params("segformer", [64, 128, 320, 512], 768) / 1e6, 2)]


def head_params(arch, channels, e=0, k=19, dilations=(6, 12, 18, 24)):
    """Decoder parameter counts written out from the architecture descriptions (conv + BN weights)."""
    if arch == "deeplabv2":
        return len(dilations) * (channels[-1] * k * 9 + k)
    embed = sum(channels) * e + len(channels) * e  # per-stage linear embedding with bias
    cat = len(channels) * e
    classifier = e * k + k
    if arch == "segformer":
        return embed + (cat * e + 2 * e) + classifier  # 1x1 fuse (no bias) + BN
    one_by_one = cat * e + 2 * e
    separable = (cat * 9 + 2 * cat) + (cat * e + 2 * e)  # depthwise 3x3 + BN, pointwise 1x1 + BN
    bottleneck = 4 * e * e * 9 + 2 * e  # 3x3 over the four concatenated branches + BN
    return embed + one_by_one + 3 * separable + bottleneck + classifier


@pytest.mark.parametrize("arch,e", [("daformer", 32), ("segformer", 48)])
def test_head_parameter_counts_follow_the_architecture(arch, e):
    model = create_segmentor(arch, backbone="pvt_v2_b0", embed_dim=e)
    assert count_parameters(model.head) == head_params(arch, [32, 64, 160, 256], e)


def test_reduced_aspp_parameter_count():
    model = create_segmentor("deeplabv2", backbone="resnet18", aspp_dilations=(6, 12))
    assert count_parameters(model.head) == head_params("deeplabv2", [512], dilations=(6, 12))


def test_udabench_models_with_a_small_backbone(capsys):
    assert main(["models", "--backbone", "pvt_v2_b0", "--set", "embed_dim=16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    expected = parameter_counts("segformer", "pvt_v2_b0", embed_dim=16)["total"]
    assert rows["segformer"][4] == f"{expected / 1e6:.2f}M"
    assert "deeplabv2/pvt_v2_b0: cannot build" in out  # deeplabv2 has no embed_dim option


@pytest.mark.slow
def test_paper_scale_models_build_and_run():
    """Build the paper-scale models for real (random init) and run one small forward pass (HRDA: one
    512 detail window, its smallest input)."""
    for arch, backbone in PAPER_BACKBONES.items():
        side = 512 if arch == "hrda" else 64
        x = torch.randn(1, 3, side, side)
        model = create_segmentor(arch).eval()
        assert model.backbone == backbone
        assert count_parameters(model) == parameter_counts(arch)["total"]
        with torch.inference_mode():
            assert tuple(model(x).shape) == (1, 19, side, side)
        strides = [8] if arch == "deeplabv2" else [4, 8, 16, 32]
        assert model.feature_strides == strides
        if arch == "deeplabv2":
            assert model.feature_channels == [2048]
        else:
            assert model.feature_channels == [64, 128, 320, 512]
