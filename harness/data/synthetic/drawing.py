"""Drawing a scene: sky, far skyline, ground, facades, objects (depth-tested) and the ego hood, then
post-processing (materials, illumination, weather, camera effects). `render` draws one scene."""

from __future__ import annotations

import math

import numpy as np

from harness.data.synthetic.canvas import (
    BUILDING,
    FAR_DEPTH,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEG,
    WALL,
    _Canvas,
    _fmod,
    _grid,
    _paint,
    _planar,
    _vignette,
)
from harness.data.synthetic.noise import _pixel_noise, _Rand, _smooth_noise
from harness.data.synthetic.scenes import (
    _SEG_CLASS,
    _Camera,
    _Obj,
    _palette_pick,
    _place_objects,
    _Segments,
    _segments,
    _Street,
)
from harness.data.synthetic.styles import DomainStyle
from harness.labels import IGNORE_INDEX, TRAIN_ID


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
