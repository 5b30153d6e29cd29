"""Training callbacks: best-model checkpoint, history CSV, progress pictures."""

from __future__ import annotations

import math
import os

import keras
import numpy as np

import utils_func as uf


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Save a model to a temporary file beside `path`, then rename it.

    A crash mid-save leaves the earlier file as it was.

    Args:
        model: Model to save.
        path: Destination `.keras` path.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keep the model with the best validation mean IoU on disk, atomically.

    Args:
        path: Destination `.keras` file.
        monitor: Log key to maximise.
    """

    def __init__(self, path: str, monitor: str = "val_mean_iou"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value <= self.best:
            return
        save_model_atomic(self.model, self.path)
        print(
            f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.4f} to "
            f"{value:.4f}, saved {self.path}",
            flush=True,
        )
        self.best, self.best_epoch = float(value), epoch


HISTORY_KEYS = (
    "loss",
    "accuracy",
    "mean_iou",
    "val_loss",
    "val_accuracy",
    "val_mean_iou",
    "learning_rate",
)


class HistoryCSV(keras.callbacks.Callback):
    """Write `history.csv` after every epoch, atomically, with the learning rate.

    Args:
        path: Destination CSV.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rows.append({"epoch": epoch, **{k: logs.get(k, float("nan")) for k in HISTORY_KEYS}})
        lines = [",".join(("epoch",) + HISTORY_KEYS)]
        for r in self.rows:
            lines.append(",".join([str(r["epoch"])] + [f"{float(r[k]):.6g}" for k in HISTORY_KEYS]))
        uf.atomic_write_text(self.path, "\n".join(lines) + "\n")

    def columns(self) -> dict[str, list[float]]:
        """The history so far, as columns."""
        keys = ("epoch",) + HISTORY_KEYS
        return {k: [float(r[k]) for r in self.rows] for k in keys}


class ProgressPictures(keras.callbacks.Callback):
    """Predict a fixed set of samples before training and every N epochs.

    Writes `progress/epoch_XXX.png` (epoch 000 is before training) and, at
    the end of training, `progress.gif` with every picture as a frame. With
    `log_dir`, the pictures also go to TensorBoard (TensorFlow only).

    Args:
        photos: uint8 `(K, H, W, 3)` photos at the model's input size.
        truths: Class ids `(K, H, W)`.
        output_dir: Run folder; pictures go to `output_dir/progress/`.
        every: Draw every `every` epochs (the last epoch is always drawn).
        log_dir: TensorBoard folder for the images, or None.
    """

    def __init__(
        self,
        photos: np.ndarray,
        truths: np.ndarray,
        output_dir: str,
        every: int = 1,
        log_dir: str | None = None,
    ):
        super().__init__()
        self.photos = np.asarray(photos, np.uint8)
        self.truths = np.asarray(truths, np.uint8)
        self.folder = os.path.join(output_dir, "progress")
        self.gif_path = os.path.join(output_dir, "progress.gif")
        self.every = every
        self.log_dir = log_dir
        self.frames: list[str] = []
        self._epochs = None

    def _draw(self, epoch: int, logs: dict | None = None) -> None:
        pred = np.asarray(self.model.predict(self.photos.astype(np.float32), verbose=0)).argmax(-1)
        title = f"epoch {epoch}" if epoch else "before training"
        if logs and "val_mean_iou" in logs:
            title += f": validation mean IoU {float(logs['val_mean_iou']):.3f}"
        path = os.path.join(self.folder, f"epoch_{epoch:03d}.png")
        uf.save_panel_grid(path, list(zip(self.photos, self.truths, pred, strict=True)), title, dpi=72)
        self.frames.append(path)
        if self.log_dir:
            import tensorflow as tf

            image = tf.io.decode_png(tf.io.read_file(path), channels=3)[None]
            with tf.summary.create_file_writer(os.path.join(self.log_dir, "progress")).as_default():
                tf.summary.image("progress", image, step=epoch)

    def on_train_begin(self, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        self._epochs = self.params.get("epochs")
        self._draw(0)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self._epochs:
            self._draw(done, logs)

    def on_train_end(self, logs=None):
        write_gif(self.frames, self.gif_path)


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
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}.gif")
    try:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=durations, loop=0)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
