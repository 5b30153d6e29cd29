"""Score a trained model on pair files: per-class IoU, confusion matrix, report."""

from __future__ import annotations

import json
import os

import numpy as np

import utils_func as uf
from cityscapes_unet import io
from cityscapes_unet.data.files import display_name
from cityscapes_unet.data.source import resolve_eval_files
from cityscapes_unet.data.tf_pipeline import decode_pair
from cityscapes_unet.errors import UsageError
from cityscapes_unet.infer.engines import load_segmentation_model
from cityscapes_unet.infer.metrics import confusion_matrix, markdown_report, probabilities_to_ids, scores
from cityscapes_unet.plots import plot_confusion


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


def evaluate_files(model, files: list[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices of `model` over pair files, at two resolutions.

    Photos go through the training pipeline's decoding (area resize to the
    model's input size), and labels are decoded by nearest colour at their
    own size. The first matrix compares the argmax with the labels resized
    to the model's size by nearest neighbour: the figures training reports
    for the same split. The second compares with the labels at their own
    size, the model's scores resized bilinearly first (as `predict` does):
    no label is resampled, so it does not depend on how a nearest-neighbour
    resize picks its pixels.

    Args:
        model: Trained model with a square input.
        files: Pair files.
        batch_size: Batch size.

    Returns:
        `(cm_model_size, cm_label_size)`, each a `(19, 19)` confusion matrix.
    """
    import tensorflow as tf

    size = int(model.input_shape[1])

    def decode(path):
        photo, ids, full_ids = decode_pair(path, size, full_labels=True)
        return photo, ids, full_ids, tf.shape(full_ids)

    ds = tf.data.Dataset.from_tensor_slices(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Labels of different sizes batch together padded with the ignore value;
    # each prediction is resized to its own label's (height, width).
    ds = ds.ignore_errors(log_warning=True).padded_batch(
        batch_size, padding_values=(np.uint8(0), np.uint8(uf.IGNORE_ID), np.uint8(uf.IGNORE_ID), 0)
    )
    cm = np.zeros((uf.NUM_CLASSES, uf.NUM_CLASSES), np.int64)
    cm_full = np.zeros_like(cm)
    for photos, ids, full_ids, shapes in ds.prefetch(1):
        probs = model.predict(photos.numpy().astype(np.float32), batch_size=batch_size, verbose=0)
        cm += confusion_matrix(ids.numpy(), probs.argmax(-1))
        for p, full, (h, w) in zip(probs, full_ids.numpy(), shapes.numpy(), strict=True):
            cm_full += confusion_matrix(full[:h, :w], probabilities_to_ids(p, h, w))
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


def run_evaluate(model_path: str, data_dir: str | None, output_dir: str | None, batch_size: int = 16) -> dict:
    """Score a model and write its report; print the table.

    Args:
        model_path: `.keras` file.
        data_dir: Pairs to score, or None for the run's validation split.
        output_dir: Report folder; `<model folder>/eval` when None.
        batch_size: Batch size.

    Returns:
        The report dict.
    """

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")

    model = load_segmentation_model(model_path)
    files, source, skipped = resolve_eval_files(model_path, data_dir)
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(model_path)), "eval")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output-dir {out}: cannot write there ({e.strerror or e})") from None
    print(f"Scoring {model_path} on {len(files)} pairs: {source}")
    if skipped:
        io.atomic_write_text(
            os.path.join(out, "skipped.txt"), "".join(f"{display_name(p)}\t{why}\n" for p, why in skipped)
        )
        for p, why in skipped:
            print(f"  skipped {display_name(p)}: {why}")
    cm, cm_full = evaluate_files(model, files, batch_size)
    result = write_report(
        cm,
        out,
        {"model": model_path, "files": len(files), "source": source, "image_size": int(model.input_shape[1])},
        cm_full,
    )
    print(markdown_report(result, title=f"{os.path.basename(model_path)} on {len(files)} pairs"))
    print(f"Wrote {out}/report.json, report.md, confusion_matrix.png")
    return result
