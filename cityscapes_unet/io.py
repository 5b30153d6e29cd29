"""Files in and out: atomic writes, run history, photos and side-by-side pairs."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

import utils_func as uf
from cityscapes_unet.errors import InputError

#: Names of the temporary files of `atomic_file` (a kill mid-write can leave
#: one; a run removes those in its folder, see `remove_temporaries`).
TEMP_GLOB = ".*.tmp-*"


@contextlib.contextmanager
def atomic_file(path: str, companions: Sequence[str] = ()) -> Iterator[str]:
    """Write a file atomically: yield a temporary path beside it, then rename.

    The caller writes the temporary file; on success it replaces `path` in
    one step, on any failure it is removed and `path` is left as it was.
    Some writers also put files of their own beside the one they are given,
    under its stem (OpenVINO writes `NAME.bin` beside `NAME.xml`): name their
    extensions in `companions`, and they are moved to `path`'s stem the same
    way, before `path` itself, so whoever finds `path` finds them whole.

    Args:
        path: Destination path.
        companions: Extensions (with the dot) of the files the writer puts
            beside the temporary path, under its stem.

    Yields:
        The temporary path to write, with the destination's extension (some
        writers pick the format from it).
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}{os.path.splitext(name)[1]}")
    tmp_stem, stem = os.path.splitext(tmp)[0], os.path.splitext(path)[0]
    moves = [(tmp_stem + ext, stem + ext) for ext in companions] + [(tmp, path)]
    try:
        yield tmp
        for src, dst in moves:
            os.replace(src, dst)
    finally:
        for src, _ in moves:
            if os.path.exists(src):
                try:
                    os.remove(src)
                except OSError:
                    pass


def remove_temporaries(folder: str) -> list[str]:
    """Remove the temporary files `atomic_file` left in `folder` (not below it).

    Only safe while no other process writes into `folder` (a run holds its
    folder's lock).

    Args:
        folder: Directory to clean.

    Returns:
        Paths removed.
    """
    removed = []
    for tmp in glob.glob(os.path.join(folder, TEMP_GLOB)):
        if os.path.isfile(tmp):
            os.remove(tmp)
            removed.append(tmp)
    return removed


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file atomically (see `atomic_file`).

    Args:
        path: Destination path.
        text: Content.
    """
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON, atomically (see `atomic_file`).

    Args:
        path: Destination path.
        obj: A JSON-serialisable value.
    """
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_history(path: str) -> dict[str, list[float]]:
    """Read a `history.csv` into columns.

    Args:
        path: CSV with an `epoch` column and one column per logged value.

    Returns:
        A dict from column name to a list of floats, one per epoch.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in rows[0]}


def read_photo(path: str) -> np.ndarray:
    """Read a JPEG or PNG as 8-bit RGB: grayscale is repeated, alpha dropped.

    Args:
        path: Image file.

    Returns:
        uint8 array `(H, W, 3)`.

    Raises:
        InputError: If the file cannot be read or decoded.
    """
    import cv2

    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise InputError(e.strerror or str(e)) from None
    if data.size == 0:
        raise InputError("empty file")
    # IMREAD_COLOR: 3 channels whatever the file holds (gray, alpha, CMYK,
    # 16-bit PNGs scaled to 8 bits).
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError("not a decodable JPEG or PNG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def split_pair(pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a side-by-side pair into the photo and its label's class ids.

    Args:
        pair: uint8 RGB `(H, 2*H', 3)`, photo left, colour label right.

    Returns:
        `(photo (H, W, 3) uint8, ids (H, W) uint8)`; ids are trainIds or
        IGNORE_ID.

    Raises:
        InputError: If the width is odd.
    """
    h, w = pair.shape[:2]
    if w % 2:
        raise InputError(f"{w}x{h} is not a side-by-side pair (odd width)")
    return pair[:, : w // 2], uf.colors_to_ids(pair[:, w // 2 :])


def write_png(path: str, image: np.ndarray) -> None:
    """Write a PNG atomically (see `atomic_file`).

    Args:
        path: Destination path.
        image: uint8 RGB `(H, W, 3)` or single-channel `(H, W)`.

    Raises:
        OSError: If the image cannot be encoded or written.
    """
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_file(path) as tmp:
        buf.tofile(tmp)
