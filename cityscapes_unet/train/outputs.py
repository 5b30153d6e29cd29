"""The run folder: one run at a time, earlier runs kept whole, no stray temporaries."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import time

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import io, plots
from cityscapes_unet.data.files import display_name
from cityscapes_unet.errors import FolderInUse
from cityscapes_unet.train import distribute

MODEL_FILE = "unet_model.keras"
LOCK_FILE = ".lock"
#: Sub-folder where a new run moves the finished run it replaces.
EARLIER = "earlier"
#: What a run writes into its folder (names and patterns); nothing else is
#: moved or removed by the next run.
RUN_OUTPUTS = (
    MODEL_FILE,
    "unet_model.json",
    "config.json",
    "classes.json",
    "history.csv",
    "skipped.txt",
    "model_arch.png",
    "model_arch.txt",
    "acc.png",
    "loss.png",
    "miou.png",
    "pred_*.png",
    "progress",
    "progress.gif",
    "resume",
    "logs",
    "eval",
)


class RunLock:
    """An exclusive lock on a run folder for as long as this process runs.

    The lock is the operating system's (`flock`) on `folder/.lock`: it goes
    with the process, so a killed run never blocks the next one. The file
    names the holder's process id for the message of whoever is refused.

    Args:
        folder: Run folder (created when missing).

    Raises:
        FolderInUse: When another process holds the lock.
        OSError: When the folder cannot be created or written.
    """

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise FolderInUse(f"in use by process {holder}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Give the lock up (also done by the process ending)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_outputs(folder: str) -> list[str]:
    """Paths in `folder` that an earlier run wrote (see `RUN_OUTPUTS`)."""
    found = []
    for pattern in RUN_OUTPUTS:
        found += sorted(glob.glob(os.path.join(folder, pattern)))
    return found


def remove_temporaries(folder: str) -> int:
    """Remove what killed saves left in the run folder and its resume state.

    Only safe under the folder's `RunLock`.

    Returns:
        Number of files removed.
    """
    return sum(len(io.remove_temporaries(d)) for d in (folder, os.path.join(folder, "resume")))


def archive_run(folder: str) -> str | None:
    """Move the earlier run's outputs into `folder/earlier/<its date>/`, whole.

    Its model keeps its `config.json` beside it, so `evaluate` still scores
    it on its own validation split.

    Args:
        folder: Run folder.

    Returns:
        The sub-folder the earlier run went to, or None when there was none.
    """
    found = run_outputs(folder)
    if not found:
        return None
    dated = max(os.path.getmtime(p) for p in found)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(dated))
    dest = os.path.join(folder, EARLIER, stamp)
    n = 1
    while os.path.exists(dest):
        dest = os.path.join(folder, EARLIER, f"{stamp}-{n}")
        n += 1
    os.makedirs(dest)
    for path in found:
        os.replace(path, os.path.join(dest, os.path.basename(path)))
    return dest


def clear_run(folder: str) -> list[str]:
    """Remove the earlier run's outputs (`--overwrite`).

    Args:
        folder: Run folder.

    Returns:
        Names removed.
    """
    removed = []
    for path in run_outputs(folder):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(os.path.basename(path))
    return removed


def write_prediction_panels(
    model: keras.Model, samples: tuple[list[str], np.ndarray, np.ndarray], output_dir: str, pad_to: int = 1
) -> list[str]:
    """Predict validation samples and save photo | ground truth | prediction panels.

    Args:
        model: Trained model.
        samples: `(names, photos, ids)`: uint8 photos `(K, S, S, 3)` at the
            model's input size and their ids `(K, S, S)` at its output size
            (see `RunData.samples`).
        output_dir: Folder for `pred_1.png` ... `pred_K.png`.
        pad_to: Pad prediction batches to a multiple of this (JAX replicas).

    Returns:
        Paths written.
    """
    names, photos, truths = samples
    paths = []
    for i, (name, photo, ids) in enumerate(zip(names, photos, truths, strict=True), start=1):
        probs = distribute.predict_padded(model, photo[None].astype(np.float32), pad_to)[0]
        pred = probs.argmax(-1)
        valid = ids != uf.IGNORE_ID
        acc = float((pred[valid] == ids[valid]).mean()) if valid.any() else float("nan")
        path = os.path.join(output_dir, f"pred_{i}.png")
        plots.save_prediction_panel(path, photo, ids, pred, title=f"{name}: pixel accuracy {acc:.3f}")
        paths.append(path)
    return paths


def make_room(output_dir: str, overwrite: bool) -> None:
    """Move the earlier run in `output_dir` aside whole, or remove it (`overwrite`)."""
    if overwrite:
        removed = clear_run(output_dir)
        if removed:
            print(f"--overwrite: removed the earlier {', '.join(removed)} from {output_dir}")
        return
    kept = archive_run(output_dir)
    if kept:
        print(f"An earlier run was in {output_dir}: moved whole to {kept}")


def write_skipped(path: str, skipped: list[tuple[str, str]]) -> None:
    """Write `skipped.txt`: one `path<TAB>reason` line per unusable file."""
    io.atomic_write_text(path, "".join(f"{display_name(p)}\t{why}\n" for p, why in skipped))
