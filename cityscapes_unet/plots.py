"""Figures: training curves, photo | truth | prediction panels, confusion matrix, GIF.

Matplotlib is imported when a figure is drawn (Agg, no display needed);
every file is written atomically (`io.atomic_file`). The pictures drawn once
per input (`overlay`, `panel_image`) use NumPy and OpenCV only: they are
drawn at the rate a model predicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

import utils_func as uf
from cityscapes_unet import io
from utils_func import CLASSES, colorize

OVERLAY_ALPHA = 0.5  # share of the class colour in the overlay


def overlay(photo: np.ndarray, ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the class colours over the photo.

    Args:
        photo: uint8 `(H, W, 3)`.
        ids: Class ids `(H, W)`.
        alpha: Weight of the class colour.

    Returns:
        uint8 `(H, W, 3)`.
    """
    mixed = (1 - alpha) * photo.astype(np.float32) + alpha * colorize(ids).astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    """Black text with its baseline at `(x, y)` on an RGB canvas."""
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def panel_image(photo: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, title: str = "") -> np.ndarray:
    """Photo | ground truth | prediction side by side, a title above, a legend right.

    The picture `save_prediction_panel` draws, made with OpenCV in a
    fraction of the time: for `predict --pairs`, one per input.

    Args:
        photo: uint8 RGB `(H, W, 3)`.
        truth: Class ids `(H, W)` (IGNORE_ID shown black), or None to omit.
        pred: Predicted class ids `(H, W)`.
        title: Text of the title bar.

    Returns:
        uint8 RGB `(30 + max(H, legend), columns * (W + 4) + legend width, 3)`.
    """
    h, w = photo.shape[:2]
    columns = [photo] + ([colorize(truth)] if truth is not None else []) + [colorize(pred)]
    names = ["photo"] + (["ground truth (black: ignored)"] if truth is not None else []) + ["prediction"]
    top, gap, row, legend_w = 30, 4, 14, 130
    height = top + 20 + max(h, row * len(CLASSES))
    canvas = np.full((height, len(columns) * (w + gap) + legend_w, 3), 255, np.uint8)
    _text(canvas, title, gap, 20, 0.5)
    for i, (image, name) in enumerate(zip(columns, names, strict=True)):
        x = i * (w + gap) + gap // 2
        _text(canvas, name[: max(4, w // 7)], x, top + 14, 0.4)
        canvas[top + 20 : top + 20 + h, x : x + w] = image
    x = len(columns) * (w + gap) + gap
    for i, c in enumerate(CLASSES):
        y = top + 20 + i * row
        canvas[y + 2 : y + row - 2, x : x + 10] = c.color
        _text(canvas, c.name, x + 14, y + row - 3, 0.38)
    return canvas


def _save(fig, path: str) -> None:
    """Save a figure atomically (the format from `path`'s extension) and close it."""
    import matplotlib.pyplot as plt

    try:
        with io.atomic_file(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def plot_history(history: dict[str, Sequence[float]], output_dir: str) -> list[str]:
    """Plot train and validation curves: `acc.png`, `loss.png`, `miou.png`.

    Args:
        history: Columns as returned by `read_history` (keys such as
            `accuracy`, `val_accuracy`, `loss`, `val_loss`, `mean_iou`,
            `val_mean_iou`; `epoch` optional, 0-based).
        output_dir: Folder for the PNG files.

    Returns:
        Paths of the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max((len(v) for v in history.values()), default=0)
    epochs = [int(e) + 1 for e in history.get("epoch", range(n))]
    best = None
    if history.get("val_mean_iou"):
        best = int(np.nanargmax(history["val_mean_iou"]))
    written = []
    for key, title, fname in (
        ("accuracy", "Pixel accuracy (void excluded)", "acc.png"),
        ("loss", "Loss (void excluded)", "loss.png"),
        ("mean_iou", "Mean IoU over 19 classes (void excluded)", "miou.png"),
    ):
        if key not in history:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label="validation")
        if best is not None:
            ax.axvline(epochs[best], color="gray", ls="--", lw=1, label=f"best epoch ({epochs[best]})")
        ax.set_xlabel("epoch")
        if len(set(epochs)) == 1:
            # A single point leaves a span too short for whole-number ticks.
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(output_dir, fname)
        _save(fig, path)
        written.append(path)
    return written


def save_prediction_panel(
    path: str, photo: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, title: str = ""
) -> None:
    """Save a photo | ground truth | prediction panel with a class legend.

    Args:
        path: PNG destination.
        photo: uint8 RGB `(H, W, 3)`.
        truth: Class ids `(H, W)` (IGNORE_ID shown black), or None to omit.
        pred: Predicted class ids `(H, W)`.
        title: Figure title.
    """
    save_panel_grid(path, [(photo, truth, pred)], title)


def save_panel_grid(
    path: str,
    rows: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    title: str = "",
    dpi: int = 100,
) -> None:
    """Save rows of photo | ground truth | prediction with a class legend.

    Every call with the same number of rows and columns makes a figure of
    the same pixel size, so the pictures of one run can be frames of a GIF.

    Args:
        path: PNG destination.
        rows: `(photo uint8 (H, W, 3), truth ids (H, W) or None, prediction
            ids (H, W))` per row; truth None in every row omits that column.
        title: Figure title.
        dpi: Resolution.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with_truth = any(truth is not None for _, truth, _ in rows)
    names = ["photo"] + (["ground truth (black: ignored)"] if with_truth else []) + ["prediction"]
    n_rows, n_cols = len(rows), len(names)
    # Layout in inches, fixed: the same size and placement every call.
    cell, legend_w, top = (4.0 if n_rows == 1 else 3.2), 1.8, 0.9
    width, height = n_cols * cell + legend_w, n_rows * cell + top
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), dpi=dpi, squeeze=False)
    fig.subplots_adjust(
        left=0.01, right=(n_cols * cell) / width, bottom=0.01, top=1 - top / height, wspace=0.03, hspace=0.03
    )
    for r, (photo, truth, pred) in enumerate(rows):
        images = [photo] + ([colorize(truth) if truth is not None else None] if with_truth else [])
        images.append(colorize(pred))
        for c, img in enumerate(images):
            ax = axes[r, c]
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            if r == 0:
                ax.set_title(names[c], fontsize=11)
            ax.axis("off")
    handles = [Patch(color=np.array(c.color) / 255, label=c.name) for c in CLASSES]
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.15 / height, va="top")
    _save(fig, path)


def plot_confusion(cm: np.ndarray, path: str) -> None:
    """Save the row-normalised confusion matrix with class names on both axes.

    Args:
        cm: `(19, 19)` confusion matrix, rows true classes, columns predicted.
        path: PNG destination.
    """
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
    _save(fig, path)


def write_gif(frames: list[str], path: str, ms_per_frame: int = 700) -> str | None:
    """Write PNG frames as an endlessly looping GIF, the last frame held longer.

    Args:
        frames: PNG paths of equal size, in order.
        path: GIF destination.
        ms_per_frame: Display time of each frame.

    Returns:
        `path`, or None when there are no frames.
    """
    from PIL import Image

    if not frames:
        return None
    images = [Image.open(f).convert("RGB") for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [3 * ms_per_frame]
    with io.atomic_file(path) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
