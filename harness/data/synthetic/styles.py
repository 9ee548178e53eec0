"""The domain styles: every knob that differs between domains, as typed, frozen pydantic models.

`DomainStyle` groups the knobs (`Palette`, `Textures`, `Optics`, `Weather`, `Layout`, `ObjectStats`).
`SOURCE_STYLE` is game-like, `TARGET_STYLE` camera-like; `FOG_UPDATE` and `NIGHT_UPDATE` derive the
adverse-weather targets. `mix_styles` interpolates knob-wise between two styles, and `resolve_styles`
builds the styles of the four DOMAINS from params.yaml's `synth.gap` and `synth.style` overrides.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.labels import CLASSES, TRAIN_ID

DOMAINS = ("source", "target", "target-fog", "target-night")

RGB = tuple[int, int, int]
Range = tuple[float, float]


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
