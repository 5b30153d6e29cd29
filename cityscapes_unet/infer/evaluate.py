"""Score a trained model on pair files: per-class IoU, confusion matrix, report."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import io
from cityscapes_unet.data.files import display_name
from cityscapes_unet.data.numpy_pipeline import decode_pair_np
from cityscapes_unet.data.source import resolve_eval_files
from cityscapes_unet.errors import UsageError
from cityscapes_unet.infer.engines import load_segmentation_model
from cityscapes_unet.infer.metrics import confusion_matrix, markdown_report, probabilities_to_ids, scores
from cityscapes_unet.infer.saved_model import with_tta
from cityscapes_unet.plots import plot_confusion
from cityscapes_unet.resize import area_resize, nearest_resize


def predict_ids(model, photos: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class ids predicted for a batch of photos.

    Args:
        model: A Keras model mapping RGB 0..255 to class scores.
        photos: `(N, H, W, 3)` photos at the model's input size.
        batch_size: Prediction batch size.

    Returns:
        uint8 array `(N, H, W)`.
    """
    probs = model.predict(np.asarray(photos, np.float32), batch_size=batch_size, verbose=0)
    return probs.argmax(-1).astype(np.uint8)


def _decode(path: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """A pair's photo and ids at the model's size, and its ids at their own; or why it cannot be decoded."""
    try:
        photo, full = decode_pair_np(path)
    except ValueError as e:
        return str(e)
    return area_resize(photo, size, size), nearest_resize(full, size, size), full


def decoded_batches(
    files: list[str], size: int, batch_size: int, workers: int | None = None
) -> Iterator[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Decode pair files in threads, a batch ahead of the one handed out.

    Undecodable files are left out with a warning (as tf.data's
    `ignore_errors` does), so a batch may hold fewer than `batch_size`.

    Args:
        files: Pair files.
        size: Side of the model's square input.
        batch_size: Files per batch.
        workers: Decoding threads; up to 8 by default.

    Yields:
        Lists of `(photo, ids, full_ids)`: float32 `(size, size, 3)`, uint8
        `(size, size)` and uint8 `(H, W)` at the label's own size, in file
        order; empty lists are not yielded.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(start: int) -> list[tuple[str, Future]]:
            return [(f, pool.submit(_decode, f, size)) for f in files[start : start + batch_size]]

        pending = submit(0)
        for start in range(0, len(files), batch_size):
            current, pending = pending, submit(start + batch_size)
            batch = []
            for path, future in current:
                result = future.result()
                if isinstance(result, str):
                    warnings.warn(f"skipped {display_name(path)}: {result}", stacklevel=2)
                else:
                    batch.append(result)
            if batch:
                yield batch


def evaluate_files(
    model, files: list[str], batch_size: int = 16, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices of `model` over pair files, at two resolutions.

    Photos and labels are decoded as training decodes them (`decode_pair_np`);
    a photo of another size than the model's input is area-resized to it
    (`resize.area_resize`), its labels picked by nearest neighbour. The
    first matrix compares the argmax with the labels resized to the model's
    size by nearest neighbour: the figures training reports for the same
    split. The second compares with the labels at their own size, the
    model's scores resized bilinearly first (as `predict` does): no label is
    resampled, so it does not depend on how a nearest-neighbour resize picks
    its pixels.

    Args:
        model: Trained model with a square input.
        files: Pair files.
        batch_size: Batch size.
        progress: Show a progress bar.

    Returns:
        `(cm_model_size, cm_label_size)`, each a `(19, 19)` confusion matrix.
    """
    size = int(model.input_shape[1])
    cm = np.zeros((uf.NUM_CLASSES, uf.NUM_CLASSES), np.int64)
    cm_full = np.zeros_like(cm)
    bar = keras.utils.Progbar(len(files), unit_name="pair") if progress else None
    done = 0
    for batch in decoded_batches(files, size, batch_size):
        photos, ids, full_ids = zip(*batch, strict=True)
        probs = model.predict(np.stack(photos).astype(np.float32), batch_size=batch_size, verbose=0)
        cm += confusion_matrix(np.stack(ids), probs.argmax(-1))
        for p, full in zip(probs, full_ids, strict=True):
            cm_full += confusion_matrix(full, probabilities_to_ids(p, *full.shape))
        done += len(batch)
        if bar is not None:
            bar.update(done)
    if bar is not None and done != len(files):  # files skipped: end the bar here
        bar.update(done, finalize=True)
    return cm, cm_full


def write_report(
    cm: np.ndarray, output_dir: str, meta: dict | None = None, cm_full: np.ndarray | None = None
) -> dict:
    """Write `report.json`, `report.md` and `confusion_matrix.png`.

    Args:
        cm: `(19, 19)` confusion matrix at the model's size; the per-class
            table and the picture show it.
        output_dir: Destination folder (created).
        meta: Extra fields for `report.json` (model, files, ...).
        cm_full: Optional `(19, 19)` confusion matrix at the labels' own
            size; its scores go under `label_resolution`.

    Returns:
        The scores (see `scores`), with `meta` merged in.
    """
    os.makedirs(output_dir, exist_ok=True)
    result = {**(meta or {}), **scores(cm), "confusion_matrix": cm.tolist()}
    if cm_full is not None:
        result["label_resolution"] = {**scores(cm_full), "confusion_matrix": cm_full.tolist()}
    io.atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(result, indent=2) + "\n")
    io.atomic_write_text(os.path.join(output_dir, "report.md"), markdown_report(result))
    plot_confusion(cm, os.path.join(output_dir, "confusion_matrix.png"))
    return result


def run_evaluate(
    model: str = "output/unet_model.keras",
    data_dir: str | None = None,
    output_dir: str | None = None,
    batch_size: int = 16,
    tta: str = "none",
) -> dict:
    """Score a model and write its report; print the table.

    Args:
        model: `.keras` file.
        data_dir: Pairs to score, or None for the run's validation split.
        output_dir: Report folder; `<model folder>/eval` when None.
        batch_size: Batch size.
        tta: Test-time averaging (`settings.TTAS`).

    Returns:
        The report dict: `scores` at the model's size, `label_resolution`
        (the same at the labels' own size), the confusion matrices and
        `model`, `files`, `source`, `image_size`.

    Raises:
        UsageError: For a bad model, data folder, batch size or output folder.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    model_path = model
    model = with_tta(load_segmentation_model(model_path), tta)
    files, source, skipped = resolve_eval_files(model_path, data_dir)
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(model_path)), "eval")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output-dir {out}: cannot write there ({e.strerror or e})") from None
    averaging = "" if tta == "none" else f" (test-time averaging: {tta})"
    print(f"Scoring {model_path}{averaging} on {len(files)} pairs: {source}")
    if skipped:
        io.atomic_write_text(
            os.path.join(out, "skipped.txt"), "".join(f"{display_name(p)}\t{why}\n" for p, why in skipped)
        )
        for p, why in skipped:
            print(f"  skipped {display_name(p)}: {why}")
    cm, cm_full = evaluate_files(model, files, batch_size, progress=len(files) >= 10)
    result = write_report(
        cm,
        out,
        {
            "model": model_path,
            "tta": tta,
            "files": len(files),
            "source": source,
            "image_size": int(model.input_shape[1]),
        },
        cm_full,
    )
    print(markdown_report(result, title=f"{os.path.basename(model_path)} on {len(files)} pairs"))
    print(f"Wrote {out}/report.json, report.md, confusion_matrix.png")
    return result
