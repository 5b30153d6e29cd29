"""The pair files: listing, header checks and the train/validation split.

No TensorFlow here: the NumPy pipeline (`numpy_pipeline.py`) and the
command line use these on machines without it.
"""

from __future__ import annotations

import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from cityscapes_unet.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg")
# Decoding a pair takes height * width * 3 bytes; a full-resolution
# Cityscapes pair is 1024 high. Headers claiming far more (a 20000x40000
# pair would need 2.4 GB per decode) are refused before any decode.
MAX_PAIR_HEIGHT = 4096


def display_name(path: str) -> str:
    """`path` as it can be printed: bytes that are not UTF-8 shown as `\\xNN`.

    Args:
        path: A file path, possibly holding bytes that are not UTF-8.

    Returns:
        A printable string.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def natural_key(path: str):
    """Sort key of a file name whose numbers compare as numbers.

    Args:
        path: A file path; only its base name counts.

    Returns:
        A list of strings and ints: "2.jpg" sorts before "10.jpg".
    """
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def list_images(folder: str) -> list[str]:
    """JPEG files directly inside `folder`, in natural order.

    Args:
        folder: Directory to list.

    Returns:
        Sorted list of paths (sub-folders and other files left out).
    """
    paths = [os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]
    # isfile follows links: dangling symlinks and folders named *.jpg drop out.
    return sorted((p for p in paths if os.path.isfile(p)), key=natural_key)


def _read(path: str, size: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}") from None


def _frame_header(data: bytes) -> tuple[int, int, int]:
    # (height, width, components) of the first SOF marker in `data`.
    if not data:
        raise DataError("empty file")
    if data[:2] != b"\xff\xd8":
        kind = "a PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "not a JPEG"
        raise DataError(f"{kind} (no JPEG start marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width, data[i + 9]
        i += 2 + length
    raise DataError("truncated or corrupt JPEG (no frame header)")


def jpeg_header(path: str) -> tuple[int, int, int]:
    """Read a JPEG's frame header without decoding the image.

    Args:
        path: File path.

    Returns:
        `(height, width, components)`.

    Raises:
        DataError: If the file is empty, unreadable, not a JPEG, or has no
            frame header.
    """
    return _frame_header(_read(path, 1 << 16))


def check_pair(path: str) -> str | None:
    """Why `path` is not a usable image pair, or None when it is one.

    The header is checked first (size, channels), then the whole file is
    decoded once: a file that passes is one every pipeline decodes, so the
    counts of a run are of the files it really uses.

    Args:
        path: File path.

    Returns:
        A short reason, or None.
    """
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return "file name is not valid UTF-8 (rename the file)"
    try:
        data = _read(path)
        height, width, components = _frame_header(data)
    except DataError as e:
        return str(e)
    if components != 3:
        return f"{components}-channel JPEG; a colour photo|label pair has 3"
    if width != 2 * height:
        return f"{width}x{height} is not a side-by-side pair (width must be twice the height)"
    if height < 16:
        return f"{width}x{height} is too small"
    if height > MAX_PAIR_HEIGHT:
        return f"{width}x{height} is too large (pairs up to {MAX_PAIR_HEIGHT} pixels high are decoded)"
    # The pipelines' decoders (libjpeg in TensorFlow and OpenCV) refuse the
    # same files: truncated data above all.
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        return "truncated or corrupt JPEG (does not decode)"
    return None


def pair_height(path: str) -> int:
    """The height of a pair file: the side of its square halves."""
    return jpeg_header(path)[0]


def scan_pairs(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split files into usable pairs, all of the first usable one's size, and skipped ones.

    Args:
        paths: Candidate files.

    Returns:
        `(good, skipped)`: good paths, and `(path, reason)` for the rest.
    """
    # Decoding releases the GIL: a thread per core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        reasons = list(pool.map(check_pair, paths))
    good = [p for p, r in zip(paths, reasons, strict=True) if r is None]
    skipped = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    if good:
        height = pair_height(good[0])
        sizes = [pair_height(p) for p in good]
        skipped += [
            (p, f"{2 * h}x{h}, not {2 * height}x{height} like the first pair")
            for p, h in zip(good, sizes, strict=True)
            if h != height
        ]
        good = [p for p, h in zip(good, sizes, strict=True) if h == height]
    return good, skipped


# A block carve holds out this many runs of neighbouring files: enough
# drives to average over, each long enough to leave its street out of
# training.
VAL_BLOCKS = 8


def split_train_val(files: list[str], val_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of one file list into disjoint train and validation lists.

    Validation is `VAL_BLOCKS` runs of neighbouring files (in natural order,
    which for Cityscapes is city and drive order), so its scenes are not
    next-door frames of training ones.

    Args:
        files: All files, in natural order.
        val_split: Share for validation, in (0, 1).
        seed: Seed of the draw.

    Returns:
        `(train, val)`, each in natural order; val holds at least one file and
        train at least one when there are two or more files.
    """
    n = len(files)
    n_val = min(max(1, round(n * val_split)), n - 1) if n > 1 else 0
    is_val = _block_mask(n, n_val, np.random.default_rng(seed))
    train = [f for f, v in zip(files, is_val, strict=True) if not v]
    val = [f for f, v in zip(files, is_val, strict=True) if v]
    return train, val


def _block_mask(n: int, n_val: int, rng: np.random.Generator) -> np.ndarray:
    # n_val validation files in k runs of near-equal length, placed in k
    # distinct gaps between the n - n_val training files (so no two runs
    # touch): a seeded draw of the gaps, then the runs laid out in order.
    k = min(VAL_BLOCKS, n_val, n - n_val + 1)
    lengths = [n_val // k + (i < n_val % k) for i in range(k)]
    gaps = np.sort(rng.choice(n - n_val + 1, size=k, replace=False))
    mask = np.zeros(n, bool)
    for i, (gap, length) in enumerate(zip(gaps.tolist(), lengths, strict=True)):
        start = gap + sum(lengths[:i])
        mask[start : start + length] = True
    return mask
