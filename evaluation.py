"""Score a trained model on pair files: per-class IoU, confusion matrix, report."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

import utils_func as uf


def confusion_matrix(
    true_ids: np.ndarray, pred_ids: np.ndarray, num_classes: int = uf.NUM_CLASSES
) -> np.ndarray:
    """Count (true, predicted) class pairs, leaving out ignored pixels.

    Args:
        true_ids: Integer array of any shape; values >= `num_classes` (the
            ignore value) are left out.
        pred_ids: Integer array of the same shape, values in 0..num_classes-1.
        num_classes: Number of classes.

    Returns:
        int64 array `(num_classes, num_classes)`: rows are true classes,
        columns predicted ones.
    """
    t = np.asarray(true_ids).ravel().astype(np.int64)
    p = np.asarray(pred_ids).ravel().astype(np.int64)
    keep = t < num_classes
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _iou(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        # NaN for a class neither present nor predicted: it does not count.
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def category_confusion(cm: np.ndarray) -> np.ndarray:
    """Merge a 19-class confusion matrix into the 7 Cityscapes categories.

    Args:
        cm: `(19, 19)` class confusion matrix.

    Returns:
        `(7, 7)` confusion matrix in the order of `utils_func.CATEGORIES`.
    """
    index = np.array([uf.CATEGORIES.index(c.category) for c in uf.CLASSES])
    merge = np.zeros((len(uf.CLASSES), len(uf.CATEGORIES)), np.int64)
    merge[np.arange(len(uf.CLASSES)), index] = 1
    return merge.T @ cm @ merge


def scores(cm: np.ndarray) -> dict:
    """Segmentation scores from a confusion matrix (void already left out).

    Args:
        cm: `(19, 19)` class confusion matrix.

    Returns:
        A dict with `mean_iou`, `pixel_accuracy`, `mean_class_accuracy`,
        `category_mean_iou`, `per_class` (name -> iou, accuracy, pixels) and
        `per_category` (name -> iou). Classes absent from both truth and
        prediction are left out of the means (their IoU is None).
    """
    iou = _iou(cm)
    truth = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(truth > 0, np.diag(cm) / np.maximum(truth, 1), np.nan)
    cat_iou = _iou(category_confusion(cm))

    def clean(v):
        return None if np.isnan(v) else round(float(v), 6)

    return {
        "mean_iou": clean(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "pixel_accuracy": clean(np.trace(cm) / cm.sum()) if cm.sum() else None,
        "mean_class_accuracy": clean(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        "category_mean_iou": clean(np.nanmean(cat_iou)) if np.isfinite(cat_iou).any() else None,
        "pixels": int(cm.sum()),
        "per_class": {
            c.name: {"iou": clean(iou[i]), "accuracy": clean(acc[i]), "pixels": int(truth[i])}
            for i, c in enumerate(uf.CLASSES)
        },
        "per_category": {name: clean(cat_iou[i]) for i, name in enumerate(uf.CATEGORIES)},
    }


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

    from data_pipeline import decode_pair
    from prediction import probabilities_to_ids

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


def markdown_report(result: dict, title: str = "Evaluation") -> str:
    """A table a person reads: per-class IoU and accuracy, then the summary."""

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    metrics = [
        ("mean IoU (19 classes)", "mean_iou"),
        ("pixel accuracy", "pixel_accuracy"),
        ("mean class accuracy", "mean_class_accuracy"),
        ("mean IoU (7 categories)", "category_mean_iou"),
    ]
    lines = [f"# {title}", ""]
    full = result.get("label_resolution")
    if full is None:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {label} | {fmt(result[key])} |" for label, key in metrics]
        lines += [f"| labelled pixels scored | {result['pixels']:,} |"]
    else:
        size = result.get("image_size", "model")
        lines += [
            f"| metric | at the model's size ({size}x{size}) | at the labels' own size |",
            "|---|---|---|",
        ]
        lines += [f"| {label} | {fmt(result[key])} | {fmt(full[key])} |" for label, key in metrics]
        lines += [f"| labelled pixels scored | {result['pixels']:,} | {full['pixels']:,} |"]
    # Per class and per category: at the model's size, plus the IoU at the
    # labels' own size when it was scored.
    extra = " | IoU at label size" if full else ""
    lines += [
        "",
        f"| class | IoU | accuracy | pixels{extra} |",
        "|---|---|---|---|" + ("---|" if full else ""),
    ]
    for name, r in result["per_class"].items():
        more = f" | {fmt(full['per_class'][name]['iou'])}" if full else ""
        lines.append(f"| {name} | {fmt(r['iou'])} | {fmt(r['accuracy'])} | {r['pixels']:,}{more} |")
    lines += ["", f"| category | IoU{extra} |", "|---|---|" + ("---|" if full else "")]
    for name, v in result["per_category"].items():
        more = f" | {fmt(full['per_category'][name])}" if full else ""
        lines.append(f"| {name} | {fmt(v)}{more} |")
    return "\n".join(lines) + "\n"


def plot_confusion(cm: np.ndarray, path: str) -> None:
    """Save the row-normalised confusion matrix with class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, np.maximum(rows, 1), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(10, 9), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(uf.CLASS_NAMES))
    ax.set_xticks(ticks, uf.CLASS_NAMES, rotation=60, ha="right")
    ax.set_yticks(ticks, uf.CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (each row sums to 1; void excluded)")
    for i in ticks:
        for j in ticks:
            if norm[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    uf.atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(result, indent=2) + "\n")
    uf.atomic_write_text(os.path.join(output_dir, "report.md"), markdown_report(result))
    plot_confusion(cm, os.path.join(output_dir, "confusion_matrix.png"))
    return result


def resolve_eval_files(model_path: str, data_dir: str | None) -> tuple[list[str], str, list[tuple[str, str]]]:
    """The files to score, where they come from, and the files skipped.

    Without `data_dir`: the validation split of the run that wrote the model,
    rebuilt from the `config.json` beside it (same folder, fraction, seed).
    With `data_dir`: `data_dir/val` when it exists, else every pair in
    `data_dir`.

    Returns:
        `(files, source, skipped)`: skipped lists `(path, reason)` of the
        unusable files, which are not scored.

    Raises:
        UsageError: When no usable pair is found.
    """
    from pair_files import list_images, scan_pairs
    from training import TrainConfig, UsageError, find_data

    if data_dir is None:
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
        if not os.path.isfile(cfg_path):
            raise UsageError(f"--model {model_path}: no config.json beside it; pass --data-dir")
        with open(cfg_path) as f:
            saved = json.load(f)
        fields = {k: saved[k] for k in TrainConfig.__dataclass_fields__ if k in saved}
        _, val, source, skipped = find_data(TrainConfig(**fields))
        # Those skipped from the folder the split comes from (a carved split's
        # pool, or the run's val/), not the training folder's.
        here = os.path.dirname(val[0])
        return (
            val,
            f"validation split of the run ({source})",
            [s for s in skipped if os.path.dirname(s[0]) == here],
        )
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir}: folder not found")
    folder = os.path.join(data_dir, "val") if os.path.isdir(os.path.join(data_dir, "val")) else data_dir
    good, skipped = scan_pairs(list_images(folder))
    if not good:
        raise UsageError(f"--data-dir {data_dir}: no usable pair in {folder}")
    return good, folder, skipped


def load_segmentation_model(path: str):
    """Load a `.keras` model for scoring, with a one-line error if unusable."""
    import keras

    from training import UsageError

    if os.path.isdir(path):
        raise UsageError(f"--model {path}: is a folder; pass the .keras file in it")
    if not os.path.isfile(path):
        raise UsageError(f"--model {path}: file not found")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise UsageError(f"--model {path}: not a whole .keras file (truncated, or not a zip archive)")
    try:
        # safe_mode stays on: a Lambda layer's Python code never runs on load.
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - any load failure is the file's fault
        msg = str(e).strip()
        if "Lambda" in msg and "safe_mode" in msg:
            raise UsageError(
                f"--model {path}: refused: it holds a Lambda layer, Python code that would run on loading "
                "(Keras' safe mode stays on; a model trained here has none)"
            ) from None
        first = msg.splitlines()[0] if msg else type(e).__name__
        raise UsageError(f"--model {path}: not a loadable Keras model ({first[:200]})") from None
    if not isinstance(model.inputs, list) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(
            f"--model {path}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs, expected 1 and 1"
        )
    in_shape = model.input_shape
    if len(in_shape) != 4 or in_shape[-1] != 3 or in_shape[1] is None or in_shape[1] != in_shape[2]:
        raise UsageError(f"--model {path}: input {in_shape}, expected a square RGB input (batch, S, S, 3)")
    shape = model.output_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != uf.NUM_CLASSES:
        raise UsageError(f"--model {path}: outputs {shape}, expected (batch, H, W, {uf.NUM_CLASSES})")
    return model


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
    from training import UsageError

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    from pair_files import display_name

    model = load_segmentation_model(model_path)
    files, source, skipped = resolve_eval_files(model_path, data_dir)
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(model_path)), "eval")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output-dir {out}: cannot write there ({e.strerror or e})") from None
    print(f"Scoring {model_path} on {len(files)} pairs: {source}")
    if skipped:
        uf.atomic_write_text(
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
