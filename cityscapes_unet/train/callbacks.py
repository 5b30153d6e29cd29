"""Training callbacks: best model, resume state, history, progress pictures.

Keras has callbacks for most of these jobs (`ModelCheckpoint`,
`BackupAndRestore`, `CSVLogger`, `TerminateOnNaN`); each one kept here says
in its docstring what the Keras one lacks.
"""

from __future__ import annotations

import glob
import json
import math
import os

import keras
import numpy as np

from cityscapes_unet import io, plots
from cityscapes_unet.errors import TrainingError
from cityscapes_unet.infer.metrics import probabilities_to_ids
from cityscapes_unet.train.distribute import portable_batchnorm, predict_padded


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Save a model to a temporary file beside `path`, then rename it.

    A crash or a failure mid-save (disk full, no permission) leaves the
    earlier file as it was.

    Args:
        model: Model to save.
        path: Destination `.keras` path.

    Raises:
        TrainingError: If the save fails; the earlier file is untouched.
    """
    try:
        with io.atomic_file(path) as tmp, portable_batchnorm(model):
            model.save(tmp)
    except Exception as e:  # noqa: BLE001 - any failure: say it, keep the old file
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        kept = "the earlier file is unchanged" if os.path.exists(path) else "nothing was written"
        raise TrainingError(f"could not save {path}: {why} ({kept})") from None


def weights_finite(model: keras.Model) -> bool:
    """Whether every weight of `model` is finite (no NaN, no infinity).

    Args:
        model: The model.

    Returns:
        True when no weight (batch norm statistics included) is NaN or
        infinite.
    """
    return all(np.isfinite(w).all() for w in model.get_weights())


def epoch_is_sound(model: keras.Model, logs: dict | None) -> bool:
    """Whether an epoch may be saved: a finite training loss and finite weights.

    A NaN batch leaves NaN weights, and validation on them still gives a
    finite (tiny) mean IoU; neither the best model nor the resume state may
    ever hold such weights.

    Args:
        model: The model at the end of the epoch.
        logs: The epoch's logs (`loss` is read, when there).

    Returns:
        True when the epoch may be saved.
    """
    loss = (logs or {}).get("loss")
    return (loss is None or math.isfinite(float(loss))) and weights_finite(model)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keep the model with the best validation mean IoU on disk, atomically.

    Not `keras.callbacks.ModelCheckpoint(save_best_only=True)`: it writes
    the file in place (a kill mid-save loses the best model), saves epochs
    with non-finite weights, and can save neither a transformed model
    (`to_save`) nor the score to resume from.

    An epoch is saved when its score beats the best so far and it is sound
    (`epoch_is_sound`); the file is replaced in one step
    (`save_model_atomic`) and `info_path` records its score and epoch.

    Args:
        path: Destination `.keras` file.
        monitor: Log key to maximise.
        to_save: Maps the training model to the model written, e.g.
            `saved_model.saved_model`; the training model itself
            when None.
    """

    def __init__(self, path: str, monitor: str = "val_mean_iou", to_save=None):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.to_save = to_save
        self.best = -math.inf
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value <= self.best:
            return
        if not epoch_is_sound(self.model, logs):
            return
        save_model_atomic(self.to_save(self.model) if self.to_save else self.model, self.path)
        print(
            f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.4f} to "
            f"{value:.4f}, saved {self.path}",
            flush=True,
        )
        self.best, self.best_epoch = float(value), epoch
        # What the file on disk is, for a resumed run.
        io.write_json(self.info_path(self.path), {"best": self.best, "epoch": epoch + 1})

    @staticmethod
    def info_path(path: str) -> str:
        """The JSON beside a best model that records its score and epoch.

        Args:
            path: The best model's `.keras` path.

        Returns:
            The same path with `.json` for its extension.
        """
        return os.path.splitext(path)[0] + ".json"

    def catch_up(self, model: keras.Model, row: dict) -> None:
        """Consider the epoch of a history row again, with its model.

        On resume: the run may have been killed after the resume state of
        its last epoch, before this callback's save of it.

        Args:
            model: The model as it was at the end of that epoch.
            row: Its `HistoryCSV` row (`epoch` 0-based, the logs).
        """
        epoch = int(row["epoch"])
        if self.best_epoch is not None and self.best_epoch >= epoch:
            return  # saved already (the history's rounded score must not count again)
        self.set_model(model)
        self.on_epoch_end(epoch, {k: v for k, v in row.items() if k != "epoch"})

    def restore(self) -> None:
        """Take the best score and epoch of the model already on disk.

        Without the model or its JSON the best stays unset: the first sound
        epoch is saved.
        """
        info = self.info_path(self.path)
        if os.path.isfile(self.path) and os.path.isfile(info):
            with open(info) as f:
                saved = json.load(f)
            self.best, self.best_epoch = float(saved["best"]), int(saved["epoch"]) - 1


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop at the first NaN or infinite training loss or weight, and say where.

    Not `keras.callbacks.TerminateOnNaN`: it checks the loss only, never the
    weights, and keeps no account of where training failed.

    The weights are checked at the end of each epoch: batch norm's moving
    statistics can overflow while the loss, computed on batch statistics,
    stays finite. After `fit`, `failed` holds a one-line account (`None`
    while all is well); the run then ends with an error, keeping the best
    model saved so far. Put it before the callbacks that save.
    """

    def __init__(self):
        super().__init__()
        self.failed: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed = (
                f"the training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}"
            )
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.failed is None and not weights_finite(self.model):
            self.failed = f"the weights became non-finite in epoch {epoch + 1}"
            self.model.stop_training = True


class ResumeState(keras.callbacks.Callback):
    """Save everything needed to continue a run after every epoch.

    Not `keras.callbacks.BackupAndRestore`: it overwrites its weights and
    then its epoch file in place (a kill between or during them leaves a
    mismatched or torn pair), backs up epochs with non-finite weights, and
    restores only inside `fit`, after the run has already been set up.

    `folder/epoch_XXX.keras` holds the model with its optimizer state (Adam
    moments, step count: the learning-rate schedule goes on from there);
    `folder/state.json` names the last complete one and is written after
    it, atomically, so a kill at any moment leaves a consistent pair. Older
    epoch files are removed once the state points past them. Put this
    callback after the history callback and before the best-model one (see
    `BestModelCheckpoint.catch_up`).

    Args:
        folder: Folder for the state.
    """

    STATE = "state.json"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        if not epoch_is_sound(self.model, logs):
            return  # the state keeps naming the last sound epoch
        os.makedirs(self.folder, exist_ok=True)
        name = f"epoch_{epoch + 1:03d}.keras"
        save_model_atomic(self.model, os.path.join(self.folder, name))
        io.write_json(os.path.join(self.folder, self.STATE), {"epochs_done": epoch + 1, "model": name})
        for old in glob.glob(os.path.join(self.folder, "epoch_*.keras")):
            if os.path.basename(old) != name:
                os.remove(old)

    @classmethod
    def load(cls, folder: str) -> tuple[int, str] | None:
        """The last complete epoch and its model file.

        Args:
            folder: The state folder.

        Returns:
            `(epochs_done, model_path)`, or None when there is no readable
            state or its model file is missing.
        """
        path = os.path.join(folder, cls.STATE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        model = os.path.join(folder, state["model"])
        if not os.path.isfile(model):
            return None
        return int(state["epochs_done"]), model


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

    Not `keras.callbacks.CSVLogger(append=True)`: it appends to the file in
    place (a kill mid-write leaves a torn row, and a resumed run keeps the
    rows of epochs it runs again) and takes its columns from the first
    epoch's logs, not a fixed set.

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
        io.atomic_write_text(self.path, "\n".join(lines) + "\n")

    def restore(self, epochs_done: int) -> None:
        """Take the rows of the first `epochs_done` epochs from the CSV on disk.

        Args:
            epochs_done: Epochs of the resumed run; later rows are dropped.
        """
        if os.path.isfile(self.path):
            history = io.read_history(self.path)
            n = len(history.get("epoch", []))
            self.rows = [
                {k: history[k][i] for k in ("epoch",) + HISTORY_KEYS if k in history}
                for i in range(n)
                if history["epoch"][i] < epochs_done
            ]
            self.rows = [{**r, "epoch": int(r["epoch"])} for r in self.rows]

    def columns(self) -> dict[str, list[float]]:
        """The history so far, as columns.

        Returns:
            `epoch` and each of `HISTORY_KEYS` -> one float per epoch.
        """
        keys = ("epoch",) + HISTORY_KEYS
        return {k: [float(r[k]) for r in self.rows] for k in keys}


class ProgressPictures(keras.callbacks.Callback):
    """Predict a fixed set of samples before training and every N epochs.

    Writes `progress/epoch_XXX.png` (epoch 000 is before training) and, at
    the end of training, `progress.gif` with every picture as a frame. With
    `log_dir`, the pictures also go to TensorBoard (TensorFlow only).

    The model's scores, at the size it trains at, are resized to the
    photos' (bilinearly; the argmax after), as the saved model does: every
    picture is at the photos' size, whatever size an epoch trains at.

    Args:
        photos: uint8 `(K, S, S, 3)` photos at the model's input size.
        truths: Class ids `(K, S, S)`.
        output_dir: Run folder; pictures go to `output_dir/progress/`.
        every: Draw every `every` epochs (the last epoch is always drawn).
        log_dir: TensorBoard folder for the images, or None.
        pad_to: Pad the prediction batch to a multiple of this (the
            replicas of JAX's data parallelism).
    """

    def __init__(
        self,
        photos: np.ndarray,
        truths: np.ndarray,
        output_dir: str,
        every: int = 1,
        log_dir: str | None = None,
        pad_to: int = 1,
    ):
        super().__init__()
        self.pad_to = pad_to
        self.photos = np.asarray(photos, np.uint8)
        self.truths = np.asarray(truths, np.uint8)
        self.folder = os.path.join(output_dir, "progress")
        self.gif_path = os.path.join(output_dir, "progress.gif")
        self.every = every
        self.log_dir = log_dir
        self.frames: list[str] = []
        self._epochs = None

    def _draw(self, epoch: int, logs: dict | None = None) -> None:
        scores = predict_padded(self.model, self.photos.astype(np.float32), self.pad_to)
        pred = [probabilities_to_ids(p, *t.shape) for p, t in zip(scores, self.truths, strict=True)]
        title = f"epoch {epoch}" if epoch else "before training"
        if logs and "val_mean_iou" in logs:
            title += f": validation mean IoU {float(logs['val_mean_iou']):.3f}"
        path = os.path.join(self.folder, f"epoch_{epoch:03d}.png")
        plots.save_panel_grid(path, list(zip(self.photos, self.truths, pred, strict=True)), title, dpi=72)
        self.frames.append(path)
        if self.log_dir:
            import tensorflow as tf

            image = tf.io.decode_png(tf.io.read_file(path), channels=3)[None]
            with tf.summary.create_file_writer(os.path.join(self.log_dir, "progress")).as_default():
                tf.summary.image("progress", image, step=epoch)

    def on_train_begin(self, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        self._epochs = self.params.get("epochs")
        if not self.frames:
            self._draw(0)

    def restore(self, epochs_done: int) -> None:
        """Reuse the pictures of the first `epochs_done` epochs already drawn.

        Args:
            epochs_done: Epochs of the resumed run; later pictures are not
                reused.
        """
        done = sorted(glob.glob(os.path.join(self.folder, "epoch_*.png")))
        self.frames = [f for f in done if int(os.path.basename(f)[6:9]) <= epochs_done]

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self._epochs:
            self._draw(done, logs)

    def on_train_end(self, logs=None):
        plots.write_gif(self.frames, self.gif_path)
