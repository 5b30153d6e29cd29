"""CPU training speed: images per second of a training step, by model and precision.

Real pairs go through the project's pipeline (cached, so decoding is not
timed) into `model.fit`; the first epoch (tracing, XLA compilation, cache
fill) is not timed.

    python bench/train_speed.py --data-dir ../shared/data/cityscapes_pairs/train
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, image size, base filters, batch size)
MODELS = {
    "cpu-default": ("CPU default (96, 16 filters)", 96, 16, 8),
    "cpu-default-112": ("previous CPU default (112, 12 filters)", 112, 12, 8),
    "classic": ("classic UNet (256, 64 filters)", 256, 64, 4),
}
# Loss variants beyond --loss values: name -> CrossEntropyLovasz arguments.
LOSS_VARIANTS = {"ce_lovasz_sort2": {"stride": 2, "bins": None}}  # the exact sort, every second pixel
# (policy, XLA)
PRECISIONS = (("float32", False), ("float32", True), ("mixed_bfloat16", True), ("mixed_bfloat16", False))


class Timer:
    """Times every epoch after the first."""

    def __init__(self):
        import keras

        outer = self

        class _Cb(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if epoch:
                    outer.seconds.append(time.perf_counter() - outer.t0)

        self.callback = _Cb()
        self.seconds: list[float] = []


def measure(files, size, base, batch, policy, xla, steps, loss="ce"):
    """Training images/s of one model, precision and loss.

    Args:
        files: Pair files; the first `steps * batch` are used.
        size: Image side.
        base: Base filters of the UNet.
        batch: Batch size.
        policy: Keras mixed-precision policy.
        xla: Compile the step with XLA.
        steps: Steps per timed epoch.
        loss: A `--loss` value or a `LOSS_VARIANTS` key.

    Returns:
        Images per second of the fastest epoch after the first.
    """
    import keras
    import numpy as np

    from cityscapes_unet.data.tf_pipeline import make_dataset
    from cityscapes_unet.train import run
    from cityscapes_unet.train.config import TrainConfig
    from cityscapes_unet.train.losses import CrossEntropyLovasz

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    variant = LOSS_VARIANTS.get(loss)
    cfg = TrainConfig(
        image_size=size, base_filters=base, batch_size=batch, epochs=3, loss="ce_lovasz" if variant else loss
    )
    # A variant replaces the loss that build_and_compile picks (its module's
    # own name for make_loss).
    make_loss = run.make_loss
    if variant:
        run.make_loss = lambda weights, kind: CrossEntropyLovasz(list(weights), **variant)
    try:
        # Class weights, as in a default run (their values do not change the cost).
        model = run.build_and_compile(cfg, steps, np.ones(19, "float32"), jit_compile=xla)
    finally:
        run.make_loss = make_loss
    ds = make_dataset(files[: steps * batch], size, batch, training=True, seed=0)
    timer = Timer()
    model.fit(ds, epochs=3, verbose=0, callbacks=[timer.callback], shuffle=False)
    keras.mixed_precision.set_global_policy("float32")
    return steps * batch / min(timer.seconds)


def model_spec(key: str) -> tuple[str, int, int, int]:
    """A `MODELS` entry, or `SIZExFILTERS` (batch 8) for any other UNet size.

    Args:
        key: A `MODELS` key or `SIZExFILTERS`.

    Returns:
        `(name, image size, base filters, batch size)`.
    """
    if key in MODELS:
        return MODELS[key]
    size, sep, base = key.partition("x")
    if not (sep and size.isdigit() and base.isdigit()):
        raise SystemExit(f"error: --models: {key!r} is neither one of {', '.join(MODELS)} nor SIZExFILTERS")
    return f"UNet ({size}, {base} filters)", int(size), int(base), 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/cityscapes_pairs/train", help="folder of pair JPEGs")
    p.add_argument(
        "--models",
        default="cpu-default,classic",
        help=f"comma-separated: {', '.join(MODELS)}, or SIZExFILTERS (e.g. 128x24)",
    )
    p.add_argument("--steps", type=int, default=6, help="training steps per timed epoch")
    p.add_argument(
        "--precisions",
        default=",".join(f"{pol}:{'on' if xla else 'off'}" for pol, xla in PRECISIONS),
        help="comma-separated POLICY:XLA pairs, XLA on or off; the first is the base of the ratios",
    )
    p.add_argument(
        "--losses",
        default="ce",
        help=f"comma-separated --loss values (or {', '.join(LOSS_VARIANTS)}), timed for every model and precision",
    )
    args = p.parse_args()
    precisions = []
    for item in args.precisions.split(","):
        policy, _, xla = item.partition(":")
        if policy not in {pol for pol, _ in PRECISIONS} or xla not in ("on", "off"):
            p.error(f"--precisions: {item!r} is not POLICY:on or POLICY:off")
        precisions.append((policy, xla == "on"))

    from cityscapes_unet.startup import load_backend

    load_backend()  # without TensorFlow's CUDA-probe lines on a CPU machine
    from cityscapes_unet.data.files import list_images
    from cityscapes_unet.train.config import cpu_has_bf16_matmul

    files = list_images(args.data_dir)
    print(f"CPU: {os.cpu_count()} cores, bf16 matrix units: {cpu_has_bf16_matmul()}")
    print(
        f"{'model':40s} {'loss':16s} {'precision':15s} {'XLA':>4s} {'batch':>5s} {'img/s':>7s} {'vs first':>8s}"
    )
    for key in args.models.split(","):
        name, size, base, batch = model_spec(key)
        base_rate = None
        for loss in args.losses.split(","):
            for policy, xla in precisions:
                rate = measure(files, size, base, batch, policy, xla, args.steps, loss)
                base_rate = base_rate or rate
                print(
                    f"{name:40s} {loss:16s} {policy:15s} {'on' if xla else 'off':>4s} {batch:5d} {rate:7.2f} "
                    f"{rate / base_rate:7.2f}x"
                )


if __name__ == "__main__":
    main()
