"""Time between the steps of Keras' `fit` on the project's tf.data pipelines.

Keras drops the training and validation iterators every epoch. With
tf.data's autotuning on, dropping one waits for the autotuning thread's
current sleep, while the CPU idles; the project's pipelines run with fixed
knobs (`tf_pipeline.FIXED_KNOBS`). This fits on real pairs with autotuning
on and off in alternating rounds and prints, per epoch, the time spent
outside the steps (iterator set-up and teardown, validation start) and the
time per step:

- `--model pause`: a one-layer model with a fixed pause after each step,
  standing in for the network (the gaps alone);
- `--model project`: the project's network and step as `main.py` builds it
  on this machine (do the fixed knobs cost the steps anything?).

    python bench/epoch_gaps.py --data-dir ../shared/data/cityscapes_pairs/train
    python bench/epoch_gaps.py --data-dir ../shared/data/cityscapes_pairs/train --model project
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that a dataset ignores `shuffle` and that one of unknown length ran out.
warnings.simplefilter("ignore", UserWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cityscapes_unet.startup import load_backend  # noqa: E402

load_backend()  # before the imports below load Keras: no CUDA-probe lines on a CPU machine

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cityscapes_unet.data.files import list_images  # noqa: E402
from cityscapes_unet.data.tf_pipeline import decoded_dataset, make_dataset  # noqa: E402
from cityscapes_unet.train.config import TrainConfig, resolve_config  # noqa: E402
from cityscapes_unet.train.run import build_and_compile  # noqa: E402
from utils_func import NUM_CLASSES  # noqa: E402


class StepClock(keras.callbacks.Callback):
    """Pauses after each training step; sums the time inside steps per epoch."""

    def __init__(self, pause: float):
        super().__init__()
        self.pause = pause
        # (epoch wall, outside the steps, inside the training and validation
        # steps per training step)
        self.rows: list[tuple[float, float, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.inside, self.steps = time.perf_counter(), 0.0, 0

    def _begin(self, batch, logs=None):
        self.step_start = time.perf_counter()

    def _end(self, batch, logs=None):
        self.inside += time.perf_counter() - self.step_start

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.pause)
        self._end(batch)
        self.steps += 1

    on_train_batch_begin = on_test_batch_begin = _begin
    on_test_batch_end = _end

    def on_epoch_end(self, epoch, logs=None):
        wall = time.perf_counter() - self.epoch_start
        self.rows.append((wall, wall - self.inside, self.inside / max(self.steps, 1)))


def pause_model(size: int, steps: int) -> keras.Model:
    """A one-layer model: its steps cost next to nothing."""
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(NUM_CLASSES, 1, activation="softmax")(inputs))
    model.compile("adam", "categorical_crossentropy")
    return model


def project_model(size: int, steps: int) -> keras.Model:
    """The project's network and step with this machine's CPU defaults at `size`."""
    cfg, policy, _ = resolve_config(TrainConfig(), on_gpu=False)
    keras.mixed_precision.set_global_policy(policy)
    cfg = dataclasses.replace(cfg, image_size=size)
    weights = np.ones(NUM_CLASSES, np.float32)
    return build_and_compile(cfg, steps, weights)


def fit_gaps(make_model, train, val, steps: int, epochs: int, pause: float, autotune: bool) -> list[tuple]:
    """Per-epoch `(wall, outside the steps, per step)` seconds of one fit.

    "Per step" is the time inside the training and validation steps over
    the number of training steps.

    Args:
        make_model: `pause_model` or `project_model` with the image side bound.
        train, val: Datasets from `make_dataset`.
        steps: Training steps per epoch.
        epochs: Epochs to fit.
        pause: Seconds of pause after each training step.
        autotune: Turn tf.data's autotuning back on for both datasets.
    """
    if autotune:
        options = tf.data.Options()
        options.autotune.enabled = True
        train, val = train.with_options(options), val.with_options(options)
    clock = StepClock(pause)
    make_model(steps).fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[clock])
    return clock.rows


def report(rows_by_setting: dict[bool, list[list[tuple]]]) -> None:
    """Mean gap and time per step after each fit's first epoch, per setting."""
    means = {}
    for autotune, fits in rows_by_setting.items():
        later = [row for rows in fits for row in rows[1:]]  # the first epoch builds the model
        means[autotune] = (sum(r[1] for r in later) / len(later), sum(r[2] for r in later) / len(later))
    (gap_on, step_on), (gap_off, step_off) = means[True], means[False]
    print(
        f"after the first epoch: outside the steps {gap_on:.2f} s an epoch with autotuning, {gap_off:.2f} s with fixed knobs"
    )
    print(
        f"time per step {1000 * step_on:.0f} ms with autotuning, {1000 * step_off:.0f} ms with fixed knobs ({step_off / step_on:.2f}x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder of pair files")
    p.add_argument("--model", choices=("pause", "project"), default="pause", help="what each step runs")
    p.add_argument("--files", type=int, default=480, help="training pairs (a quarter as many validate)")
    p.add_argument("--size", type=int, default=80, help="image side")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit")
    p.add_argument(
        "--pause", type=float, default=None, help="seconds of pause per step (default: 0.25 with pause)"
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both settings")
    args = p.parse_args()
    pause = args.pause if args.pause is not None else (0.25 if args.model == "pause" else 0.0)
    make = functools.partial(pause_model if args.model == "pause" else project_model, args.size)
    files = list_images(args.data_dir)
    train_files, val_files = files[: args.files], files[-(args.files // 4) :]
    train_dec, val_dec = decoded_dataset(train_files, args.size), decoded_dataset(val_files, args.size)
    for ds in (train_dec, val_dec):  # fill the caches before timing
        ds.reduce(0, lambda n, _: n + 1)
    train = make_dataset(train_dec, args.size, 8, training=True, seed=42, augment="none")
    val = make_dataset(val_dec, args.size, 8, training=False)
    steps = -(-len(train_files) // 8)
    fits = {True: [], False: []}
    for r in range(args.rounds):
        for autotune in (True, False):
            rows = fit_gaps(make, train, val, steps, args.epochs, pause, autotune)
            fits[autotune].append(rows)
            name = "autotuning " if autotune else "fixed knobs"
            gaps = ", ".join(f"{gap:.2f}" for _, gap, _ in rows)
            per_step = ", ".join(f"{1000 * t:.0f}" for _, _, t in rows)
            print(f"round {r + 1}, {name}: outside the steps {gaps} s; per step {per_step} ms", flush=True)
    report(fits)


if __name__ == "__main__":
    main()
