"""Predict: run a trained model on photos (or side-by-side pairs) of any size.

Needs only Keras, NumPy and OpenCV: no TensorFlow, so it works on every
Keras backend.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import plots
from cityscapes_unet.data.files import natural_key
from cityscapes_unet.errors import InputError, UsageError
from cityscapes_unet.infer.engines import Engine, load_engine
from cityscapes_unet.infer.metrics import confusion_matrix, probabilities_to_ids, scores
from cityscapes_unet.infer.video import VIDEO_SUFFIXES, is_video, predict_video
from cityscapes_unet.io import read_photo, split_pair, write_png
from cityscapes_unet.resize import area_resize

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# Threads that read inputs and encode outputs while the model runs: OpenCV's
# decoders and encoders release the GIL.
IO_WORKERS = 4


def collect_inputs(inputs: list[str]) -> list[str]:
    """Expand files and folders into a list of photo and video files.

    Folders contribute their JPEG, PNG and video files (not recursively), in
    natural order; files named directly are taken whatever their suffix.

    Args:
        inputs: Paths given on the command line.

    Returns:
        Input paths, each once.

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
                    if n.lower().endswith(PHOTO_SUFFIXES + VIDEO_SUFFIXES)
                    and os.path.isfile(os.path.join(path, n))
                ),
                key=natural_key,
            )
            if not found:
                raise UsageError(f"{path}: no .jpg, .jpeg, .png or video files in this folder")
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
    videos: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _read_input(path: str, stem: str, pairs: bool, size: int) -> tuple[_Input, np.ndarray] | str:
    """One input decoded, with the model's view of it; or why it cannot be read."""
    try:
        image = read_photo(path)
        photo, truth = split_pair(image) if pairs else (image, None)
    except InputError as e:
        return str(e)
    # The models' own area resize (their inside one resizes on from there).
    return _Input(path, stem, photo, truth), area_resize(photo, size, size)


def _write_outputs(item: _Input, probs: np.ndarray, out_dir: str) -> np.ndarray | None:
    """Write one input's ids, mask, overlay and (for pairs) panel.

    Returns:
        For pairs, the `(19, 19)` confusion matrix against its labels.
    """
    ids = probabilities_to_ids(probs, *item.photo.shape[:2])
    base = os.path.join(out_dir, item.stem)
    write_png(f"{base}_ids.png", ids)
    write_png(f"{base}_mask.png", uf.colorize(ids))
    write_png(f"{base}_overlay.png", plots.overlay(item.photo, ids))
    if item.truth is None:
        return None
    truth = item.truth
    valid = truth != uf.IGNORE_ID
    acc = float((ids[valid] == truth[valid]).mean()) if valid.any() else float("nan")
    title = f"{os.path.basename(item.path)}: pixel accuracy {acc:.3f}"
    write_png(f"{base}_panel.png", plots.panel_image(item.photo, truth, ids, title))
    return confusion_matrix(truth, ids)


def _collect(writes: list[Future], tally: _Tally, keep: int) -> list[Future]:
    """Count the finished writes, oldest first, until at most `keep` are pending."""
    while len(writes) > keep:
        cm = writes.pop(0).result()
        if cm is not None:
            tally.confusion += cm
        tally.written += 1
    return writes


def _predict_photos(
    runner: Engine,
    files: list[str],
    stems: list[str],
    out_dir: str,
    pairs: bool,
    batch_size: int,
    tally: _Tally,
) -> None:
    """Predict photos batch by batch: the next batch is read and the last one
    written in threads while the model runs; a progress bar for 10 or more."""
    bar = keras.utils.Progbar(len(files), unit_name="image") if len(files) >= 10 else None
    with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:

        def read(start: int) -> list[Future]:
            chunk = zip(files[start : start + batch_size], stems[start : start + batch_size], strict=True)
            return [pool.submit(_read_input, f, s, pairs, runner.input_size) for f, s in chunk]

        pending, writes = read(0), []
        for start in range(0, len(files), batch_size):
            current, pending = pending, read(start + batch_size)
            batch = []
            for f, future in zip(files[start : start + batch_size], current, strict=True):
                result = future.result()
                if isinstance(result, str):
                    tally.skipped.append((f, result))
                else:
                    batch.append(result)
            if batch:
                probs = runner.predict(np.stack([x for _, x in batch]).astype(np.float32))
                writes += [
                    pool.submit(_write_outputs, item, p, out_dir)
                    for (item, _), p in zip(batch, probs, strict=True)
                ]
            writes = _collect(writes, tally, keep=2 * batch_size)
            if bar is not None:
                bar.update(min(start + batch_size, len(files)))
        _collect(writes, tally, keep=0)


def _predict_all(
    runner: Engine, files: list[str], out_dir: str, pairs: bool, batch_size: int, frame_ids: bool
) -> _Tally:
    """Predict the photos, then each video; count what was written."""
    tally = _Tally()
    stems = _unique_stems(files)
    photos = [(f, s) for f, s in zip(files, stems, strict=True) if not is_video(f)]
    if photos:
        _predict_photos(runner, *map(list, zip(*photos, strict=True)), out_dir, pairs, batch_size, tally)
    for f, stem in zip(files, stems, strict=True):
        if is_video(f):
            print(f"{f}: writing {stem}_overlay.mp4")
            try:
                tally.frames += predict_video(runner, f, out_dir, stem, batch_size, frame_ids)
                tally.videos += 1
            except InputError as e:
                tally.skipped.append((f, str(e)))
    return tally


def _summarise(tally: _Tally, runner: Engine, out_dir: str, pairs: bool, seconds: float) -> tuple[dict, str]:
    """The summary dict of a `predict` call and the line that reports it."""
    written, skipped, size = tally.written, tally.skipped, runner.input_size
    summary = {
        "predicted": written,
        "videos": tally.videos,
        "frames": tally.frames,
        "skipped": len(skipped),
        "seconds": round(seconds, 2),
        "out_dir": out_dir,
        "model_input": size,
        "engine": runner.name,
        "precision": runner.precision,
    }
    noun = ("pair" if pairs else "photo") + ("s" if written != 1 else "")
    done = f"{written} {noun}"
    if tally.videos:
        done = f"{tally.frames} frames of {tally.videos} video{'s' if tally.videos != 1 else ''}" + (
            f" and {done}" if written else ""
        )
    rate = (written + tally.frames) / max(seconds, 1e-9)
    line = (
        f"Predicted {done} in {seconds:.1f} s ({rate:.1f}/s) at the model's {size}x{size} "
        f"({runner.name}, {runner.precision}), written to {out_dir}/"
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
    inputs: list[str],
    model: str = "output/unet_model.keras",
    engine: str = "auto",
    out: str = "output/predictions",
    pairs: bool = False,
    batch_size: int = 8,
    frame_ids: bool = False,
    tta: str = "none",
) -> dict:
    """Predict every input photo and video and write its class ids and overlay.

    For each photo `NAME`: `NAME_mask.png` (class colours), `NAME_overlay.png`
    (colours over the photo) and `NAME_ids.png` (uint8 trainIds, the photo's
    size). With `pairs`, the left half is the photo and the right half the
    colour label, and `NAME_panel.png` shows photo | ground truth |
    prediction; the summary then includes pixel accuracy and mean IoU. For
    each video `NAME`: `NAME_overlay.mp4` (see `video.predict_video`).

    Args:
        inputs: Photo files and folders.
        model: `.keras` model, or an OpenVINO `.xml`.
        engine: `auto`, `keras` or `openvino` (see `engines.load_engine`).
        out: Output folder.
        pairs: Treat inputs as side-by-side pairs.
        batch_size: Prediction batch size.
        frame_ids: For videos, also write each frame's ids PNG.
        tta: Test-time averaging (`settings.TTAS`), for a `.keras` model.

    Returns:
        Summary: `predicted` (photos), `videos`, `frames`, `skipped`, `seconds`, `out_dir`, `model_input`,
        `engine` and, for pairs, `mean_iou` and `pixel_accuracy`.

    Raises:
        UsageError: For a bad model, flag or input path, or no usable input.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    files = collect_inputs(inputs)
    runner = load_engine(model, engine, tta)
    out_dir = out
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None
    t0 = time.perf_counter()
    tally = _predict_all(runner, files, out_dir, pairs, batch_size, frame_ids)
    seconds = time.perf_counter() - t0
    for f, why in tally.skipped:
        print(f"skipped {f}: {why}")
    if not tally.written and not tally.videos:
        raise UsageError(f"no usable {'pair' if pairs else 'photo'} among {len(files)} input files")
    summary, line = _summarise(tally, runner, out_dir, pairs, seconds)
    print(line)
    return summary
