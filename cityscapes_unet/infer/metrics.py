"""Segmentation scores from confusion matrices: IoU, accuracy, categories, report."""

from __future__ import annotations

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
    """Per-row IoU of a confusion matrix, NaN where a class has no pixel at all."""
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
        `(7, 7)` confusion matrix in the order of `uf.CATEGORIES`.
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


def markdown_report(result: dict, title: str = "Evaluation") -> str:
    """A table a person reads: the summary, then per-class and per-category IoU.

    Args:
        result: Scores as returned by `scores`, optionally with
            `label_resolution` (the same at the labels' own size) and
            `image_size`.
        title: Heading of the report.

    Returns:
        Markdown text, ending in a newline.
    """

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


def probabilities_to_ids(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Class ids at a photo's own size from the model's scores.

    Scores are resized bilinearly, then the argmax is taken: class ids
    themselves are never interpolated.

    Args:
        probs: float `(h, w, num_classes)` scores at the model's size.
        height: Photo height.
        width: Photo width.

    Returns:
        uint8 `(height, width)` trainIds.
    """
    import cv2

    probs = np.asarray(probs, np.float32)
    if probs.shape[:2] != (height, width):
        probs = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
    return probs.argmax(-1).astype(np.uint8)
