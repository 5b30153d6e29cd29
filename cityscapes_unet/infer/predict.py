"""Predict: run a trained model on photos (or side-by-side pairs) of any size.

Needs only Keras, NumPy and OpenCV: no TensorFlow, so it works on every
Keras backend.
"""

from __future__ import annotations

import os
import time

import numpy as np

import utils_func as uf
from cityscapes_unet import plots
from cityscapes_unet.data.files import natural_key
from cityscapes_unet.errors import InputError, UsageError
from cityscapes_unet.infer.engines import load_engine
from cityscapes_unet.infer.metrics import confusion_matrix, probabilities_to_ids, scores
from cityscapes_unet.io import read_photo, resize_photo, split_pair, write_png

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
OVERLAY_ALPHA = 0.5  # share of the class colour in the overlay


def collect_inputs(inputs: list[str]) -> list[str]:
    """Expand files and folders into a list of photo files.

    Folders contribute their JPEG and PNG files (not recursively), in
    natural order; files named directly are taken whatever their suffix.

    Args:
        inputs: Paths given on the command line.

    Returns:
        Photo paths, each once.

    Raises:
        UsageError: For a path that does not exist or a folder without photos.
    """

    files: list[str] = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                (
                    os.path.join(path, n)
                    for n in os.listdir(path)
                    if n.lower().endswith(PHOTO_SUFFIXES) and os.path.isfile(os.path.join(path, n))
                ),
                key=natural_key,
            )
            if not found:
                raise UsageError(f"{path}: no .jpg, .jpeg or .png files in this folder")
            files += found
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def overlay(photo: np.ndarray, ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the class colours over the photo.

    Args:
        photo: uint8 `(H, W, 3)`.
        ids: Class ids `(H, W)`.
        alpha: Weight of the class colour.

    Returns:
        uint8 `(H, W, 3)`.
    """
    mixed = (1 - alpha) * photo.astype(np.float32) + alpha * uf.colorize(ids).astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _unique_stems(files: list[str]) -> list[str]:
    """Output name stems, made unique when two inputs share a file name."""
    stems, used = [], {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        n = used.get(stem, 0)
        used[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}-{n + 1}")
    return stems


def run_predict(
    model_path: str,
    inputs: list[str],
    out_dir: str,
    pairs: bool = False,
    batch_size: int = 8,
    engine: str = "auto",
) -> dict:
    """Predict every input photo and write its mask, overlay and class ids.

    For each input `NAME`: `NAME_mask.png` (class colours), `NAME_overlay.png`
    (colours over the photo) and `NAME_ids.png` (uint8 trainIds, the photo's
    size). With `pairs`, the left half is the photo and the right half the
    colour label, and `NAME_panel.png` shows photo | ground truth |
    prediction; the summary then includes pixel accuracy and mean IoU.

    Args:
        model_path: `.keras` model.
        inputs: Photo files and folders.
        out_dir: Output folder.
        pairs: Treat inputs as side-by-side pairs.
        batch_size: Prediction batch size.
        engine: `auto`, `keras` or `openvino` (see `model_export.load_engine`).

    Returns:
        Summary: counts, seconds, skipped files and, for pairs, the scores.

    Raises:
        UsageError: For a bad model, flag or input path, or no usable input.
    """
    import keras

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    files = collect_inputs(inputs)
    runner = load_engine(model_path, engine)
    size = runner.input_size
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None

    t0 = time.perf_counter()
    bar = keras.utils.Progbar(len(files), unit_name="image") if len(files) >= 10 else None
    cm = np.zeros((uf.NUM_CLASSES, uf.NUM_CLASSES), np.int64)
    skipped: list[tuple[str, str]] = []
    written = 0
    stems = _unique_stems(files)
    for start in range(0, len(files), batch_size):
        batch = []  # (stem, photo, truth or None)
        for f, stem in zip(files[start : start + batch_size], stems[start : start + batch_size], strict=True):
            try:
                image = read_photo(f)
                photo, truth = split_pair(image) if pairs else (image, None)
                batch.append((f, stem, photo, truth))
            except InputError as e:
                skipped.append((f, str(e)))
        if batch:
            x = np.stack([resize_photo(photo, size) for _, _, photo, _ in batch]).astype(np.float32)
            probs = runner.predict(x)
            for (f, stem, photo, truth), p in zip(batch, probs, strict=True):
                ids = probabilities_to_ids(p, *photo.shape[:2])
                base = os.path.join(out_dir, stem)
                write_png(f"{base}_ids.png", ids)
                write_png(f"{base}_mask.png", uf.colorize(ids))
                write_png(f"{base}_overlay.png", overlay(photo, ids))
                if truth is not None:
                    cm += confusion_matrix(truth, ids)
                    valid = truth != uf.IGNORE_ID
                    acc = float((ids[valid] == truth[valid]).mean()) if valid.any() else float("nan")
                    plots.save_prediction_panel(
                        f"{base}_panel.png",
                        photo,
                        truth,
                        ids,
                        title=f"{os.path.basename(f)}: pixel accuracy {acc:.3f}",
                    )
                written += 1
        if bar is not None:
            bar.update(min(start + batch_size, len(files)))
    seconds = time.perf_counter() - t0

    for f, why in skipped:
        print(f"skipped {f}: {why}")
    if not written:
        raise UsageError(f"no usable {'pair' if pairs else 'photo'} among {len(files)} input files")
    summary = {
        "predicted": written,
        "skipped": len(skipped),
        "seconds": round(seconds, 2),
        "out_dir": out_dir,
        "model_input": size,
        "engine": runner.name,
    }
    noun = ("pair" if pairs else "photo") + ("s" if written != 1 else "")
    line = (
        f"Predicted {written} {noun} in {seconds:.1f} s "
        f"({written / max(seconds, 1e-9):.1f}/s) at the model's {size}x{size} ({runner.name}), written to {out_dir}/"
    )
    if skipped:
        line += f"; skipped {len(skipped)}"
    if pairs and cm.sum():
        s = scores(cm)
        summary.update(mean_iou=s["mean_iou"], pixel_accuracy=s["pixel_accuracy"])
        line += (
            f"; against the labels: mean IoU {s['mean_iou']:.4f}, pixel accuracy {s['pixel_accuracy']:.4f}"
        )
    print(line)
    return summary
