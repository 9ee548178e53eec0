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

Modules, each importing only those listed before it:
- `styles`: the domain-style knobs (`DomainStyle` and its parts), `SOURCE_STYLE`, `TARGET_STYLE`, the
  fog and night updates, `mix_styles`, `resolve_styles` (the styles of the four DOMAINS), DEFAULT_GAP.
- `params`: `SynthParams` and `load_params` (params.yaml's `synth` group), GENERATOR_VERSION.
- `canvas`: the label ids, the canvas (image, label and depth buffers) and pixel-grid helpers.
- `noise`: scalar random draws and smooth and per-pixel noise from fixed noise banks.
- `shapes`: the parts of each kind of billboard object (cars, persons, poles, trees, ...).
- `scenes`: scene layout: camera, street, facade segments, object placement.
- `drawing`: drawing sky, ground, facades, objects and hood; post-processing; `render`.
- `writing`: the random stream of each image, `render_index`, `generate` (the dataset folders and the
  manifest), `read_manifest`.
"""

from __future__ import annotations

from harness.data.synthetic.params import GENERATOR_VERSION, SynthParams, load_params
from harness.data.synthetic.styles import (
    DOMAINS,
    FOG_UPDATE,
    NIGHT_UPDATE,
    SOURCE_STYLE,
    TARGET_STYLE,
    mix_styles,
    resolve_styles,
)
from harness.data.synthetic.writing import generate, read_manifest, render_index

__all__ = [
    "DOMAINS", "FOG_UPDATE", "GENERATOR_VERSION", "NIGHT_UPDATE", "SOURCE_STYLE", "SynthParams",
    "TARGET_STYLE", "generate", "load_params", "mix_styles", "read_manifest", "render_index",
    "resolve_styles",
]
