"""The synthetic benchmark generator: byte-identical determinism (also across CPU code paths), class
coverage with a long tail, a domain gap beyond colour, the manifest, style overrides, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.config import ConfigError
from harness.data import synthetic as S
from harness.data.io import read_class_counts, read_label, read_rgb
from harness.data.synthetic import writing
from harness.labels import CLASSES, IGNORE_INDEX, TRAIN_ID

SMALL = {"source": {"train": 4}, "target": {"val": 3}, "target-fog": {"val": 2}, "target-night": {"val": 2}}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_parameters_give_byte_identical_files(tmp_path):
    params = S.SynthParams(seed=7, width=96, height=48, splits=SMALL)
    S.generate(params, tmp_path / "a")
    S.generate(params, tmp_path / "b")
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(a) == 2 * 11 + 4 + 1 and a == b
    other = S.generate(params.model_copy(update={"seed": 8}), tmp_path / "c")
    assert other["content_hash"] != json.loads(a["manifest.json"])["content_hash"]


def test_image_i_depends_only_on_its_key(tmp_path):
    """Image i of a split is the same whatever else is generated (split sizes, other domains)."""
    big = S.SynthParams(seed=1, width=96, height=48, splits={"target": {"val": 5}, "source": {"train": 2}})
    small = S.SynthParams(seed=1, width=96, height=48, splits={"target": {"val": 3}})
    S.generate(big, tmp_path / "big")
    S.generate(small, tmp_path / "small")
    for i in range(3):
        n = f"target/val/images/{i:05d}.png"
        assert (tmp_path / "big" / n).read_bytes() == (tmp_path / "small" / n).read_bytes()
    img, lab = S.render_index(S.resolve_styles(), big, "target", "val", 4)
    np.testing.assert_array_equal(img, read_rgb(tmp_path / "big/target/val/images/00004.png"))
    np.testing.assert_array_equal(lab, read_label(tmp_path / "big/target/val/labels/00004.png"))


HASH_SCRIPT = """
import hashlib
from harness.data.synthetic import SynthParams, render_index, resolve_styles
p = SynthParams(width=128, height=64); st = resolve_styles(); h = hashlib.sha256()
for d in ("source", "target", "target-fog", "target-night"):
    for i in range(4):
        img, lab = render_index(st, p, d, "train", i); h.update(img.tobytes()); h.update(lab.tobytes())
print(h.hexdigest())
"""


def test_pixels_do_not_depend_on_the_cpu_code_path():
    """numpy picks SIMD kernels by CPU; with the AVX2/AVX-512 kernels disabled (another machine's code
    path) the pixels must be the same: the renderer avoids functions whose kernels round differently."""
    env = dict(os.environ)
    base = subprocess.run([sys.executable, "-c", HASH_SCRIPT], capture_output=True, text=True, env=env, check=True)
    from numpy._core._multiarray_umath import __cpu_dispatch__

    env["NPY_DISABLE_CPU_FEATURES"] = " ".join(__cpu_dispatch__)
    other = subprocess.run([sys.executable, "-c", HASH_SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert base.stdout.strip() and base.stdout.strip() == other.stdout.strip()


@pytest.fixture(scope="module")
def sample():
    """40 rendered scenes per domain at 128x64 (in memory)."""
    styles, p = S.resolve_styles(), S.SynthParams(width=128, height=64)
    return {d: [S.render_index(styles, p, d, "train", i) for i in range(40)] for d in S.DOMAINS}


def pixel_freq(pairs) -> np.ndarray:
    counts = sum(np.bincount(lab.ravel(), minlength=256) for _, lab in pairs)
    return counts[:19] / counts[:19].sum()


@pytest.mark.parametrize("domain", ["source", "target"])
def test_class_coverage_and_long_tail(sample, domain):
    f = pixel_freq(sample[domain])
    present = [CLASSES[c] for c in range(19) if f[c] > 0]
    assert len(present) >= 15, present
    top4 = np.sort(f)[::-1][:4].sum()
    rare = [CLASSES[c] for c in range(19) if 0 < f[c] < 0.01]
    assert top4 > 0.7 and f.max() < 0.5, f       # a few classes dominate ...
    assert len(rare) >= 5, rare                  # ... several are rare
    # every scene has the street classes
    assert all({TRAIN_ID["road"], TRAIN_ID["building"]} <= set(np.unique(lab)) for _, lab in sample[domain])


def test_target_has_an_ego_hood_labelled_ignore_and_source_has_none(sample):
    assert not any((lab == IGNORE_INDEX).any() for _, lab in sample["source"])
    assert sum((lab == IGNORE_INDEX).any() for _, lab in sample["target"]) >= 10


def _flat_fraction(img: np.ndarray, mask: np.ndarray) -> float:
    """Share of horizontally adjacent pixel pairs inside a region with exactly the same RGB. Any
    per-channel affine normalisation (what a normalisation layer can undo) keeps equal pixels equal and
    different ones different, so this measures shading, texture and noise, not colour."""
    m = mask[:, 1:] & mask[:, :-1]
    same = (img[:, 1:] == img[:, :-1]).all(-1)
    return float(same[m].mean()) if m.any() else np.nan


@pytest.mark.parametrize("cls", ["road", "building", "vegetation", "sky"])
def test_domain_gap_is_not_only_colour(sample, cls):
    c = TRAIN_ID[cls]
    src = np.nanmedian([_flat_fraction(img, lab == c) for img, lab in sample["source"]])
    tgt = np.nanmedian([_flat_fraction(img, lab == c) for img, lab in sample["target"]])
    assert src > 0.5 and tgt < 0.1, (src, tgt)  # flat game shading vs camera texture, blur and noise


def test_fog_veils_distant_buildings_and_night_is_dark(sample):
    fog = np.asarray(S.FOG_UPDATE["weather"]["fog_color"], np.float64)

    def veil(d):  # mean distance of building pixels to the fog colour
        return np.mean([np.abs(img[lab == TRAIN_ID["building"]] - fog).mean() for img, lab in sample[d]])

    def brightness(d):
        return np.mean([img.mean() for img, _ in sample[d]])

    assert veil("target-fog") < 0.5 * veil("target")
    assert brightness("target-night") < 0.5 * brightness("target")


def test_manifest_and_statistics_match_the_files(synth_root):
    m = json.loads((synth_root / "manifest.json").read_text())
    assert m["image_size"] == {"width": 128, "height": 64} and m["num_images"] == 56
    assert m["generator"] == S.GENERATOR_VERSION and m["params"]["seed"] == 0
    info = m["splits"]["target/val"]
    assert info["count"] == 8 and abs(sum(info["class_pixel_frequency"]) - 1) < 1e-4
    names, counts = read_class_counts(synth_root / "target" / "val" / "class_counts.csv")
    assert names == [f"{i:05d}" for i in range(8)] and counts.sum(0).tolist() == info["class_pixels"]
    h = hashlib.sha256()
    for n in names:
        h.update(read_rgb(synth_root / "target/val/images" / f"{n}.png").tobytes())
        lab = read_label(synth_root / "target/val/labels" / f"{n}.png")
        h.update(lab.tobytes())
    assert h.hexdigest() == info["content_hash"]  # the hash is over decoded pixels
    np.testing.assert_array_equal(counts[-1], np.bincount(lab.ravel(), minlength=256)[:19])


def test_style_overrides_change_only_their_domains_and_typos_are_named():
    styles = S.resolve_styles({"target": {"optics": {"noise": 0}, "objects": {"persons": 9.0}}})
    assert styles["target"].optics.noise == 0 and styles["target-fog"].objects.persons == 9.0
    assert styles["source"] == S.resolve_styles()["source"]
    assert styles["target-night"].weather.night > 0  # the night variant keeps its own knobs
    with pytest.raises(ConfigError, match=r"synth.style.target: optics.nosie: unknown key \(did you mean 'noise'"):
        S.resolve_styles({"target": {"optics": {"nosie": 3}}})
    with pytest.raises(ConfigError, match="unknown domain.*did you mean 'target'"):
        S.resolve_styles({"targte": {}})
    with pytest.raises(ValueError, match="unknown domain 'sauce'"):
        S.SynthParams(splits={"sauce": {"train": 1}})


def test_gap_interpolates_the_target_style_between_source_and_camera():
    src, cam = S.SOURCE_STYLE, S.TARGET_STYLE
    assert S.mix_styles(src, cam, 0.0) == src and S.mix_styles(src, cam, 1.0) == cam
    assert S.resolve_styles(gap=0.0)["target"].palette.sky_top == src.palette.sky_top
    half = S.resolve_styles(gap=0.5)
    t = half["target"]
    assert t.optics.vignetting == pytest.approx(cam.optics.vignetting / 2)
    assert t.textures.grain["vegetation"] == pytest.approx(cam.textures.grain["vegetation"] / 2)  # absent in source
    assert min(src.palette.sky_top[0], cam.palette.sky_top[0]) <= t.palette.sky_top[0] <= max(
        src.palette.sky_top[0], cam.palette.sky_top[0])
    assert half["target-night"].weather.night == S.NIGHT_UPDATE["weather"]["night"]  # adverse knobs in full
    assert half["source"] == S.resolve_styles()["source"]
    # per-knob overrides apply on top of the gap
    assert S.resolve_styles({"target": {"optics": {"noise": 0}}}, gap=0.5)["target"].optics.noise == 0
    with pytest.raises(ValueError, match="gap"):
        S.SynthParams(gap=1.5)


def test_params_file_errors_name_the_file_and_field(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("synth:\n  seed: 0\n  widht: 64\n")
    with pytest.raises(ConfigError, match=r"params.yaml: synth: widht: unknown key \(did you mean 'width'"):
        S.load_params(p)
    p.write_text("other: {}\n")
    with pytest.raises(ConfigError, match="no 'synth:' group"):
        S.load_params(p)


def test_failed_generation_leaves_the_existing_dataset_untouched(tmp_path, monkeypatch):
    params = S.SynthParams(width=64, height=32, splits={"source": {"train": 3}})
    out = tmp_path / "synthetic"
    S.generate(params, out)
    before = tree_bytes(out)
    real = S.render_index

    def failing(styles, p, domain, split, index):
        if index == 2:
            raise RuntimeError("disk full")
        return real(styles, p, domain, split, index)

    monkeypatch.setattr(writing, "render_index", failing)  # what `generate` calls
    with pytest.raises(RuntimeError, match="disk full"):
        S.generate(params.model_copy(update={"seed": 5}), out)
    assert tree_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temporary folder left behind
