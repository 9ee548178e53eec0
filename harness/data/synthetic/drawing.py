"""The procedural synthetic domain-shift benchmark: perspective street scenes with exact pixel labels
in the 19 Cityscapes classes, rendered in two domains that differ like game and camera data do.

A scene is ray-cast with a pinhole camera over a ground plane (road with lane marks, sidewalks with
curbs, terrain strips), two facade planes split into segments (buildings with windows and shop
fronts, hedges, walls, fences, gaps that show a far skyline) and billboard objects whose size shrinks
with distance (cars, trucks, buses, trams, persons, riders on bicycles or motorcycles, parked bikes,
poles carrying traffic lights and signs, trees), composited with a depth buffer.

Everything that makes the domains differ is a typed knob of `DomainStyle` (palette, textures, optics,
weather, layout, object statistics); `params.yaml`'s `synth.style` overrides any of them, which is how
the domain gap is calibrated. `source` is game-like (flat shading, saturated colours, sharp edges);
`target` is camera-like (other palette and illumination, textured surfaces, shadows, blur, sensor
noise, vignetting, chromatic aberration, an ego-vehicle hood labelled ignore, other object sizes and
frequencies); `target-fog` and `target-night` add depth-dependent fog or darkness with light glows.
The generated target is `mix_styles(source, camera-like, gap)`: `gap` (params.yaml, default
DEFAULT_GAP) moves every knob from the source style (0) to the full camera-like style (1).

Determinism: image i of a split is a pure function of (domain, split, seed, i, params). Pixel arrays
are built only with IEEE-exact arithmetic (+ - * / sqrt floor comparisons) and integer blur/noise, never
with transcendental numpy functions whose SIMD implementations differ between CPUs; random numbers
come from PCG64 streams seeded with (seed, domain/split key, i). The manifest's content hashes are
taken over decoded pixels; PNG bytes are identical for a given Pillow build (fixed compression).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.data.io import (
    CLASS_COUNTS_FILE,
    DataError,
    atomic_dir,
    atomic_write_text,
    class_counts,
    write_class_counts,
    write_png,
)
from harness.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, TRAIN_ID

GENERATOR_VERSION = "udabench-synthetic/1"
DOMAINS = ("source", "target", "target-fog", "target-night")
MANIFEST = "manifest.json"

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTO, BIKE) = range(NUM_CLASSES)
FAR_DEPTH = 1e9

RGB = tuple[int, int, int]
Range = tuple[float, float]


# ==================================================================================================
# domain style: every knob that differs between domains


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Palette(_Knobs):
    """Base colours (RGB 0-255); lists are sampled per instance, then jittered by `jitter`."""

    sky_top: RGB
    sky_horizon: RGB
    clouds: RGB
    skyline: RGB
    road: RGB
    lane: RGB
    sidewalk: RGB
    curb: RGB
    terrain: RGB
    building: list[RGB]
    window: RGB
    window_lit: RGB
    shop: RGB
    wall: list[RGB]
    fence: list[RGB]
    pole: RGB
    vegetation: list[RGB]
    trunk: RGB
    car: list[RGB]
    truck: list[RGB]
    bus: list[RGB]
    train: list[RGB]
    glass: RGB
    tire: RGB
    clothes: list[RGB]
    skin: list[RGB]
    bike: list[RGB]
    light_box: RGB
    sign: list[RGB]
    hood: RGB
    jitter: float = Field(12.0, ge=0)


class Textures(_Knobs):
    """Surface detail. Amplitudes are relative brightness modulations (0 = flat)."""

    grain: dict[str, float] = Field(default_factory=dict)  # class name -> per-pixel grain amplitude
    ground_tile: dict[str, float] = Field(default_factory=dict)  # road/sidewalk/terrain: world-space blotches
    ground_tile_scale: float = Field(1.5, gt=0)  # blotches per metre
    grime: float = Field(0.0, ge=0)         # low-frequency stains on road, sidewalk, building, wall
    clouds: float = Field(0.0, ge=0, le=1)
    lane_width: float = Field(0.18, gt=0)   # metres
    lane_alpha: float = Field(1.0, ge=0, le=1)
    lane_wear: float = Field(0.0, ge=0, le=1)  # fraction of lane paint worn off
    dash: Range = (4.0, 8.0)                # dash length, period (metres)
    sidewalk_tile: float = Field(0.0, ge=0)  # tile size (metres), 0 = flat
    tile_contrast: float = Field(0.0, ge=0, le=1)
    facade_lines: float = Field(0.0, ge=0, le=1)  # contrast of horizontal brick/panel lines
    facade_line_spacing: Range = (0.3, 0.3)  # metres
    window_w: Range = (1.0, 1.4)
    window_h: Range = (1.2, 1.6)
    window_gap_x: Range = (2.5, 3.5)        # window period along the street
    window_gap_y: Range = (3.0, 3.4)        # storey height
    shop_p: float = Field(0.3, ge=0, le=1)  # ground floor is a dark shop front
    object_shading: float = Field(0.0, ge=0, le=1)  # top-to-bottom brightness gradient on objects
    crown_blobs: tuple[int, int] = (3, 4)   # ellipses per tree crown (min, max)

    @field_validator("grain", "ground_tile")
    @classmethod
    def _class_names(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            if name not in TRAIN_ID:
                raise ValueError(f"unknown class {name!r}; valid: {', '.join(CLASSES)}")
        return v


class Optics(_Knobs):
    """Illumination and camera: what a normalisation layer cannot undo beyond the colour part."""

    exposure: Range = (1.0, 1.0)      # per-image brightness gain range
    white_balance: float = Field(0.0, ge=0)  # per-image, per-channel gain jitter
    saturation: float = Field(1.0, ge=0)
    contrast: float = Field(1.0, ge=0)
    side_light: float = Field(0.0, ge=-1, le=1)  # left facades darker, right ones brighter
    shadows: float = Field(0.0, ge=0, le=1)      # building shadows across road and sidewalk
    ambient_occlusion: float = Field(0.0, ge=0, le=1)
    vignetting: float = Field(0.0, ge=0, le=1)
    blur: int = Field(0, ge=0, le=4)           # box-blur radius (pixels)
    blur_passes: int = Field(1, ge=1, le=3)
    chromatic: int = Field(0, ge=0, le=3)      # red/blue channel shift (pixels)
    noise: int = Field(0, ge=0, le=60)         # sensor noise: sum of two uniforms in [-noise, noise]
    luma_noise: int = Field(0, ge=0, le=60)    # noise shared by the three channels


class Weather(_Knobs):
    fog: float = Field(0.0, ge=0)              # fog density (1/m): transmission 1/(1 + d z + (d z)^2 / 2)
    fog_color: RGB = (200, 202, 205)
    night: float = Field(0.0, ge=0, le=1)      # 0 = day, 1 = black
    night_tint: tuple[float, float, float] = (0.8, 0.9, 1.25)
    lights: float = Field(0.0, ge=0)           # glow strength of lamps, car and traffic lights
    lit_windows: float = Field(0.0, ge=0, le=1)


class Layout(_Knobs):
    """Camera and street geometry (metres; fractions of the image size where noted)."""

    horizon: Range = (0.38, 0.46)        # horizon row / image height
    vp_shift: float = Field(0.08, ge=0)  # vanishing point x offset / image width
    focal: Range = (0.8, 0.95)           # focal length / image width
    camera_height: Range = (1.4, 1.7)
    road_half_width: Range = (4.0, 7.0)
    lane_offset: float = Field(0.4, ge=0, le=1)  # camera's lateral position as a fraction of the half-width
    sidewalk: Range = (2.0, 4.0)
    terrain_p: float = Field(0.3, ge=0, le=1)
    terrain_width: Range = (1.5, 5.0)
    building_height: Range = (8.0, 22.0)
    building_length: Range = (8.0, 25.0)
    facade_start: Range = (0.0, 6.0)
    segment_p: dict[str, float] = Field(default_factory=lambda: {
        "building": 0.7, "hedge": 0.1, "open": 0.08, "wall": 0.06, "fence": 0.06})
    far: float = Field(160.0, gt=10)
    skyline: Range = (0.05, 0.25)        # far skyline height / horizon height
    skyline_vegetation: float = Field(0.3, ge=0, le=1)
    haze: float = Field(0.3, ge=0, le=1)  # skyline colour pulled toward the horizon sky
    ego_hood_p: float = Field(0.0, ge=0, le=1)
    ego_hood: Range = (0.06, 0.1)        # hood height / image height (labelled ignore)

    @field_validator("segment_p")
    @classmethod
    def _segments(cls, v: dict[str, float]) -> dict[str, float]:
        valid = ("building", "hedge", "open", "wall", "fence")
        for k in v:
            if k not in valid:
                raise ValueError(f"unknown facade segment kind {k!r}; valid: {', '.join(valid)}")
        if sum(v.values()) <= 0:
            raise ValueError("segment probabilities must not all be 0")
        return v


class ObjectStats(_Knobs):
    """Expected number of each object per image, and size and distance statistics."""

    cars: float = 4.0            # on the road, seen from behind
    parked_cars: float = 3.0     # along the curbs, seen from the side
    trucks: float = 0.4
    buses: float = 0.25
    trams: float = 0.08
    persons: float = 2.5
    crossing: float = Field(0.15, ge=0, le=1)  # fraction of persons on the road
    cyclists: float = 0.35
    motorcyclists: float = 0.25
    parked_bicycles: float = 0.4
    parked_motorcycles: float = 0.25
    poles: float = 4.0
    light_p: float = Field(0.3, ge=0, le=1)    # a pole carries a traffic light
    sign_p: float = Field(0.35, ge=0, le=1)    # a pole carries a sign
    trees: float = 3.0
    scale: Range = (0.9, 1.1)    # size multiplier per object
    near: float = Field(4.0, gt=0.5)
    far: float = Field(60.0, gt=1)
    depth_power: float = Field(1.0, gt=0)  # >1 puts more objects near the camera


class DomainStyle(_Knobs):
    palette: Palette
    textures: Textures = Field(default_factory=Textures)
    optics: Optics = Field(default_factory=Optics)
    weather: Weather = Field(default_factory=Weather)
    layout: Layout = Field(default_factory=Layout)
    objects: ObjectStats = Field(default_factory=ObjectStats)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


SOURCE_STYLE = DomainStyle(
    palette=Palette(
        sky_top=(45, 115, 230), sky_horizon=(155, 200, 250), clouds=(250, 250, 250), skyline=(120, 130, 170),
        road=(80, 78, 88), lane=(250, 250, 245), sidewalk=(200, 170, 180), curb=(230, 220, 215),
        terrain=(120, 210, 70),
        building=[(210, 110, 80), (225, 205, 130), (140, 165, 215), (235, 150, 170), (175, 205, 140),
                  (215, 215, 225), (190, 140, 210), (165, 160, 155), (160, 125, 100)],
        window=(50, 90, 160), window_lit=(255, 230, 140), shop=(40, 60, 110),
        wall=[(185, 160, 110), (160, 150, 140)], fence=[(150, 100, 60), (110, 110, 120)], pole=(125, 125, 140),
        vegetation=[(60, 160, 45), (85, 180, 55), (45, 135, 60)], trunk=(120, 80, 40),
        car=[(210, 25, 25), (25, 60, 210), (245, 205, 25), (245, 245, 245), (25, 25, 25), (30, 170, 80),
             (240, 120, 20)],
        truck=[(230, 120, 20), (210, 210, 220), (40, 120, 200)], bus=[(240, 200, 20), (210, 40, 40)],
        train=[(130, 30, 150), (40, 160, 160)], glass=(90, 150, 220), tire=(20, 20, 20),
        clothes=[(210, 35, 35), (35, 35, 210), (245, 225, 35), (35, 170, 35), (25, 25, 25), (240, 240, 240)],
        skin=[(235, 190, 150), (200, 150, 110)], bike=[(20, 210, 210), (210, 20, 130), (250, 130, 0)],
        light_box=(35, 35, 35), sign=[(235, 25, 25), (25, 80, 230), (250, 225, 25)], hood=(40, 40, 40),
        jitter=10.0),
    textures=Textures(grain={}, ground_tile={}, clouds=0.35, lane_width=0.2, lane_alpha=1.0, dash=(4.5, 9.0),
                      sidewalk_tile=0.0, facade_lines=0.0, window_w=(1.1, 1.5), window_h=(1.3, 1.7),
                      window_gap_x=(2.6, 3.4), window_gap_y=(3.0, 3.3), shop_p=0.25, crown_blobs=(2, 3)),
    optics=Optics(),
    layout=Layout(horizon=(0.36, 0.44), focal=(0.8, 0.95), camera_height=(1.5, 1.8),
                  road_half_width=(4.5, 7.5), sidewalk=(2.5, 4.0), building_height=(8.0, 22.0)),
    objects=ObjectStats(cars=4.5, parked_cars=3.0, trucks=0.5, buses=0.35, trams=0.1, persons=2.0,
                        cyclists=0.4, motorcyclists=0.3, poles=3.5, trees=2.5, scale=(1.0, 1.2),
                        near=4.0, far=55.0),
)

TARGET_STYLE = DomainStyle(
    palette=Palette(
        sky_top=(105, 145, 205), sky_horizon=(185, 205, 225), clouds=(228, 230, 234), skyline=(145, 152, 165),
        road=(112, 110, 104), lane=(200, 198, 175), sidewalk=(150, 146, 136), curb=(170, 166, 156),
        terrain=(125, 140, 75),
        building=[(140, 105, 85), (172, 165, 150), (120, 118, 120), (188, 172, 140), (95, 88, 80),
                  (160, 140, 125), (185, 150, 150), (150, 160, 180), (190, 180, 130)],
        window=(48, 54, 60), window_lit=(255, 200, 110), shop=(35, 40, 45),
        wall=[(135, 128, 115), (110, 108, 104)], fence=[(95, 95, 90), (120, 100, 80)], pole=(88, 90, 94),
        vegetation=[(70, 110, 45), (55, 95, 40), (95, 120, 60), (75, 105, 65)], trunk=(70, 60, 50),
        car=[(120, 120, 125), (200, 200, 202), (30, 30, 34), (60, 70, 92), (140, 32, 32), (228, 228, 222),
             (95, 90, 80)],
        truck=[(205, 205, 198), (90, 100, 112)], bus=[(205, 205, 205), (58, 100, 160)],
        train=[(205, 195, 172), (160, 40, 40)], glass=(55, 62, 70), tire=(28, 28, 28),
        clothes=[(45, 45, 55), (120, 110, 100), (78, 90, 112), (148, 60, 60), (198, 198, 198), (90, 70, 50)],
        skin=[(205, 165, 135), (140, 100, 80)], bike=[(55, 55, 55), (150, 30, 30), (180, 180, 180)],
        light_box=(50, 52, 48), sign=[(180, 40, 40), (40, 70, 150), (210, 190, 60)], hood=(30, 32, 36),
        jitter=14.0),
    textures=Textures(
        grain={"road": 0.06, "sidewalk": 0.07, "building": 0.08, "wall": 0.1, "fence": 0.1,
               "vegetation": 0.35, "terrain": 0.25, "car": 0.04, "person": 0.05, "sky": 0.01},
        ground_tile={"road": 0.12, "sidewalk": 0.08, "terrain": 0.2}, ground_tile_scale=1.5,
        grime=0.15, clouds=0.6, lane_width=0.14, lane_alpha=0.7, lane_wear=0.35, dash=(3.0, 6.0),
        sidewalk_tile=0.6, tile_contrast=0.18, facade_lines=0.22, facade_line_spacing=(0.25, 0.8),
        window_w=(0.8, 1.2), window_h=(1.4, 1.9), window_gap_x=(1.8, 2.8), window_gap_y=(2.8, 3.6),
        shop_p=0.5, object_shading=0.35, crown_blobs=(4, 6)),
    optics=Optics(exposure=(0.85, 1.1), white_balance=0.06, saturation=0.8, contrast=0.9, side_light=0.25,
                  shadows=0.35, ambient_occlusion=0.3, vignetting=0.35, blur=1, blur_passes=1, chromatic=1,
                  noise=5, luma_noise=3),
    layout=Layout(horizon=(0.40, 0.50), vp_shift=0.06, focal=(0.95, 1.15), camera_height=(1.2, 1.45),
                  road_half_width=(3.2, 5.5), lane_offset=0.3, sidewalk=(1.5, 3.0), terrain_p=0.45,
                  building_height=(10.0, 28.0), building_length=(10.0, 35.0),
                  segment_p={"building": 0.62, "hedge": 0.18, "open": 0.06, "wall": 0.07, "fence": 0.07},
                  skyline=(0.1, 0.35), skyline_vegetation=0.45, haze=0.45, ego_hood_p=0.7),
    objects=ObjectStats(cars=3.0, parked_cars=4.5, trucks=0.25, buses=0.15, trams=0.05, persons=4.0,
                        crossing=0.1, cyclists=0.5, motorcyclists=0.15, parked_bicycles=0.8,
                        parked_motorcycles=0.2, poles=5.0, light_p=0.35, sign_p=0.4, trees=4.0,
                        scale=(0.8, 1.0), near=5.0, far=70.0, depth_power=1.3),
)


FOG_UPDATE: dict[str, Any] = {
    "weather": {"fog": 0.035, "fog_color": [198, 200, 203]},
    "optics": {"exposure": [0.95, 1.1], "contrast": 0.85, "shadows": 0.05, "side_light": 0.05,
               "blur": 1, "noise": 5},
    "textures": {"clouds": 0.0},
}
NIGHT_UPDATE: dict[str, Any] = {
    "weather": {"night": 0.78, "lights": 0.9, "lit_windows": 0.3, "night_tint": [0.75, 0.85, 1.3]},
    "optics": {"exposure": [0.9, 1.2], "shadows": 0.0, "side_light": 0.0, "noise": 9, "luma_noise": 6,
               "blur": 1, "vignetting": 0.5},
    "textures": {"clouds": 0.0},
}


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mix_styles(a: DomainStyle, b: DomainStyle, t: float) -> DomainStyle:
    """Knob-wise interpolation from style `a` (t = 0) to style `b` (t = 1): numbers, colours and ranges
    are interpolated (integer knobs rounded), per-class dictionaries over the union of their keys (a
    missing key counts as 0), colour lists entry by entry (entry i of b with entry i mod len(a) of a);
    booleans and names come from the nearer end."""
    if t <= 0:
        return a
    if t >= 1:
        return b
    return DomainStyle.model_validate(_mix(a.model_dump(), b.model_dump(), float(t)))


def _mix(x: Any, y: Any, t: float) -> Any:
    if isinstance(x, bool) or isinstance(y, bool) or isinstance(x, str) or isinstance(y, str):
        return y if t >= 0.5 else x
    if isinstance(x, int | float) and isinstance(y, int | float):
        v = x + (y - x) * t
        return int(round(v)) if isinstance(x, int) and isinstance(y, int) else v
    if isinstance(x, dict) and isinstance(y, dict):
        return {k: _mix(x.get(k, 0.0), y.get(k, 0.0), t) for k in dict.fromkeys([*x, *y])}
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        if len(x) == len(y):
            return type(y)(_mix(u, w, t) for u, w in zip(x, y))
        return [_mix(x[i % len(x)], w, t) for i, w in enumerate(y)]
    return y if t >= 0.5 else x


# The default distance of the target from the source (see `mix_styles`), measured with DeepLab-v2
# ResNet-18 from random initialisation: datasets/README.md, "Calibrating the gap".
DEFAULT_GAP = 0.75


def resolve_styles(overrides: dict[str, dict[str, Any]] | None = None, gap: float = DEFAULT_GAP,
                   source: str = "synth.style") -> dict[str, DomainStyle]:
    """The four domain styles. The target style is `mix_styles(source, target, gap)` (gap 1 = the full
    camera-like style, 0 = the source style), then `overrides` ({domain: nested knob dict}) apply.
    `target-fog` and `target-night` derive from the resulting target (then their own overrides)."""
    from harness.config import ConfigError, format_validation_error

    overrides = overrides or {}
    for domain in overrides:
        if domain not in DOMAINS:
            from harness.registry import closest
            raise ConfigError(f"{source}.{domain}: unknown domain{closest(domain, DOMAINS)}; "
                              f"valid: {', '.join(DOMAINS)}")

    def build(base: DomainStyle, *updates: tuple[str, dict[str, Any]]) -> DomainStyle:
        data = base.model_dump()
        for _, upd in updates:
            data = _deep_merge(data, upd)
        try:
            return DomainStyle.model_validate(data)
        except ValidationError as e:
            where = updates[-1][0] if updates else "style"
            raise ConfigError(format_validation_error(e, f"{source}.{where}", DomainStyle)) from None

    src = build(SOURCE_STYLE, ("source", overrides.get("source", {})))
    base = TARGET_STYLE if gap == 1.0 else mix_styles(SOURCE_STYLE, TARGET_STYLE, gap)
    tgt = build(base, ("target", overrides.get("target", {})))
    return {
        "source": src,
        "target": tgt,
        "target-fog": build(tgt, ("target-fog", FOG_UPDATE), ("target-fog", overrides.get("target-fog", {}))),
        "target-night": build(tgt, ("target-night", NIGHT_UPDATE),
                              ("target-night", overrides.get("target-night", {}))),
    }


# ==================================================================================================
# generation parameters (params.yaml `synth:` group)


class SynthParams(BaseModel):
    """What `udabench data synth` generates: params.yaml's `synth` group."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    width: int = Field(256, ge=32, le=4096)
    height: int = Field(128, ge=16, le=4096)
    splits: dict[str, dict[str, int]] = Field(default_factory=lambda: {
        "source": {"train": 1000},
        "target": {"train": 1000, "val": 200},
        "target-fog": {"train": 500, "val": 200},
        "target-night": {"train": 500, "val": 200},
    })
    gap: float = Field(DEFAULT_GAP, ge=0, le=1)  # target = mix_styles(source, camera-like, gap)
    style: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-domain DomainStyle overrides

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for domain, splits in v.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
            for split, n in splits.items():
                if not split.replace("_", "").isalnum():
                    raise ValueError(f"{domain}.{split}: a split name must be alphanumeric")
                if n < 0:
                    raise ValueError(f"{domain}.{split}: image count must be >= 0 (got {n})")
        return v


def load_params(path: str | Path, group: str = "synth") -> SynthParams:
    """Read the `synth` group of a params file (e.g. params.yaml); errors name the file and field."""
    from harness.config import ConfigError, format_validation_error, load_yaml

    data = load_yaml(path)
    if group not in data:
        raise ConfigError(f"{path}: no '{group}:' group (expected keys: {', '.join(SynthParams.model_fields)})")
    try:
        return SynthParams.model_validate(data[group] or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{path}: {group}", SynthParams)) from None


# ==================================================================================================
# rendering


@lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    v = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _paint(dst: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> None:
    """dst[:, mask] = rgb for a planar 3 x h x w image; rgb is a colour (3,) or planar (3 x ...)."""
    rgb = np.asarray(rgb, np.float32)
    for c in range(3):
        np.copyto(dst[c], rgb[c], where=mask)


def _planar(rgb) -> np.ndarray:
    """A colour (3,) as a planar 3 x 1 x 1 array."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _fmod(x, period):
    """x mod period for positive periods via floor (numpy's float % is a slow scalar loop)."""
    return x - np.floor(x * (1 / period)) * period


@lru_cache(maxsize=512)
def _interp(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    pos = (np.arange(n, dtype=np.float32) + 0.5) * (cells / n)
    i = np.minimum(np.floor(pos).astype(np.intp), cells - 1)
    return i, (pos - i).astype(np.float32)


@lru_cache(maxsize=8)
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    u, v = _grid(width, height)
    r2 = ((u - width / 2) / (width / 2)) ** 2 * 0.5 + ((v - height / 2) / (height / 2)) ** 2 * 0.5
    out = (1.0 - strength * r2 * r2).astype(np.float32)  # quartic fall-off toward corners
    out.setflags(write=False)
    return out


def _value_noise(rng: np.random.Generator, height: int, width: int, gh: int, gw: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random (gh+1)x(gw+1) grid, bilinearly interpolated."""
    g = rng.random((gh + 1, gw + 1), dtype=np.float32) * 2 - 1
    ri, rw = _interp(height, gh)
    ci, cw = _interp(width, gw)
    rw, cw = rw[:, None], cw[None, :]
    top, bot = g[ri], g[ri + 1]
    a = top[:, ci] * (1 - cw) + top[:, ci + 1] * cw
    b = bot[:, ci] * (1 - cw) + bot[:, ci + 1] * cw
    return a * (1 - rw) + b * rw


# Noise banks: fixed noise fields generated once per process from constant seeds; each image takes a
# window at a random offset drawn from its own stream. Deterministic, and far cheaper than drawing
# fresh per-pixel noise for every image (which dominated the render time).
_BANK_SEED = 0x5EED


@lru_cache(maxsize=2)
def _pixel_bank(size: int) -> np.ndarray:
    """`size` samples of triangular noise in [-1, 1] (the sum of two random bytes)."""
    b = np.frombuffer(np.random.Generator(np.random.PCG64(_BANK_SEED)).bytes(2 * size), np.uint8)
    x = b[0::2].astype(np.float32)
    x += b[1::2]
    x -= 255
    x *= np.float32(1 / 255)
    x.setflags(write=False)
    return x


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Per-pixel noise in [-1, 1] of the given shape (a read-only window of the bank)."""
    n = int(np.prod(shape))
    size = max(1 << 22, 1 << (2 * n - 1).bit_length())
    bank = _pixel_bank(size)
    off = int(rng.integers(0, size - n + 1))
    return bank[off:off + n].reshape(shape)


@lru_cache(maxsize=32)
def _smooth_bank(height: int, width: int, gh: int, gw: int) -> np.ndarray:
    g = np.random.Generator(np.random.PCG64([_BANK_SEED, height, width, gh, gw]))
    bank = _value_noise(g, 3 * height, 3 * width, 3 * gh, 3 * gw)
    bank.setflags(write=False)
    return bank


def _smooth_noise(rng: np.random.Generator, height: int, width: int, gh: int, gw: int,
                  rows: int | None = None) -> np.ndarray:
    """Smooth noise in [-1, 1] with about gh x gw blobs over height x width (first `rows` rows only)."""
    bank = _smooth_bank(height, width, gh, gw)
    r = rng.random(3).tolist()
    oy, ox = int(r[0] * 2 * height), int(r[1] * 2 * width)
    win = bank[oy:oy + (height if rows is None else rows), ox:ox + width]
    return -win if r[2] < 0.5 else win


class _Rand:
    """Scalar draws as Python floats (numpy float64 scalars would promote float32 arrays)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(self.rng.random())

    def r(self, rng_: tuple[float, float]) -> float:
        return self.u(rng_[0], rng_[1])

    def chance(self, p: float) -> bool:
        return float(self.rng.random()) < p

    def int(self, lo: int, hi: int) -> int:  # inclusive
        return int(self.rng.integers(lo, hi + 1))

    def count(self, mean: float) -> int:
        """A binomial count with the given mean (arithmetic only; no exp/log inside)."""
        if mean <= 0:
            return 0
        n = int(math.ceil(mean * 3)) + 2
        return int((self.rng.random(n) < mean / n).sum())

    def color(self, choices: list[RGB] | RGB, jitter: float) -> np.ndarray:
        r = self.rng.random(4).tolist()
        base = choices[min(int(r[3] * len(choices)), len(choices) - 1)] if isinstance(choices, list) else choices
        return np.array([base[0] + (2 * r[0] - 1) * jitter, base[1] + (2 * r[1] - 1) * jitter,
                         base[2] + (2 * r[2] - 1) * jitter], dtype=np.float32)


@dataclass
class _Camera:
    yh: float  # horizon row (pixels)
    vp: float  # vanishing point column
    f: float   # focal length (pixels)
    ch: float  # camera height (m)

    def x(self, X: float, z: float) -> float:
        return self.vp + self.f * X / z

    def y(self, Y: float, z: float) -> float:
        return self.yh + self.f * (self.ch - Y) / z


@dataclass
class _Street:
    xc: float   # road centre (m, lateral; camera at 0)
    rw: float   # road half-width
    swl: float  # sidewalk widths
    swr: float
    XL: float   # facade planes
    XR: float


@dataclass
class _Segments:
    bounds: np.ndarray  # [n+1] depth boundaries
    kind: np.ndarray    # [n] int: 0 building, 1 hedge, 2 open, 3 wall, 4 fence
    height: np.ndarray  # [n]
    color: np.ndarray   # [n, 3]
    win: np.ndarray     # [n, 7]: window w, h, period x, period y, ground floor, offset, line spacing
    shop: np.ndarray    # [n] bool


SEGMENT_KINDS = ("building", "hedge", "open", "wall", "fence")
_SEG_CLASS = np.array([BUILDING, VEG, SKY, WALL, FENCE], dtype=np.uint8)


@dataclass
class _Canvas:
    img: np.ndarray   # 3 x H x W float32 (planar: per-channel and per-pixel ops stay contiguous)
    lab: np.ndarray   # H x W uint8
    dep: np.ndarray   # H x W float32
    lights: list[tuple[float, float, float, np.ndarray]] = field(default_factory=list)  # x, y, r, rgb


def _palette_pick(choices: list[RGB], r_idx: np.ndarray, r_jit: np.ndarray, jitter: float) -> np.ndarray:
    arr = np.asarray(choices, np.float64)
    idx = np.minimum((r_idx * len(choices)).astype(np.intp), len(choices) - 1)
    return arr[idx] + (2 * r_jit - 1) * jitter


def _segments(R: _Rand, st: DomainStyle) -> _Segments:
    """Facade segments along one side of the street, from `facade_start` to `far` (vectorised)."""
    L, P, T = st.layout, st.palette, st.textures
    kinds = np.asarray([i for i, k in enumerate(SEGMENT_KINDS) if L.segment_p.get(k, 0) > 0], np.intp)
    cum = np.cumsum([L.segment_p[SEGMENT_KINDS[i]] for i in kinds])
    cum = cum / cum[-1]
    start = R.r(L.facade_start)
    K = min(512, int(math.ceil((L.far - start) / max(0.6 * L.building_length[0], 0.5))) + 1)
    r = R.rng.random((K, 18))
    kind = kinds[np.minimum(np.searchsorted(cum, r[:, 0], side="right"), len(kinds) - 1)]
    lo, hi = L.building_length
    length = (lo + (hi - lo) * r[:, 1]) * np.where(kind == 0, 1.0, 0.6)
    bounds = start + np.concatenate([[0.0], np.cumsum(length)])
    n = max(1, int((bounds[:-1] < L.far).sum()))
    bh = L.building_height
    height = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [bh[0] + (bh[1] - bh[0]) * r[:, 2], 1.5 + 3.0 * r[:, 2], -1.0, 1.0 + 1.5 * r[:, 2]],
        1.0 + r[:, 2])
    jit = P.jitter
    options = [_palette_pick(P.building, r[:, 3], r[:, 4:7], jit), _palette_pick(P.vegetation, r[:, 3], r[:, 4:7], jit),
               np.zeros((K, 3)), _palette_pick(P.wall, r[:, 3], r[:, 4:7], jit),
               _palette_pick(P.fence, r[:, 3], r[:, 4:7], jit)]
    color = np.choose(kind[:, None], options)
    ranges = [T.window_w, T.window_h, T.window_gap_x, T.window_gap_y, (3.0, 4.5), (0.0, 3.0), T.facade_line_spacing]
    win = np.stack([a + (b - a) * r[:, 7 + i] for i, (a, b) in enumerate(ranges)], axis=1)
    win[:, 2] = np.maximum(win[:, 2], win[:, 0] + 0.3)  # a window is narrower than its period
    win[:, 3] = np.maximum(win[:, 3], win[:, 1] + 0.4)
    return _Segments(bounds[:n + 1].astype(np.float32), kind[:n], height[:n].astype(np.float32),
                     color[:n].astype(np.float32), win[:n].astype(np.float32), (r[:n, 14] < T.shop_p))


def _ground_row(cam: _Camera, height: int) -> int:
    """First row fully below the horizon: the ground covers rows >= this one."""
    return min(height, max(0, int(math.floor(cam.yh + 1.0))))


def _draw_sky(cv: _Canvas, cam: _Camera, st: DomainStyle, rng: np.random.Generator) -> None:
    H, W = cv.lab.shape
    u, v = _grid(W, H)
    P = st.palette
    g = _ground_row(cam, H)
    t = np.clip((cam.yh - v[:g]) / max(cam.yh, 1.0), 0, 1)  # g x 1
    sky = _planar(P.sky_horizon) * (1 - t) + _planar(P.sky_top) * t  # 3 x g x 1
    cv.img[:, :g] = sky
    if st.textures.clouds > 0:
        c = _smooth_noise(rng, H, W, 3, 6, rows=g)
        c = np.maximum(c, 0) * np.float32(st.textures.clouds)
        cv.img[:, :g] += c * (_planar(P.clouds) - sky)
    cv.lab[:] = SKY
    cv.dep[:] = FAR_DEPTH


def _draw_skyline(cv: _Canvas, cam: _Camera, st: DomainStyle, R: _Rand) -> None:
    """Far buildings and trees at the horizon, seen through gaps and at the end of the street."""
    H, W = cv.lab.shape
    L, P = st.layout, st.palette
    K = int(1 / 0.02) + 2
    r = R.rng.random((K, 7))
    widths = np.maximum(2, ((0.02 + 0.07 * r[:, 0]) * W).astype(np.intp))
    veg = r[:, 1] < L.skyline_vegetation
    heights = (L.skyline[0] + (L.skyline[1] - L.skyline[0]) * r[:, 2]) * cam.yh * np.where(veg, 0.6, 1.0)
    base = np.where(veg[:, None], _palette_pick(P.vegetation, r[:, 3], r[:, 4:7], P.jitter),
                    _palette_pick([P.skyline], r[:, 3], r[:, 4:7], P.jitter))
    colors = base * (1 - L.haze) + np.asarray(P.sky_horizon, np.float64) * L.haze
    heights = np.repeat(heights.astype(np.float32), widths)[:W]
    cls = np.repeat(np.where(veg, VEG, BUILDING).astype(np.uint8), widths)[:W]
    colors = np.repeat(colors.astype(np.float32), widths, axis=0)[:W]
    _, v = _grid(W, H)
    g = _ground_row(cam, H)
    m = v[:g] >= (cam.yh - heights)[None, :]
    _paint(cv.img[:, :g], colors.T[:, None, :], m)
    np.copyto(cv.lab[:g], cls[None], where=m)
    cv.dep[:g][m] = 1e6


def _draw_ground(cv: _Canvas, cam: _Camera, street: _Street, segR: _Segments, st: DomainStyle,
                 R: _Rand) -> None:
    H, W = cv.lab.shape
    u, v = _grid(W, H)
    P, T, Op = st.palette, st.textures, st.optics
    r0 = _ground_row(cam, H)
    if r0 >= H:
        return
    vg = v[r0:]
    zg = (cam.f * cam.ch) / (vg - cam.yh)                     # Hg x 1
    Xg = (u - cam.vp) * (zg / cam.f)                          # Hg x W
    d = Xg - street.xc
    edges = np.asarray([-street.rw - street.swl, -street.rw, street.rw, street.rw + street.swr], np.float32)
    region = ((d >= edges[0]).view(np.uint8) + (d >= edges[1]).view(np.uint8)
              + (d >= edges[2]).view(np.uint8) + (d >= edges[3]).view(np.uint8))  # 0..4
    region_cls = np.array([TERRAIN, SIDEWALK, ROAD, SIDEWALK, TERRAIN], np.uint8)
    region_col = np.asarray([P.terrain, P.sidewalk, P.road, P.sidewalk, P.terrain], np.float32)
    region_col += (R.rng.random((5, 3), dtype=np.float32) * 2 - 1) * np.float32(P.jitter * 0.5)
    col = region_col.T[:, region]                             # 3 x Hg x W
    ad = np.abs(d)
    road = region == 2
    side = (region == 1) | (region == 3)
    mod = np.ones(d.shape, np.float32)

    # world-space blotches (asphalt patches, dirt): a random tile sampled at (z, X)
    amps = np.asarray([T.ground_tile.get("terrain", 0), T.ground_tile.get("sidewalk", 0),
                       T.ground_tile.get("road", 0), T.ground_tile.get("sidewalk", 0),
                       T.ground_tile.get("terrain", 0)], np.float32)
    if amps.any():
        tile = R.rng.random((64, 64), dtype=np.float32) * 2 - 1
        s = np.float32(T.ground_tile_scale)
        zi = (np.floor(zg * s).astype(np.int64) & 63)
        xi = (np.floor(Xg * s).astype(np.int64) & 63)
        mod += amps[region] * tile[zi, xi]
    if T.sidewalk_tile > 0:
        ts = np.float32(T.sidewalk_tile)
        grout = (_fmod(Xg, ts) < 0.06 * ts) | (_fmod(zg, ts) < 0.06 * ts)
        mod -= np.float32(T.tile_contrast) * (grout & side)
    if Op.shadows > 0 and len(segR.height):
        idx = np.clip(np.searchsorted(segR.bounds, zg.ravel(), side="right") - 1, 0, len(segR.height) - 1)
        h = np.where(segR.kind[idx] == 0, segR.height[idx], 0.0).astype(np.float32)[:, None]
        shadow = (Xg > street.XR - 0.35 * h) & (zg > segR.bounds[0])
        mod -= np.float32(Op.shadows) * shadow
    col *= mod

    # curbs and lane marks
    curb = side & (ad < street.rw + 0.25)
    _paint(col, np.asarray(P.curb, np.float32), curb)
    dash_len, period = T.dash
    lw = T.lane_width / 2
    dashed = _fmod(zg, period) < dash_len
    marks = (ad < lw) & dashed & (street.rw > 3.0)
    edge = road & (ad > street.rw - 0.3 - 2 * lw) & (ad < street.rw - 0.3)
    marks |= edge
    if street.rw > 5.5:  # four lanes
        marks |= (np.abs(ad - street.rw / 2) < lw) & dashed
    if T.lane_wear > 0:
        wear = _smooth_noise(R.rng, H, W, 4, 16, rows=d.shape[0])
        marks &= wear > (T.lane_wear * 2 - 1)
    if marks.any():
        a = np.float32(T.lane_alpha)
        _paint(col, col * (1 - a) + _planar(P.lane) * a, marks)

    cv.img[:, r0:] = col
    cv.lab[r0:] = region_cls[region]
    cv.dep[r0:] = zg


def _draw_facade(cv: _Canvas, cam: _Camera, st: DomainStyle, seg: _Segments, Xp: float, left: bool,
                 lit_seed: int) -> None:
    """One facade plane (X = Xp): segments of buildings, hedges, walls, fences and gaps along the street."""
    H, W = cv.lab.shape
    u, v = _grid(W, H)
    T, Op, Wt = st.textures, st.optics, st.weather
    if left:
        c0, c1 = 0, int(min(W, max(0, math.floor(cam.vp - 1))))
    else:
        c0, c1 = int(min(W, max(0, math.ceil(cam.vp + 1)))), W
    if c1 <= c0 or len(seg.height) == 0:
        return
    zc = (cam.f * Xp) / (u[0, c0:c1] - cam.vp)              # depth of the plane per column, > 0
    idx = np.searchsorted(seg.bounds, zc, side="right") - 1
    valid = (idx >= 0) & (idx < len(seg.height)) & (zc < st.layout.far)
    idx = np.clip(idx, 0, len(seg.height) - 1)
    hgt = np.where(valid, seg.height[idx], -1.0).astype(np.float32)
    on = np.flatnonzero(hgt > 0)
    if on.size == 0:
        return
    # restrict to the columns and rows the plane can cover
    a, b = int(on[0]), int(on[-1]) + 1
    zc, idx, hgt = zc[a:b], idx[a:b], hgt[a:b]
    c0, c1 = c0 + a, c0 + b
    top = cam.yh + cam.f * (cam.ch - hgt) / zc
    r0 = max(0, int(math.floor(float(np.where(hgt > 0, top, H).min()))))
    r1 = min(H, int(math.ceil(float((cam.yh + cam.f * cam.ch / zc).max()))) + 1)
    if r1 <= r0:
        return
    zc2 = zc[None]
    kind = seg.kind[idx]
    Yw = cam.ch - (v[r0:r1] - cam.yh) * (zc2 / cam.f)       # height on the facade (m)
    dep = cv.dep[r0:r1, c0:c1]
    m = (Yw >= 0) & (Yw <= hgt[None]) & (zc2 < dep)
    fence = kind == 4
    if fence.any():
        holes = (_fmod(zc2, 0.35) > 0.1) & (_fmod(Yw, 0.35) > 0.1) & (Yw > 0.15) & (Yw < hgt[None] - 0.15)
        m &= ~(holes & fence[None])
    if not m.any():
        return
    n = b - a
    color = np.empty((3, r1 - r0, n), np.float32)
    color[:] = seg.color[idx].T[:, None, :]
    shade = np.ones((r1 - r0, n), np.float32)
    building = kind == 0
    wp = seg.win[idx]                                        # n x 7
    if T.facade_lines > 0:
        sp = wp[:, 6][None]
        lines = (_fmod(Yw, sp) < 0.12 * sp) & (building | (kind == 3))[None]
        shade -= np.float32(T.facade_lines) * lines
    if Op.ambient_occlusion > 0:
        shade -= np.float32(Op.ambient_occlusion) * np.clip(1 - Yw * 0.5, 0, 1)
    if Op.side_light:
        shade *= np.float32(1 - Op.side_light if left else 1 + Op.side_light * 0.5)
    color *= shade
    # windows on a grid in facade coordinates (s along the street, Yw up), and shop fronts
    s = zc + wp[:, 5]
    in_col = (_fmod(s, wp[:, 2]) < wp[:, 0]) & building
    rel = Yw - wp[:, 4][None]
    win = in_col[None] & (_fmod(rel, wp[:, 3][None]) < wp[:, 1][None]) & (rel > 0) & (Yw < hgt[None] - 0.8)
    shop = (Yw > 0.3) & (Yw < wp[:, 4][None] - 0.6) & (seg.shop[idx] & building & (_fmod(s, 5.0) > 0.7))[None]
    glass = np.asarray(st.palette.window, np.float32)
    if win.any():
        if Wt.lit_windows > 0:
            wi = np.floor(s / wp[:, 2]).astype(np.int64)[None]
            wj = np.floor(rel / wp[:, 3][None]).astype(np.int64)
            lit = ((wi * 7919 + wj * 104729 + lit_seed) % 1000) < int(Wt.lit_windows * 1000)
            _paint(color, glass, win & ~lit)
            _paint(color, np.asarray(st.palette.window_lit, np.float32), win & lit)
        else:
            _paint(color, shade * glass.reshape(3, 1, 1), win)
    if shop.any():
        _paint(color, shade * _planar(st.palette.shop), shop)
    cls = _SEG_CLASS[kind]
    _paint(cv.img[:, r0:r1, c0:c1], color, m)
    np.copyto(cv.lab[r0:r1, c0:c1], np.broadcast_to(cls[None], m.shape), where=m)
    np.copyto(dep, np.broadcast_to(zc2, m.shape), where=m)


# --- billboard objects ------------------------------------------------------------------------------
# A part function gets ax (1 x n, metres from the sprite's left edge) and yy (m x 1, metres above the
# ground) and returns [(mask, class, rgb)], later parts painted over earlier ones, plus light sources.

Parts = list[tuple[np.ndarray, int, np.ndarray]]
Lights = list[tuple[float, float, float, tuple[float, float, float]]]  # ax, yy, radius (m), rgb


def _seg_mask(ax, yy, x0, y0, x1, y1, t):
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    tp = np.clip(((ax - x0) * dx + (yy - y0) * dy) * (1.0 / L2), 0, 1)
    px = x0 + tp * dx - ax
    py = y0 + tp * dy - yy
    return px * px + py * py < t * t


def _disc(ax, yy, cx, cy, r):
    return (ax - cx) ** 2 + (yy - cy) ** 2 < r * r


def _ring(ax, yy, cx, cy, r0, r1):
    d = (ax - cx) ** 2 + (yy - cy) ** 2
    return (d < r1 * r1) & (d > r0 * r0)


RED = np.asarray((220, 30, 30), np.float32)
WHITE = np.asarray((235, 235, 230), np.float32)
AMBER = np.asarray((250, 170, 30), np.float32)
GREEN = np.asarray((40, 220, 120), np.float32)


def _car_rear(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    taper = 0.1 + 0.14 * (b - 0.6) / 0.38
    body = (b >= 0.1) & (b < 0.62)
    cabin = (b >= 0.6) & (b < 0.98) & (a > taper) & (a < 1 - taper)
    wheels = (b < 0.16) & ((a < 0.2) | (a > 0.8))
    glass = (b >= 0.66) & (b < 0.92) & (a > taper + 0.05) & (a < 0.95 - taper)
    lamps = (b > 0.42) & (b < 0.53) & ((a < 0.14) | (a > 0.86))
    plate = (b > 0.22) & (b < 0.32) & (np.abs(a - 0.5) < 0.12)
    parts = [(body | cabin, CAR, p["color"]), (wheels, CAR, p["tire"]), (glass, CAR, p["glass"]),
             (lamps, CAR, RED), (plate, CAR, WHITE)]
    return parts, [(0.07 * w, 0.47 * h, 0.15, (255, 40, 30)), (0.93 * w, 0.47 * h, 0.15, (255, 40, 30))]


def _car_side(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    body = (b >= 0.15) & (b < 0.6) & (a > 0.01) & (a < 0.99)
    t = (b - 0.58) / 0.4
    cabin = (b >= 0.58) & (b < 0.98) & (a > 0.28 + 0.12 * t) & (a < 0.8 - 0.14 * t)
    glass = (b >= 0.63) & (b < 0.92) & (a > 0.31 + 0.12 * t) & (a < 0.77 - 0.14 * t) & (np.abs(a - 0.53) > 0.015)
    r = 0.34 * h / 1.45
    wheels = _disc(ax, yy, 0.2 * w, r, r) | _disc(ax, yy, 0.8 * w, r, r)
    hubs = _disc(ax, yy, 0.2 * w, r, 0.45 * r) | _disc(ax, yy, 0.8 * w, r, 0.45 * r)
    return [(body | cabin, CAR, p["color"]), (glass, CAR, p["glass"]), (wheels, CAR, p["tire"]),
            (hubs, CAR, p["color"] * 0.6 + 80)], []


def _truck_rear(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    box = (b >= 0.12) & (b <= 1.0)
    bumper = (b >= 0.1) & (b < 0.17)
    wheels = (b < 0.14) & ((a < 0.22) | (a > 0.78))
    seam = (np.abs(a - 0.5) < 0.012) & (b > 0.2)
    lamps = (b > 0.18) & (b < 0.24) & ((a < 0.1) | (a > 0.9))
    return [(box, TRUCK, p["color"]), (bumper | seam, TRUCK, p["color"] * 0.45), (wheels, TRUCK, p["tire"]),
            (lamps, TRUCK, RED)], [(0.05 * w, 0.21 * h, 0.15, (255, 40, 30)), (0.95 * w, 0.21 * h, 0.15, (255, 40, 30))]


def _truck_side(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    box = (a < 0.77) & (b >= 0.15) & (b <= 1.0)
    cab = (a >= 0.79) & (a < 1.0) & (b >= 0.1) & (b < 0.78 - 0.25 * (a - 0.79) / 0.21)
    win = (a >= 0.84) & (a < 0.96) & (b > 0.45) & (b < 0.68 - 0.25 * (a - 0.79) / 0.21)
    r = 0.5
    wheels = _disc(ax, yy, 0.12 * w, r, r) | _disc(ax, yy, 0.28 * w, r, r) | _disc(ax, yy, 0.88 * w, r, r)
    return [(box | cab, TRUCK, p["color"]), (win, TRUCK, p["glass"]), (wheels, TRUCK, p["tire"])], []


def _bus_rear(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    corner = (b > 0.94) & ((a < 0.04) | (a > 0.96))  # rounded roof corners
    body = (b >= 0.08) & (b <= 1.0) & ~corner
    glass = (b > 0.55) & (b < 0.88) & (a > 0.07) & (a < 0.93)
    sign_ = (b > 0.9) & (b < 0.97) & (a > 0.25) & (a < 0.75)
    wheels = (b < 0.1) & ((a < 0.2) | (a > 0.8))
    lamps = (b > 0.15) & (b < 0.24) & ((a < 0.1) | (a > 0.9))
    return [(body, BUS, p["color"]), (glass, BUS, p["glass"]), (sign_, BUS, AMBER), (wheels, BUS, p["tire"]),
            (lamps, BUS, RED)], [(0.05 * w, 0.2 * h, 0.15, (255, 40, 30)), (0.95 * w, 0.2 * h, 0.15, (255, 40, 30))]


def _bus_side(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    body = (b >= 0.1) & (b <= 1.0) & (a > 0.005) & (a < 0.995)
    band = (b > 0.5) & (b < 0.86) & (a > 0.03) & (a < 0.97) & (_fmod(ax, 1.4) > 0.12)
    door = (b > 0.12) & (b < 0.86) & (np.abs(a - 0.3) < 0.04)
    r = 0.5
    wheels = _disc(ax, yy, 0.18 * w, r, r) | _disc(ax, yy, 0.82 * w, r, r)
    return [(body, BUS, p["color"]), (band | door, BUS, p["glass"]), (wheels, BUS, p["tire"])], []


def _tram_front(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    body = (b >= 0.04) & (b < 0.88) & (a > 0.02) & (a < 0.98)
    glass = (b > 0.5) & (b < 0.82) & (a > 0.1) & (a < 0.9)
    panto = _seg_mask(ax, yy, 0.3 * w, 0.88 * h, 0.5 * w, h, 0.04) | _seg_mask(ax, yy, 0.7 * w, 0.88 * h, 0.5 * w, h, 0.04)
    lamps = (b > 0.16) & (b < 0.22) & ((a < 0.14) | (a > 0.86))
    return [(body | panto, TRAIN, p["color"]), (glass, TRAIN, p["glass"]), (lamps, TRAIN, WHITE)], \
        [(0.08 * w, 0.19 * h, 0.2, (255, 250, 220)), (0.92 * w, 0.19 * h, 0.2, (255, 250, 220))]


def _tram_side(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    a, b = ax / w, yy / h
    body = (b >= 0.06) & (b < 0.88) & (a > 0.003) & (a < 0.997)
    win = (b > 0.5) & (b < 0.8) & (_fmod(ax, 1.9) > 0.25)
    d6 = _fmod(ax, 6.0)
    door = (b > 0.08) & (b < 0.8) & (d6 < 1.3) & (d6 > 0.1)
    stripe = (b > 0.3) & (b < 0.36)
    return [(body, TRAIN, p["color"]), (stripe, TRAIN, p["color"] * 0.5), (win | door, TRAIN, p["glass"])], []


def _person_parts(ax, yy, cx, s, stride, cls, p) -> Parts:
    head = _disc(ax, yy, cx, 1.62 * s, 0.11 * s)
    torso = (np.abs(ax - cx) < 0.19 * s) & (yy > 0.8 * s) & (yy < 1.5 * s)
    arms = (np.abs(ax - cx) < 0.25 * s) & (yy > 0.9 * s) & (yy < 1.45 * s)
    k = (0.85 * s - yy) * (stride / (0.85 * s))
    legs = (yy <= 0.86 * s) & ((np.abs(ax - cx + 0.09 * s + k) < 0.08 * s) | (np.abs(ax - cx - 0.09 * s - k) < 0.08 * s))
    return [(torso | arms, cls, p["top"]), (legs, cls, p["bottom"]), (head, cls, p["skin"])]


def _person(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    return _person_parts(ax, yy, w / 2, h / 1.75, p["stride"], PERSON, p), []


def _two_wheeler(ax, yy, w, h, p, motor: bool, rider: bool) -> tuple[Parts, Lights]:
    s = p["s"]
    r = 0.34 * s
    cls = MOTO if motor else BIKE
    x0, x1 = 0.42 * s, 1.38 * s
    thick = 0.12 * s if motor else 0.05 * s
    wheels = _ring(ax, yy, x0, r, r - thick, r) | _ring(ax, yy, x1, r, r - thick, r)
    seat, pedal, head = (0.8 * s, 0.95 * s), (0.85 * s, 0.36 * s), (1.25 * s, 0.95 * s)
    t = 0.035 * s
    frame = (_seg_mask(ax, yy, x0, r, *pedal, t) | _seg_mask(ax, yy, *pedal, *seat, t)
             | _seg_mask(ax, yy, x0, r, *seat, t) | _seg_mask(ax, yy, *pedal, *head, t)
             | _seg_mask(ax, yy, *seat, *head, t) | _seg_mask(ax, yy, *head, x1, r, t)
             | _seg_mask(ax, yy, *head, 1.22 * s, 1.1 * s, t))
    if motor:
        frame |= (ax > 0.55 * s) & (ax < 1.3 * s) & (yy > 0.42 * s) & (yy < 0.9 * s) & \
            ((ax - 0.55 * s) * 0.3 + 0.42 * s < yy)
    parts: Parts = [(wheels, cls, p["tire"]), (frame, cls, p["frame"])]
    lights: Lights = []
    if rider:
        hip, shoulder, knee, hand = (0.8 * s, 1.0 * s), (1.0 * s, 1.5 * s), (1.02 * s, 0.72 * s), (1.22 * s, 1.1 * s)
        body = (_seg_mask(ax, yy, *hip, *shoulder, 0.15 * s) | _seg_mask(ax, yy, *shoulder, *hand, 0.055 * s))
        legs = _seg_mask(ax, yy, *hip, *knee, 0.08 * s) | _seg_mask(ax, yy, *knee, *pedal, 0.065 * s)
        head_ = _disc(ax, yy, 1.08 * s, 1.68 * s, 0.12 * s)
        parts += [(legs, RIDER, p["bottom"]), (body, RIDER, p["top"]), (head_, RIDER, p["skin"])]
        if motor:
            lights.append((x1 + 0.1 * s, 0.8 * s, 0.12, (255, 250, 220)))
    return parts, lights


def _pole(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    pw, attach = p["pw"], p["attach"]
    pole = (ax >= 0) & (ax < pw) & (yy <= h)
    parts: Parts = []
    lights: Lights = []
    if attach == "light":
        arm_len, top = p["arm"], p["top"]
        arm = (ax < arm_len + pw) & (yy > top - 0.12) & (yy <= top)
        bx0 = max(pw, arm_len + pw - 0.38)
        box = (ax >= bx0) & (ax < bx0 + 0.38) & (yy > top - 1.1) & (yy <= top - 0.05)
        cx = bx0 + 0.19
        lamp_y = [top - 0.28, top - 0.57, top - 0.86]
        lamps = [_disc(ax, yy, cx, ly, 0.1) for ly in lamp_y]
        on = p["on"]
        on_color = (RED, AMBER, GREEN)[on]
        parts = [(pole | arm, POLE, p["color"]), (box, LIGHT, p["box"])]
        for i, lm in enumerate(lamps):
            parts.append((lm & box, LIGHT, on_color if i == on else p["box"] * 1.6 + 10))
        lights.append((cx, lamp_y[on], 0.25, tuple(float(x) for x in on_color)))
    elif attach == "sign":
        cy, r, shape = p["top"] - 0.4, p["r"], p["shape"]
        cx = pw / 2
        if shape == 0:
            plate = _disc(ax, yy, cx, cy, r)
        elif shape == 1:
            plate = (np.abs(ax - cx) < (yy - (cy - r)) * 0.58) & (yy < cy + r * 0.9) & (yy > cy - r)
        elif shape == 2:
            plate = (np.abs(ax - cx) < r) & (np.abs(yy - cy) < r)
        else:
            plate = (np.abs(ax - cx) < 1.6 * r) & (np.abs(yy - cy) < 0.6 * r)
        inner = plate & ((ax - cx) ** 2 + (yy - cy) ** 2 < (0.55 * r) ** 2)
        parts = [(pole, POLE, p["color"]), (plate, SIGN, p["sign"]), (inner, SIGN, p["sign"] * 0.4 + 140)]
    else:  # street lamp: an arm with a lamp head (all pole)
        top = p["top"]
        arm = (ax < p["arm"] + pw) & (yy > top - 0.1) & (yy <= top)
        parts = [(pole | arm, POLE, p["color"])]
        lights.append((p["arm"] + pw - 0.2, top - 0.15, 0.4, (255, 220, 150)))
    return parts, lights


def _tree(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    cx = w / 2
    trunk = (np.abs(ax - cx) < p["tw"] / 2) & (yy < p["th"] + 0.5)
    crown = np.zeros(np.broadcast_shapes(ax.shape, yy.shape), bool)
    dark = np.zeros_like(crown)
    for i, (dx, dy, rx, ry) in enumerate(p["blobs"]):
        e = ((ax - cx - dx) * (1.0 / rx)) ** 2 + ((yy - p["th"] - dy) * (1.0 / ry)) ** 2 < 1.0
        crown |= e
        if i % 2:
            dark |= e
    return [(trunk, VEG, p["trunk"]), (crown, VEG, p["color"]), (dark & crown, VEG, p["color"] * 0.78)], []


@dataclass
class _Obj:
    z: float
    X: float       # lateral centre (m)
    w: float
    h: float
    fn: Callable[..., tuple[Parts, Lights]]
    p: dict[str, Any]
    flip: bool = False


def _place_objects(R: _Rand, st: DomainStyle, street: _Street) -> list[_Obj]:
    Ob, P = st.objects, st.palette
    j = P.jitter
    xc, rw = street.xc, street.rw
    objs: list[_Obj] = []

    def depth() -> float:
        return Ob.near + (Ob.far - Ob.near) * R.u() ** Ob.depth_power

    def sc() -> float:
        return R.r(Ob.scale)

    def vehicle_colors(choices):
        return {"color": R.color(choices, j), "glass": R.color(P.glass, j * 0.5), "tire": R.color(P.tire, 4)}

    def person_colors():
        return {"top": R.color(P.clothes, j), "bottom": R.color(P.clothes, j), "skin": R.color(P.skin, j * 0.5)}

    for _ in range(R.count(Ob.cars)):
        s = sc()
        objs.append(_Obj(depth(), xc + R.u(-0.75, 0.75) * rw, 1.8 * s, 1.5 * s, _car_rear, vehicle_colors(P.car)))
    for _ in range(R.count(Ob.parked_cars)):
        s = sc()
        side = -1 if R.chance(0.5) else 1
        objs.append(_Obj(depth(), xc + side * (rw - 1.0 * s), 4.3 * s, 1.45 * s, _car_side,
                         vehicle_colors(P.car), flip=R.chance(0.5)))
    for _ in range(R.count(Ob.trucks)):
        s = sc()
        if R.chance(0.6):
            objs.append(_Obj(depth(), xc + R.u(-0.6, 0.6) * rw, 2.5 * s, 3.4 * s, _truck_rear, vehicle_colors(P.truck)))
        else:
            objs.append(_Obj(depth() + 4, xc + (-1 if R.chance(0.5) else 1) * (rw - 1.3), 8.0 * s, 3.4 * s,
                             _truck_side, vehicle_colors(P.truck), flip=R.chance(0.5)))
    for _ in range(R.count(Ob.buses)):
        s = sc()
        if R.chance(0.6):
            objs.append(_Obj(depth() + 3, xc + R.u(-0.6, 0.6) * rw, 2.55 * s, 3.2 * s, _bus_rear, vehicle_colors(P.bus)))
        else:
            objs.append(_Obj(depth() + 6, xc + (-1 if R.chance(0.5) else 1) * (rw - 1.3), 11.0 * s, 3.2 * s,
                             _bus_side, vehicle_colors(P.bus), flip=R.chance(0.5)))
    for _ in range(R.count(Ob.trams)):
        s = sc()
        if R.chance(0.5):
            objs.append(_Obj(depth() + 5, xc + R.u(-0.3, 0.3) * rw, 2.65 * s, 3.6 * s, _tram_front,
                             vehicle_colors(P.train)))
        else:
            objs.append(_Obj(depth() + 12, xc + R.u(-0.3, 0.3) * rw, 22.0 * s, 3.6 * s, _tram_side,
                             vehicle_colors(P.train), flip=R.chance(0.5)))
    for _ in range(R.count(Ob.persons)):
        s = sc() * R.u(0.88, 1.1)
        if R.chance(Ob.crossing):
            X = xc + R.u(-0.9, 0.9) * rw
        else:
            side = -1 if R.chance(0.5) else 1
            sw = street.swl if side < 0 else street.swr
            X = xc + side * (rw + R.u(0.3, max(0.4, sw - 0.3)))
        objs.append(_Obj(depth(), X, 0.65 * s, 1.8 * s, _person, {**person_colors(), "stride": R.u(0, 0.18) * s}))
    for motor, mean, parked in ((False, Ob.cyclists, False), (True, Ob.motorcyclists, False),
                                (False, Ob.parked_bicycles, True), (True, Ob.parked_motorcycles, True)):
        for _ in range(R.count(mean)):
            s = sc() * R.u(0.92, 1.05)
            side = -1 if R.chance(0.5) else 1
            if parked:
                sw = street.swl if side < 0 else street.swr
                X, h = xc + side * (rw + R.u(0.4, max(0.5, sw - 0.4))), 1.2 * s
            else:
                X, h = xc + side * R.u(0.35, 0.9) * rw, 1.85 * s
            p = {"s": s, "tire": R.color(P.tire, 4), "frame": R.color(P.bike, j), **person_colors()}
            fn = _moto_rider if (motor and not parked) else _moto if motor else _bike if parked else _bike_rider
            objs.append(_Obj(depth(), X, 1.8 * s, h, fn, p, flip=R.chance(0.5)))
    for _ in range(R.count(Ob.poles)):
        side = -1 if R.chance(0.5) else 1
        X = xc + side * (rw + R.u(0.3, 0.7))
        pw = R.u(0.12, 0.2)
        kind = "light" if R.chance(Ob.light_p) else "sign" if R.chance(Ob.sign_p / max(1e-6, 1 - Ob.light_p)) else "lamp"
        p: dict[str, Any] = {"pw": pw, "attach": kind, "color": R.color(P.pole, j * 0.5)}
        if kind == "light":
            top = R.u(3.2, 5.5)
            p.update(top=top, arm=R.u(0.0, 2.5), box=R.color(P.light_box, 6), on=R.int(0, 2))
            w, h = pw + p["arm"] + 0.38, top
        elif kind == "sign":
            top = R.u(2.4, 3.6)
            p.update(top=top, r=R.u(0.3, 0.42), shape=R.int(0, 3), sign=R.color(P.sign, j))
            w, h = pw, top
        else:
            top = R.u(6.0, 9.0)
            p.update(top=top, arm=R.u(0.8, 2.0))
            w, h = pw + p["arm"], top
        # the pole stands at X; attachments reach toward the road centre
        toward_right = side < 0
        Xc = X + (w / 2 - pw / 2) * (1 if toward_right else -1)
        if kind == "sign":
            w = 2 * 1.6 * p["r"] + pw  # the plate is centred on the pole
            Xc = X
            p["pw"] = pw
            p["offset"] = w / 2 - pw / 2
        objs.append(_Obj(depth(), Xc, w, h, _pole_centered if kind == "sign" else _pole, p, flip=not toward_right))
    for _ in range(R.count(Ob.trees)):
        side = -1 if R.chance(0.5) else 1
        sw = street.swl if side < 0 else street.swr
        X = xc + side * (rw + R.u(0.6 * sw, sw + 1.5))
        th = R.u(1.8, 3.2)
        nb = R.int(*st.textures.crown_blobs)
        blobs = [(R.u(-1.2, 1.2), R.u(0.8, 2.6), R.u(1.0, 2.0), R.u(0.9, 1.8)) for _ in range(nb)]
        half = max(abs(dx) + rx for dx, _, rx, _ in blobs)
        top = max(dy + ry for _, dy, _, ry in blobs)
        p = {"tw": R.u(0.25, 0.45), "th": th, "blobs": blobs, "trunk": R.color(P.trunk, j),
             "color": R.color(P.vegetation, j)}
        objs.append(_Obj(depth(), X, 2 * half, th + top, _tree, p))
    objs.sort(key=lambda o: -o.z)
    return objs


def _pole_centered(ax, yy, w, h, p) -> tuple[Parts, Lights]:
    return _pole(ax - p["offset"], yy, w, h, p)


def _bike(ax, yy, w, h, p):
    return _two_wheeler(ax, yy, w, h, p, motor=False, rider=False)


def _bike_rider(ax, yy, w, h, p):
    return _two_wheeler(ax, yy, w, h, p, motor=False, rider=True)


def _moto(ax, yy, w, h, p):
    return _two_wheeler(ax, yy, w, h, p, motor=True, rider=False)


def _moto_rider(ax, yy, w, h, p):
    return _two_wheeler(ax, yy, w, h, p, motor=True, rider=True)


def _draw_object(cv: _Canvas, cam: _Camera, o: _Obj, shading: float) -> None:
    H, W = cv.lab.shape
    u, v = _grid(W, H)
    x0, x1 = cam.x(o.X - o.w / 2, o.z), cam.x(o.X + o.w / 2, o.z)
    y0, y1 = cam.y(o.h, o.z), cam.y(0.0, o.z)
    c0, c1 = max(0, int(math.floor(x0))), min(W, int(math.ceil(x1)))
    r0, r1 = max(0, int(math.floor(y0))), min(H, int(math.ceil(y1)))
    if c1 - c0 < 1 or r1 - r0 < 2:
        return
    mpp = o.w / (x1 - x0)  # metres per pixel at this depth
    ax = (u[:, c0:c1] - np.float32(x0)) * np.float32(mpp)
    if o.flip:
        ax = np.float32(o.w) - ax
    yy = (np.float32(y1) - v[r0:r1]) * np.float32(mpp)
    parts, lights = o.fn(ax, yy, o.w, o.h, o.p)
    pid = np.zeros((r1 - r0, c1 - c0), np.uint8)  # which part covers each pixel (later parts on top)
    for k, (mask, _, _) in enumerate(parts, 1):
        np.copyto(pid, k, where=mask)
    dep = cv.dep[r0:r1, c0:c1]
    vis = (pid > 0) & (dep > o.z)
    if not vis.any():
        return
    cls_lut = np.array([0] + [c for _, c, _ in parts], np.uint8)
    col_lut = np.array([(0.0, 0.0, 0.0)] + [c for _, _, c in parts], np.float32).T  # 3 x (parts+1)
    colors = col_lut[:, pid]                                  # 3 x h x w
    if shading > 0:
        colors *= 1 + np.float32(shading) * (yy * np.float32(1.0 / o.h) - np.float32(0.5))
    np.copyto(cv.img[:, r0:r1, c0:c1], colors, where=vis)
    np.copyto(cv.lab[r0:r1, c0:c1], cls_lut[pid], where=vis)
    np.copyto(dep, np.float32(o.z), where=vis)
    for lx, ly, lr, rgb in lights:
        X = o.X - o.w / 2 + (o.w - lx if o.flip else lx)
        cv.lights.append((cam.x(X, o.z), cam.y(ly, o.z), max(1.0, lr * cam.f / o.z), np.asarray(rgb, np.float32)))


def _draw_hood(cv: _Canvas, st: DomainStyle, R: _Rand) -> None:
    """The ego vehicle's bonnet at the bottom (camera data has it; labelled ignore like Cityscapes')."""
    H, W = cv.lab.shape
    u, v = _grid(W, H)
    hh = R.r(st.layout.ego_hood) * H
    bend = R.u(0.02, 0.05) * H
    r0 = max(0, int(math.floor(H - hh)))
    top = (H - hh) + bend * ((u - W / 2) / (W / 2)) ** 2
    vv = v[r0:]
    m = vv >= top
    base = R.color(st.palette.hood, 6)
    g = 1 + 0.5 * np.clip((vv - top) * np.float32(1 / hh), 0, 1)  # a reflection brightening downward
    _paint(cv.img[:, r0:], base.reshape(3, 1, 1) * (0.7 + 0.3 * g), m)
    cv.lab[r0:][m] = IGNORE_INDEX
    cv.dep[r0:][m] = 0.5


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r with replicated edges (elementwise float ops: exact everywhere)."""
    for axis in (1, 2):
        acc = x.copy()
        a = [slice(None)] * x.ndim
        b = [slice(None)] * x.ndim
        for i in range(1, r + 1):
            for dst, src in ((slice(i, None), slice(None, -i)), (slice(None, -i), slice(i, None)),
                             (slice(None, i), slice(0, 1)), (slice(-i, None), slice(-1, None))):
                a[axis], b[axis] = dst, src
                acc[tuple(a)] += x[tuple(b)]
        x = acc
    x *= np.float32(1 / (2 * r + 1) ** 2)
    return x


def _post(cv: _Canvas, cam: _Camera, st: DomainStyle, R: _Rand) -> np.ndarray:
    """Materials, illumination, weather and camera effects; returns the final uint8 image."""
    H, W = cv.lab.shape
    T, Op, Wt = st.textures, st.optics, st.weather
    img = cv.img
    rng = R.rng
    # per-pixel brightness: material grain, stains, vignetting (one multiply for all three)
    factor = None
    if T.grain:
        lut = np.zeros(256, np.float32)
        for name, amp in T.grain.items():
            lut[TRAIN_ID[name]] = amp
        factor = 1 + lut[cv.lab] * _pixel_noise(rng, (H, W))
    if T.grime > 0:
        lut = np.zeros(256, np.float32)
        lut[[ROAD, SIDEWALK, BUILDING, WALL]] = T.grime
        f2 = 1 + lut[cv.lab] * _smooth_noise(rng, H, W, 6, 12)
        factor = f2 if factor is None else factor * f2
    if Op.vignetting > 0:
        vig = _vignette(W, H, float(Op.vignetting))
        factor = vig if factor is None else factor * vig
    if factor is not None:
        img *= factor
    # colour: exposure and white balance, saturation, contrast as one affine map
    gain = np.full(3, R.r(Op.exposure), np.float64)
    if Op.white_balance > 0:
        gain *= 1 + (rng.random(3) * 2 - 1) * Op.white_balance
    gain *= Op.contrast
    offset = 128.0 * (1 - Op.contrast)
    if Op.saturation != 1.0:
        grey = img[0] + img[1]
        grey += img[2]
        img *= (gain * Op.saturation).astype(np.float32).reshape(3, 1, 1)
        img += grey * (gain * (1 - Op.saturation) / 3).astype(np.float32).reshape(3, 1, 1)
    else:
        img *= gain.astype(np.float32).reshape(3, 1, 1)
    if Wt.fog > 0:
        x = np.minimum(cv.dep, 1e4) * np.float32(Wt.fog)
        t = 1 / (1 + x + 0.5 * x * x)
        img *= t
        img += (1 - t) * _planar(Wt.fog_color)
    if Wt.night > 0:
        img *= _planar(Wt.night_tint) * np.float32(1 - Wt.night)
        if Wt.lights > 0:
            u, v = _grid(W, H)
            for x, y, r, rgb in cv.lights:
                rr = 4 * r
                c0, c1 = max(0, int(x - rr)), min(W, int(x + rr) + 1)
                r0, r1 = max(0, int(y - rr)), min(H, int(y + rr) + 1)
                if c1 <= c0 or r1 <= r0:
                    continue
                d2 = ((u[:, c0:c1] - x) ** 2 + (v[r0:r1] - y) ** 2) * np.float32(1 / (r * r))
                img[:, r0:r1, c0:c1] += (np.float32(Wt.lights) / (1 + d2 * d2)) * rgb.reshape(3, 1, 1)
    if Op.blur > 0:
        for _ in range(Op.blur_passes):
            img = _blur(img, Op.blur)
    if Op.chromatic > 0:
        c = Op.chromatic
        img[0, :, c:] = img[0, :, :-c].copy()
        img[2, :, :-c] = img[2, :, c:].copy()
    offset += 0.5  # round half up when truncating below
    if Op.noise > 0:  # triangular noise in [-noise, noise] per channel
        img += _pixel_noise(rng, (3, H, W)) * np.float32(Op.noise)
    if Op.luma_noise > 0:
        img += _pixel_noise(rng, (H, W)) * np.float32(Op.luma_noise)
    img += np.float32(offset)
    np.clip(img, 0, 255, out=img)
    return np.moveaxis(img, 0, -1).astype(np.uint8)  # H x W x 3


def render(style: DomainStyle, rng: np.random.Generator, width: int = 256,
           height: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene: (HxWx3 uint8 RGB image, HxW uint8 trainId label with 255 = ignore)."""
    R = _Rand(rng)
    L = style.layout
    cam = _Camera(yh=height * R.r(L.horizon), vp=width * (0.5 + R.u(-L.vp_shift, L.vp_shift)),
                  f=width * R.r(L.focal), ch=R.r(L.camera_height))
    rw = R.r(L.road_half_width)
    xc = R.u(-1, 1) * L.lane_offset * rw
    swl, swr = R.r(L.sidewalk), R.r(L.sidewalk)
    tl = R.r(L.terrain_width) if R.chance(L.terrain_p) else 0.0
    tr = R.r(L.terrain_width) if R.chance(L.terrain_p) else 0.0
    street = _Street(xc, rw, swl, swr, xc - rw - swl - tl, xc + rw + swr + tr)
    segL, segR = _segments(R, style), _segments(R, style)
    cv = _Canvas(np.empty((3, height, width), np.float32), np.empty((height, width), np.uint8),
                 np.empty((height, width), np.float32))
    _draw_sky(cv, cam, style, rng)
    _draw_skyline(cv, cam, style, R)
    _draw_ground(cv, cam, street, segR, style, R)
    lit_seed = R.int(0, 999)
    _draw_facade(cv, cam, style, segL, street.XL, True, lit_seed)
    _draw_facade(cv, cam, style, segR, street.XR, False, lit_seed)
    for o in _place_objects(R, style, street):
        _draw_object(cv, cam, o, style.textures.object_shading)
    if R.chance(L.ego_hood_p):
        _draw_hood(cv, style, R)
    image = _post(cv, cam, style, R)
    return image, cv.lab


# ==================================================================================================
# datasets on disk


def _stream_key(domain: str, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{domain}/{split}".encode()).digest()[:8], "little")


def image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The random stream of image `index` of (domain, split): independent of every other image."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _stream_key(domain, split), index])))


def render_index(styles: dict[str, DomainStyle], params: SynthParams, domain: str, split: str,
                 index: int) -> tuple[np.ndarray, np.ndarray]:
    return render(styles[domain], image_rng(params.seed, domain, split, index), params.width, params.height)


def generate(params: SynthParams, out: str | Path,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Write the benchmark to `out` (atomically: a temporary folder renamed at the end) and return
    the manifest. Layout: out/<domain>/<split>/{images,labels}/NNNNN.png, class_counts.csv; out/manifest.json."""
    styles = resolve_styles(params.style, params.gap)
    out = Path(out)
    splits_info: dict[str, Any] = {}
    total = np.zeros(NUM_CLASSES, np.int64)
    n_images = 0
    with atomic_dir(out) as tmp:
        for domain, splits in params.splits.items():
            for split, n in splits.items():
                folder = tmp / domain / split
                (folder / "images").mkdir(parents=True)
                (folder / "labels").mkdir()
                counts = np.zeros((n, NUM_CLASSES), np.int64)
                names = [f"{i:05d}" for i in range(n)]
                h = hashlib.sha256()
                for i in range(n):
                    img, lab = render_index(styles, params, domain, split, i)
                    write_png(folder / "images" / f"{names[i]}.png", img)
                    write_png(folder / "labels" / f"{names[i]}.png", lab)
                    counts[i] = class_counts(lab)
                    h.update(img.tobytes())
                    h.update(lab.tobytes())
                    if progress is not None:
                        progress(f"{domain}/{split}", i + 1, n)
                write_class_counts(folder / CLASS_COUNTS_FILE, names, counts)
                pixels = counts.sum(0)
                total += pixels
                n_images += n
                splits_info[f"{domain}/{split}"] = {
                    "domain": domain, "split": split, "count": n,
                    "class_pixels": [int(x) for x in pixels],
                    "class_pixel_frequency": _freq(pixels),
                    "images_with_class": [int(x) for x in (counts > 0).sum(0)],
                    "content_hash": h.hexdigest(),
                    "style_hash": styles[domain].digest(),
                }
        manifest = {
            "generator": GENERATOR_VERSION,
            "params": params.model_dump(mode="json"),
            "image_size": {"width": params.width, "height": params.height},
            "classes": list(CLASSES),
            "ignore_index": IGNORE_INDEX,
            "num_images": n_images,
            "splits": splits_info,
            "class_pixel_frequency": _freq(total),
            "classes_present": int((total > 0).sum()),
        }
        manifest["content_hash"] = hashlib.sha256(
            json.dumps({k: manifest[k] for k in ("generator", "params", "splits")}, sort_keys=True).encode()
        ).hexdigest()
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _freq(pixels: np.ndarray) -> list[float]:
    s = int(pixels.sum())
    return [round(int(x) / s, 6) if s else 0.0 for x in pixels]


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(
            f"{root}: synthetic dataset folder not found; expected {root}/{MANIFEST} and "
            f"{root}/<domain>/<split>/images/NNNNN.png + labels/NNNNN.png (generate it with "
            f"`udabench data synth` or `dvc repro synth`; see datasets/README.md)")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: manifest missing; {root} is not a complete synthetic dataset "
                        f"(regenerate it with `udabench data synth`)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


__all__ = [
    "DOMAINS", "DomainStyle", "GENERATOR_VERSION", "Layout", "MANIFEST", "ObjectStats", "Optics", "Palette",
    "SOURCE_STYLE", "SynthParams", "TARGET_STYLE", "Textures", "Weather", "generate", "image_rng",
    "load_params", "read_manifest", "render", "render_index", "resolve_styles",
]
