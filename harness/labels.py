"""The one label table: the 19 Cityscapes evaluation classes (trainIds 0-18, 255 = ignore).

Every dataset, metric and report uses this module; nothing else hard-codes class names or colours.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASSES)

# Official Cityscapes colours, indexed by trainId.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
IGNORE_COLOR = (0, 0, 0)

TRAIN_ID = {name: i for i, name in enumerate(CLASSES)}

# SYNTHIA->Cityscapes protocols: 16 classes (no terrain, truck, train); 13 (also no wall, fence, pole).
SYNTHIA16: tuple[int, ...] = tuple(
    i for i, c in enumerate(CLASSES) if c not in ("terrain", "truck", "train"))
SYNTHIA13: tuple[int, ...] = tuple(
    i for i in SYNTHIA16 if CLASSES[i] not in ("wall", "fence", "pole"))

# Classes that are "things" (countable objects); used by reports and rare-class analysis.
THINGS: tuple[int, ...] = tuple(TRAIN_ID[c] for c in (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"))


def colorize(label: np.ndarray) -> np.ndarray:
    """Map an HxW array of trainIds to an HxWx3 uint8 RGB image (ignore -> black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOR
    lut[:NUM_CLASSES] = np.asarray(PALETTE, dtype=np.uint8)
    return lut[np.asarray(label, dtype=np.uint8)]


def id_lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A lookup table mapping raw dataset ids to trainIds; every id not in `mapping` maps to 255."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut
