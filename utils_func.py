"""Cityscapes class table, colour <-> class, one-hot and colourising.

The one table of classes lives here (`LABELS`); everything else (the 19
trained classes, the decoding palette and its lookup table, the colours of
predictions, the categories) is derived from it. A leaf of the project:
pure NumPy, importing nothing of it, so that both input pipelines,
prediction and plotting share it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

#: Class id given to void, non-trained and undecidable pixels. The loss and
#: every metric give these pixels zero weight.
IGNORE_ID = 255


class Label(NamedTuple):
    """One Cityscapes label, as in cityscapesScripts' ``helpers/labels.py``."""

    name: str
    id: int  # labelId 0..33
    train_id: int  # 0..18, or IGNORE_ID when not trained
    category: str
    color: tuple[int, int, int]


# cityscapesScripts helpers/labels.py, labelIds 0..33 (license plate, -1, is
# absent from the colour images and left out).
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, IGNORE_ID, "void", (0, 0, 0)),
    Label("ego vehicle", 1, IGNORE_ID, "void", (0, 0, 0)),
    Label("rectification border", 2, IGNORE_ID, "void", (0, 0, 0)),
    Label("out of roi", 3, IGNORE_ID, "void", (0, 0, 0)),
    Label("static", 4, IGNORE_ID, "void", (0, 0, 0)),
    Label("dynamic", 5, IGNORE_ID, "void", (111, 74, 0)),
    Label("ground", 6, IGNORE_ID, "void", (81, 0, 81)),
    Label("road", 7, 0, "flat", (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", (244, 35, 232)),
    Label("parking", 9, IGNORE_ID, "flat", (250, 170, 160)),
    Label("rail track", 10, IGNORE_ID, "flat", (230, 150, 140)),
    Label("building", 11, 2, "construction", (70, 70, 70)),
    Label("wall", 12, 3, "construction", (102, 102, 156)),
    Label("fence", 13, 4, "construction", (190, 153, 153)),
    Label("guard rail", 14, IGNORE_ID, "construction", (180, 165, 180)),
    Label("bridge", 15, IGNORE_ID, "construction", (150, 100, 100)),
    Label("tunnel", 16, IGNORE_ID, "construction", (150, 120, 90)),
    Label("pole", 17, 5, "object", (153, 153, 153)),
    Label("polegroup", 18, IGNORE_ID, "object", (153, 153, 153)),
    Label("traffic light", 19, 6, "object", (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", (107, 142, 35)),
    Label("terrain", 22, 9, "nature", (152, 251, 152)),
    Label("sky", 23, 10, "sky", (70, 130, 180)),
    Label("person", 24, 11, "human", (220, 20, 60)),
    Label("rider", 25, 12, "human", (255, 0, 0)),
    Label("car", 26, 13, "vehicle", (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", (0, 60, 100)),
    Label("caravan", 29, IGNORE_ID, "vehicle", (0, 0, 90)),
    Label("trailer", 30, IGNORE_ID, "vehicle", (0, 0, 110)),
    Label("train", 31, 16, "vehicle", (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", (119, 11, 32)),
)

#: The 19 trained classes in trainId order.
CLASSES: tuple[Label, ...] = tuple(
    sorted((lab for lab in LABELS if lab.train_id != IGNORE_ID), key=lambda lab: lab.train_id)
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
#: The 7 Cityscapes categories that hold trained classes, in their usual order.
CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")

# Labels farther than this (RGB Euclidean distance) from every palette colour
# are ignored. Label pixels off the palette are JPEG blends across class
# edges. The midpoint of two palette colours more than 120 apart (road and
# sidewalk, car and sky, ...) is over 60 from both, so such blends are
# dropped, while a much tighter bound would throw away the blurred but
# unambiguous rims of thin classes (poles, signs) where most of their pixels
# are. Close pairs (bus/train, truck/caravan, 20 apart) are settled by the
# nearest colour.
MAX_COLOR_DISTANCE = 60.0


def decode_palette() -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours of labelIds 0..33 and the trainId each decodes to.

    Colours shared by several labels (black for the void labels, pole and
    polegroup's grey) appear once; a shared colour takes the first label's
    trainId, which is IGNORE_ID for black and pole (5) for the grey.

    Returns:
        A pair `(colors, train_ids)`: `colors` is uint8 of shape `(29, 3)`,
        `train_ids` is uint8 of shape `(29,)` with IGNORE_ID for void and
        non-trained labels.
    """
    colors: list[tuple[int, int, int]] = []
    train_ids: list[int] = []
    for lab in LABELS:
        if lab.color in colors:
            continue
        colors.append(lab.color)
        # polegroup (ignored) shares pole's colour; pole is listed first.
        train_ids.append(lab.train_id)
    return np.array(colors, np.uint8), np.array(train_ids, np.uint8)


@functools.lru_cache(maxsize=2)
def color_lut(max_distance: float = MAX_COLOR_DISTANCE) -> np.ndarray:
    """The trainId of every 24-bit RGB colour: `colors_to_ids` as a table.

    Exact: the same nearest colour (the first of the palette on a tie) and
    the same threshold as the distance search, in integers. Only colours
    within `max_distance` of a palette colour can be kept, and such a
    colour's nearest palette colour is within that distance too, so it
    suffices to search the cube of side `2 * max_distance + 1` around each
    palette colour, not the whole colour cube; built once per process and
    threshold.

    Args:
        max_distance: Colours farther than this from every palette colour
            map to IGNORE_ID.

    Returns:
        Read-only uint8 array `(2**24,)`, indexed by `lut_index`.
    """
    colors, train_ids = decode_palette()
    limit = int(math.floor(max_distance**2))  # integer squared distances <= limit are kept
    reach = int(math.floor(max_distance))
    best = np.full((256, 256, 256), limit + 1, np.int32)
    lut = np.full((256, 256, 256), IGNORE_ID, np.uint8)
    for color, train_id in zip(colors.astype(np.int64), train_ids, strict=True):
        lo, hi = np.maximum(color - reach, 0), np.minimum(color + reach, 255) + 1
        dr, dg, db = (np.arange(lo[i], hi[i]) - color[i] for i in range(3))
        d2 = (dr[:, None, None] ** 2 + dg[None, :, None] ** 2 + db[None, None, :] ** 2).astype(np.int32)
        region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        # Strictly closer: on a tie the colour listed first keeps the pixel.
        closer = d2 < best[region]
        best[region][closer] = d2[closer]
        lut[region][closer] = train_id
    lut = lut.reshape(-1)
    lut.flags.writeable = False
    return lut


def lut_index(rgb):
    """Index of each colour into `color_lut`: `(r * 256 + g) * 256 + b`.

    The one index of the table, for NumPy arrays and TensorFlow tensors
    alike (arithmetic only), so that every decoder looks up the same entry.

    Args:
        rgb: int32 array or tensor `(..., 3)`, RGB.

    Returns:
        int32 array or tensor `(...)` in `0..2**24 - 1`.
    """
    return (rgb[..., 0] * 256 + rgb[..., 1]) * 256 + rgb[..., 2]


def colors_to_ids(label_rgb: np.ndarray, max_distance: float = MAX_COLOR_DISTANCE) -> np.ndarray:
    """Decode a Cityscapes colour label image to trainIds by nearest colour.

    Args:
        label_rgb: uint8 array of shape `(H, W, 3)`, RGB.
        max_distance: Pixels farther than this from every palette colour
            become IGNORE_ID.

    Returns:
        uint8 array of shape `(H, W)` with values in 0..18 or IGNORE_ID.
    """
    if max_distance == MAX_COLOR_DISTANCE:
        return color_lut()[lut_index(np.asarray(label_rgb, np.int32))]
    return nearest_color_ids(label_rgb, max_distance)


def nearest_color_ids(label_rgb: np.ndarray, max_distance: float = MAX_COLOR_DISTANCE) -> np.ndarray:
    """`colors_to_ids` by searching the palette for every pixel (no table).

    Args:
        label_rgb: uint8 array of shape `(H, W, 3)`, RGB.
        max_distance: Pixels farther than this from every palette colour
            become IGNORE_ID.

    Returns:
        uint8 array of shape `(H, W)` with values in 0..18 or IGNORE_ID.
    """
    colors, train_ids = decode_palette()
    rgb = label_rgb.reshape(-1, 1, 3).astype(np.int32)
    d2 = ((rgb - colors[None].astype(np.int32)) ** 2).sum(-1)  # (H*W, 29)
    nearest = d2.argmin(-1)
    ids = train_ids[nearest]
    ids[d2.min(-1) > max_distance**2] = IGNORE_ID
    return ids.reshape(label_rgb.shape[:2])


def one_hot(ids: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """One-hot encode class ids; ignored pixels get an all-zero row.

    Args:
        ids: Integer array of shape `(...)`.
        num_classes: Depth of the encoding.

    Returns:
        float32 array of shape `(..., num_classes)`.
    """
    eye = np.eye(num_classes, dtype=np.float32)
    out = np.zeros(ids.shape + (num_classes,), np.float32)
    valid = ids < num_classes
    out[valid] = eye[ids[valid]]
    return out


def colorize(ids: np.ndarray) -> np.ndarray:
    """Paint class ids with the Cityscapes colours; ignored pixels are black.

    Args:
        ids: Integer array of shape `(H, W)` with trainIds or IGNORE_ID.

    Returns:
        uint8 RGB array of shape `(H, W, 3)`.
    """
    lut = np.zeros((256, 3), np.uint8)
    for c in CLASSES:
        lut[c.train_id] = c.color
    return lut[np.asarray(ids, np.uint8)]


def classes_table() -> list[dict]:
    """The 19 trained classes as JSON-ready records.

    Returns:
        A list of `{"name", "trainId", "color", "category"}` dicts in trainId
        order.
    """
    return [
        {"name": c.name, "trainId": c.train_id, "color": list(c.color), "category": c.category}
        for c in CLASSES
    ]
