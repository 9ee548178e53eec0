"""What billboard objects look like: the parts of cars, trucks, buses, trams, persons, two-wheelers
with and without riders, poles (traffic lights, signs, street lamps) and trees, in metres."""

from __future__ import annotations

import numpy as np

from harness.data.synthetic.canvas import (
    BIKE,
    BUS,
    CAR,
    LIGHT,
    MOTO,
    PERSON,
    POLE,
    RIDER,
    SIGN,
    TRAIN,
    TRUCK,
    VEG,
    _fmod,
)

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
