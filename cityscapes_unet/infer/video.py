"""Predict on video: an overlay video at the source's frame rate and size.

Reads what OpenCV reads (mp4, avi, mov, mkv ...), frame by frame, runs the
model on batches of frames and writes `NAME_overlay.mp4`; with `frame_ids`,
also each frame's class ids as `NAME_ids/FRAME.png` (uint8 trainIds at the
frame's size, frames counted from 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import cv2
import keras
import numpy as np

from cityscapes_unet import plots
from cityscapes_unet.errors import InputError
from cityscapes_unet.infer.engines import Engine
from cityscapes_unet.infer.metrics import probabilities_to_ids
from cityscapes_unet.io import atomic_file, write_png
from cityscapes_unet.resize import area_resize

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# MPEG-4 Part 2: the codec every OpenCV build (pip wheels included) writes.
FOURCC = "mp4v"


def is_video(path: str) -> bool:
    """Whether `path` names a video file (by its suffix).

    Args:
        path: File path.

    Returns:
        True for the suffixes of `VIDEO_SUFFIXES`.
    """
    return path.lower().endswith(VIDEO_SUFFIXES)


def open_video(path: str) -> tuple[cv2.VideoCapture, float, int, int, int]:
    """Open a video for reading.

    Args:
        path: Video file.

    Returns:
        `(capture, fps, width, height, frame_count)`; the count is OpenCV's
        estimate from the container (0 when unknown).

    Raises:
        InputError: If OpenCV cannot open it or it has no frame size.
    """
    cap = cv2.VideoCapture(path)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not cap.isOpened() or width <= 0 or height <= 0:
        cap.release()
        raise InputError("not a video OpenCV can read")
    fps = cap.get(cv2.CAP_PROP_FPS)
    # A container without a rate gets the usual 25 frames per second.
    fps = fps if np.isfinite(fps) and fps > 0 else 25.0
    return cap, fps, width, height, max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))


def frame_batches(cap: cv2.VideoCapture, batch_size: int) -> Iterator[list[np.ndarray]]:
    """The frames of an open video as RGB uint8 `(H, W, 3)`, in lists of `batch_size`."""
    batch = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    runner: Engine, path: str, out_dir: str, stem: str, batch_size: int, frame_ids: bool = False
) -> int:
    """Segment every frame of a video and write the overlay video.

    Args:
        runner: The model.
        path: Video file.
        out_dir: Output folder.
        stem: Output name stem (`STEM_overlay.mp4`, `STEM_ids/`).
        batch_size: Frames per model call.
        frame_ids: Also write each frame's ids PNG.

    Returns:
        The number of frames written.

    Raises:
        InputError: If the video cannot be read, has no frame, or the
            overlay video cannot be written.
    """
    cap, fps, width, height, count = open_video(path)
    ids_dir = os.path.join(out_dir, f"{stem}_ids")
    if frame_ids:
        os.makedirs(ids_dir, exist_ok=True)
    bar = keras.utils.Progbar(count or None, unit_name="frame")
    size, written = runner.input_size, 0
    try:
        with atomic_file(os.path.join(out_dir, f"{stem}_overlay.mp4")) as tmp:
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
            if not writer.isOpened():
                raise InputError(f"cannot write an {FOURCC} video with this OpenCV build")
            for frames in frame_batches(cap, batch_size):
                x = np.stack([area_resize(f, size, size) for f in frames])
                for frame, probs in zip(frames, runner.predict(x), strict=True):
                    ids = probabilities_to_ids(probs, height, width)
                    writer.write(cv2.cvtColor(plots.overlay(frame, ids), cv2.COLOR_RGB2BGR))
                    written += 1
                    if frame_ids:
                        write_png(os.path.join(ids_dir, f"{written:06d}.png"), ids)
                bar.update(written)
            if written != count:  # the container's count was off: end the bar here
                bar.update(written, finalize=True)
            writer.release()
            if not written:
                raise InputError("no frame could be decoded")
    finally:
        cap.release()
    return written
