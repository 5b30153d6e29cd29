"""Predict: run a trained model on photos (or side-by-side pairs) of any size.

Needs only Keras, NumPy and OpenCV: no TensorFlow, so it works on every
Keras backend.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import plots
from cityscapes_unet.data.files import natural_key
from cityscapes_unet.data.numpy_pipeline import resize_area
from cityscapes_unet.errors import InputError, UsageError
from cityscapes_unet.infer.engines import Engine, load_engine
from cityscapes_unet.infer.metrics import confusion_matrix, probabilities_to_ids, scores
from cityscapes_unet.io import read_photo, split_pair, write_png

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


@dataclass
class _Input:
    """One decoded input: its file, output stem, photo and (for pairs) label ids."""

    path: str
    stem: str
    photo: np.ndarray
    truth: np.ndarray | None


@dataclass
class _Tally:
    """What a `predict` call has done so far."""

    confusion: np.ndarray = field(
        default_factory=lambda: np.zeros((uf.NUM_CLASSES, uf.NUM_CLASSES), np.int64)
    )
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _read_inputs(files: list[str], stems: list[str], pairs: bool, tally: _Tally) -> list[_Input]:
    """Decode a batch of inputs; those that cannot be read go to `tally.skipped`."""
    batch = []
    for f, stem in zip(files, stems, strict=True):
        try:
            image = read_photo(f)
            photo, truth = split_pair(image) if pairs else (image, None)
            batch.append(_Input(f, stem, photo, truth))
        except InputError as e:
            tally.skipped.append((f, str(e)))
    return batch


def _write_outputs(item: _Input, probs: np.ndarray, out_dir: str, tally: _Tally) -> None:
    """Write one input's ids, mask, overlay and (for pairs) panel; count its pixels."""
    ids = probabilities_to_ids(probs, *item.photo.shape[:2])
    base = os.path.join(out_dir, item.stem)
    write_png(f"{base}_ids.png", ids)
    write_png(f"{base}_mask.png", uf.colorize(ids))
    write_png(f"{base}_overlay.png", overlay(item.photo, ids))
    if item.truth is not None:
        truth = item.truth
        tally.confusion += confusion_matrix(truth, ids)
        valid = truth != uf.IGNORE_ID
        acc = float((ids[valid] == truth[valid]).mean()) if valid.any() else float("nan")
        plots.save_prediction_panel(
            f"{base}_panel.png",
            item.photo,
            truth,
            ids,
            title=f"{os.path.basename(item.path)}: pixel accuracy {acc:.3f}",
        )
    tally.written += 1


def _predict_all(runner: Engine, files: list[str], out_dir: str, pairs: bool, batch_size: int) -> _Tally:
    """Predict the files batch by batch and write their outputs, with a progress bar for 10 or more."""
    size = runner.input_size
    bar = keras.utils.Progbar(len(files), unit_name="image") if len(files) >= 10 else None
    tally = _Tally()
    stems = _unique_stems(files)
    for start in range(0, len(files), batch_size):
        end = start + batch_size
        batch = _read_inputs(files[start:end], stems[start:end], pairs, tally)
        if batch:
            # The area resize of the training pipeline, bit for bit.
            x = np.stack([resize_area(item.photo, size, size) for item in batch]).astype(np.float32)
            for item, probs in zip(batch, runner.predict(x), strict=True):
                _write_outputs(item, probs, out_dir, tally)
        if bar is not None:
            bar.update(min(end, len(files)))
    return tally


def _summarise(tally: _Tally, runner: Engine, out_dir: str, pairs: bool, seconds: float) -> tuple[dict, str]:
    """The summary dict of a `predict` call and the line that reports it."""
    written, skipped, size = tally.written, tally.skipped, runner.input_size
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
    if pairs and tally.confusion.sum():
        s = scores(tally.confusion)
        summary.update(mean_iou=s["mean_iou"], pixel_accuracy=s["pixel_accuracy"])
        line += (
            f"; against the labels: mean IoU {s['mean_iou']:.4f}, pixel accuracy {s['pixel_accuracy']:.4f}"
        )
    return summary, line


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
        model_path: `.keras` model, or an OpenVINO `.xml`.
        inputs: Photo files and folders.
        out_dir: Output folder.
        pairs: Treat inputs as side-by-side pairs.
        batch_size: Prediction batch size.
        engine: `auto`, `keras` or `openvino` (see `engines.load_engine`).

    Returns:
        Summary: `predicted`, `skipped`, `seconds`, `out_dir`, `model_input`,
        `engine` and, for pairs, `mean_iou` and `pixel_accuracy`.

    Raises:
        UsageError: For a bad model, flag or input path, or no usable input.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    files = collect_inputs(inputs)
    runner = load_engine(model_path, engine)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None
    t0 = time.perf_counter()
    tally = _predict_all(runner, files, out_dir, pairs, batch_size)
    seconds = time.perf_counter() - t0
    for f, why in tally.skipped:
        print(f"skipped {f}: {why}")
    if not tally.written:
        raise UsageError(f"no usable {'pair' if pairs else 'photo'} among {len(files)} input files")
    summary, line = _summarise(tally, runner, out_dir, pairs, seconds)
    print(line)
    return summary
