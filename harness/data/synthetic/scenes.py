"""Scene layout: the camera, the street, the facade segments along both sides and the placement of
billboard objects (what is where; `drawing` turns it into pixels, `shapes` gives objects their parts)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.data.synthetic.canvas import BUILDING, FENCE, SKY, VEG, WALL
from harness.data.synthetic.noise import _Rand
from harness.data.synthetic.shapes import (
    Lights,
    Parts,
    _bike,
    _bike_rider,
    _bus_rear,
    _bus_side,
    _car_rear,
    _car_side,
    _moto,
    _moto_rider,
    _person,
    _pole,
    _pole_centered,
    _tram_front,
    _tram_side,
    _tree,
    _truck_rear,
    _truck_side,
)
from harness.data.synthetic.styles import RGB, DomainStyle


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
