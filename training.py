"""Training: configuration, precision, callbacks and the end-to-end run."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import keras
import numpy as np

import data_source
import distribute
import losses  # noqa: F401 - registers CrossEntropyDice, for --resume of such runs
import utils_func as uf
from callbacks import (
    BestModelCheckpoint,
    HistoryCSV,
    Interrupted,
    ProgressPictures,
    ResumeState,
    StopOnNonFinite,
    TrainingError,
)
from distribute import DISTRIBUTE
from model_arch import get_model_arch
from pair_files import display_name, list_images, scan_pairs, split_train_val
from run_folder import LOCK_FILE, MODEL_FILE, FolderInUse, RunLock, archive_run, clear_run, remove_temporaries
from segmentation_model import (
    build_encoder_unet,
    build_unet,
    inference_model,
    tta_sizes,
    widths_from_base,
)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("auto", "none")
SCHEDULES = ("cosine", "constant", "plateau")
LOSSES = ("ce", "ce_dice", "ce_lovasz", "focal")
TTAS = ("none", "flip", "scales")
BLOCKS = ("plain", "residual")
XLA_MODES = ("auto", "on", "off")
ENCODERS = ("unet", "resnet50", "efficientnetb0")
DEPTH = 4  # down-sampling levels of the UNet

# Defaults by machine. On 2 CPU cores a training step of the UNet runs at
# about 14 images/s at 128x128 with 16 base filters and 17-20 with 12; a
# full epoch with validation took 155-200 s at 128x128 / 12 (shared machines
# vary), too close to the 30-minute budget for 10 epochs over the 2975
# pairs. 96x96 with 16 filters costs about what 112x112 with 12 did (epochs
# of 141-144 s on a quiet machine, both) and learned more in the same 10
# epochs (validation mean IoU 0.346 against 0.337; 0.340 against 0.334 at
# the labels' 256x256; with another seed 0.340 against 0.329): wider
# levels buy more than the extra resolution.
# A GPU takes the classic UNet at the data's 256x256. On CPU, batches of 8
# learn more per epoch than 16 at the same speed per image: twice the steps
# in a short run (3-epoch validation mean IoU 0.269 vs 0.246; batches of 4
# did worse again).
#
# The 10-epoch CPU runs underfit (training and validation scores equal), so
# they train without the flip: on the bf16 default it cost 0.010 validation
# mean IoU at 96x96 (0.385 against 0.395; 0.384 against 0.393 at 256x256
# with the flip at test time), and 0.005 on the 112x112 12-filter default
# on the AVX2 CPU (README, Measured). A GPU's longer runs keep it.
#
# Residual conv blocks (`segmentation_model.conv_block`) on the bf16 CPU
# default: 0.420 mean IoU and 0.879 pixel accuracy at 256x256 against 0.401
# and 0.875 with plain blocks (both saved with `--logit-adjust 0.25`), in
# the same 10 epochs and about the same time (25.1 and 26.5 min against
# 24.8 on a host whose load varies; README, Measured). The float32 CPU default keeps
# plain blocks: the residual ones were not timed there, and its run has
# less of the 30 minutes to spare (about 27 min).
CPU_DEFAULTS = {"image_size": 96, "base_filters": 16, "batch_size": 8, "augment": "none", "block": "plain"}
# A CPU with bf16 matrix units (AMX) running mixed_bfloat16 (what `auto`
# picks there) trains the UNet 1.2-1.9x as fast as float32 with XLA
# (BENCHMARKS.md, machine B): 10 epochs at 96x96 with 24 filters took
# 22.9-25.1 min on 2 such cores (README, Measured).
CPU_BF16_DEFAULTS = {
    "image_size": 96,
    "base_filters": 24,
    "batch_size": 8,
    "augment": "none",
    "block": "residual",
}
# The classic UNet (plain conv blocks) on a GPU: the residual blocks were
# measured on the 10-epoch CPU run only (README, Measured).
GPU_DEFAULTS = {"image_size": 256, "base_filters": 64, "batch_size": 16, "augment": "flip", "block": "plain"}

# --autosize: UNet sizes (image size, base filters) in order of cost per
# image. The first is the CPU default, measured on 2 AVX2 cores; the others
# are for CPUs faster than that one (bf16 matrix units make a step several
# times faster), where the default would leave most of the budget unused.
# Width before resolution: at the same cost 16 filters at 96x96 learned
# more than 12 at 112x112 (README, Measured).
AUTOSIZE_MODES = ("auto", "on", "off")
AUTOSIZE_LADDER = ((96, 16), (96, 24), (128, 24), (128, 32), (160, 32), (192, 32))
# A larger size is taken only if the whole run is projected to take at most
# this long: the 30-minute goal keeps a margin for a busy machine.
AUTOSIZE_BUDGET_S = 25 * 60
# Timed training steps per size; the two before them (build, trace) are not.
AUTOSIZE_STEPS = 6


class UsageError(ValueError):
    """A bad flag or input; the message is one line naming it."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json`.

    None means "choose for this machine" (see `resolve_config`).
    """

    data_dir: str = "images"
    output_dir: str = "output"
    epochs: int = 10
    batch_size: int | None = None
    image_size: int | None = None
    base_filters: int | None = None
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    early_stop: int = 0
    val_split: float = 0.15
    seed: int = 42
    precision: str = "auto"
    augment: str | None = None
    block: str | None = None
    tta: str = "scales"
    logit_adjust: float = 0.3
    class_weights: str = "auto"
    loss: str = "ce_lovasz"
    xla: str = "auto"
    encoder: str = "unet"
    encoder_weights: str = "imagenet"
    limit: int | None = None
    num_preds: int = 4
    progress_every: int = 1
    num_progress: int = 4
    tensorboard: bool = False
    distribute: str = "none"
    cpu_replicas: int = 1
    dataset: str = "pairs"
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None
    pipeline: str = "auto"
    autosize: str = "off"


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def cpu_has_bf16_matmul() -> bool:
    """Whether the CPU has bf16 matrix units (AMX) or AVX-512 BF16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str, on_gpu: bool) -> tuple[str, str]:
    """Pick the mixed-precision policy.

    Args:
        requested: One of `PRECISIONS`.
        on_gpu: Whether a GPU is visible.

    Returns:
        `(policy, reason)`.
    """
    if requested != "auto":
        return requested, "as requested"
    if on_gpu:
        return "mixed_float16", "GPU visible: float16 tensor cores, dynamic loss scaling"
    if cpu_has_bf16_matmul():
        return "mixed_bfloat16", "CPU with bf16 matrix units (AMX / AVX-512 BF16)"
    return "float32", "CPU without bf16 matrix units: bfloat16 would be slower here"


def resolve_xla(
    mode: str, on_gpu: bool, policy: str = "float32", bf16_units: bool = False, cpu_replicas: int = 1
) -> bool | str:
    """The `jit_compile` argument of `Model.compile` for `--xla MODE`.

    Keras' own "auto" leaves XLA off on a CPU-only TensorFlow. Here `auto`
    turns it on for a CPU in two cases measured on 2 AVX2 cores
    (`bench/train_speed.py`): float32, 1.35x faster with XLA; and bfloat16
    without bf16 matrix units, 7x slower without XLA. A CPU with bf16 units
    running `mixed_bfloat16` keeps TensorFlow's own kernels (oneDNN uses
    the units directly; XLA's CPU code has not been measured there).

    Args:
        mode: `auto`, `on` or `off`.
        on_gpu: Whether a GPU is visible.
        policy: The dtype policy in use.
        bf16_units: Whether the CPU has bf16 matrix units.
        cpu_replicas: Replicas of a TensorFlow strategy over logical CPU
            devices (`--cpu-replicas`). XLA cannot run those: a compiled
            step reaches a variable of another replica's device and fails
            (XLA's known issue "tf.Variable on a different device").

    Returns:
        True, False or "auto" (Keras decides).

    Raises:
        UsageError: For `on` with several CPU replicas.
    """
    cpu_split = not on_gpu and cpu_replicas > 1 and keras.backend.backend() == "tensorflow"
    if mode == "on" and cpu_split:
        raise UsageError(
            f"--xla on: XLA cannot compile a step over {cpu_replicas} CPU replicas (--cpu-replicas); "
            "use --xla auto or off"
        )
    if mode != "auto":
        return mode == "on"
    if cpu_split:
        return False
    if on_gpu or keras.backend.backend() != "tensorflow":
        return "auto"
    if policy == "mixed_bfloat16" and bf16_units:
        return "auto"
    return True


def projected_run_seconds(rate: float, n_train: int, n_val: int, epochs: int) -> float:
    """Wall time of a training run projected from the speed of its training step.

    A validation image costs about a third of a training one (forward only);
    about 3 minutes go to decoding, compilation and the final outputs. With
    the CPU default's 18.8 images/s this projects 26.7 min for the 10-epoch
    run on 2529 + 446 pairs, which took 26.5 min (README, Measured).

    Args:
        rate: Training images per second.
        n_train: Training samples per epoch.
        n_val: Validation samples per epoch.
        epochs: Epochs.

    Returns:
        Projected seconds.
    """
    return epochs * (n_train + n_val / 3) / rate + 180.0


def measure_step_rate(
    image_size: int,
    base_filters: int,
    batch_size: int,
    jit_compile: bool | str,
    loss: str = "ce",
    steps: int = AUTOSIZE_STEPS,
) -> float:
    """Training images per second of the UNet of this size, on random batches.

    Under the global dtype policy, with the run's loss and per-pixel sample
    weights, as in training (the Lovasz term costs up to a third of a
    step without XLA). The first two steps (building, tracing, compiling)
    are not timed.

    Args:
        image_size: Side of the square input.
        base_filters: First UNet width.
        batch_size: Batch size.
        jit_compile: `Model.compile`'s argument.
        loss: One of `LOSSES`.
        steps: Timed steps.

    Returns:
        Images per second.
    """
    model = build_unet(image_size, uf.NUM_CLASSES, widths_from_base(base_filters, DEPTH))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=make_loss(np.ones(uf.NUM_CLASSES, "float32"), loss),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype("float32")
    y = np.eye(uf.NUM_CLASSES, dtype="float32")[rng.integers(0, uf.NUM_CLASSES, x.shape[:3])]
    w = np.ones(x.shape[:3], "float32")
    for _ in range(2):
        model.train_on_batch(x, y, sample_weight=w)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y, sample_weight=w)
    return steps * batch_size / (time.perf_counter() - t0)


def choose_autosize(
    n_train: int,
    n_val: int,
    epochs: int,
    batch_size: int,
    jit_compile: bool | str,
    measure=measure_step_rate,
    ladder: tuple[tuple[int, int], ...] = AUTOSIZE_LADDER,
    budget_s: float = AUTOSIZE_BUDGET_S,
) -> tuple[tuple[int, int], list[str]]:
    """The largest UNet size of `ladder` whose run fits the budget on this machine.

    Measures the sizes in order and stops at the first that does not fit;
    the first size is kept even when it does not fit (it is the measured
    default).

    Args:
        n_train: Training samples per epoch.
        n_val: Validation samples per epoch.
        epochs: Epochs of the run.
        batch_size: Batch size.
        jit_compile: `Model.compile`'s argument.
        measure: `measure_step_rate` or a stand-in with its signature.
        ladder: `(image_size, base_filters)` pairs in order of cost.
        budget_s: Longest projected run, in seconds.

    Returns:
        `((image_size, base_filters), lines)`: the choice, and one line per
        measured size.
    """
    chosen, lines = ladder[0], []
    for size, filters in ladder:
        rate = measure(size, filters, batch_size, jit_compile)
        minutes = projected_run_seconds(rate, n_train, n_val, epochs) / 60
        fits = minutes <= budget_s / 60
        over = "" if fits else f" (over {budget_s / 60:.0f} min)"
        lines.append(
            f"{size}x{size}, {filters} filters: {rate:.1f} images/s, {epochs} epochs in about {minutes:.0f} min{over}"
        )
        if not fits:
            break
        chosen = (size, filters)
    return chosen, lines


def validate_config(cfg: TrainConfig) -> None:
    """Raise `UsageError` naming the first flag whose value cannot work."""
    checks = [
        (cfg.epochs >= 1, "--epochs", cfg.epochs, "must be at least 1"),
        (cfg.batch_size is None or cfg.batch_size >= 1, "--batch-size", cfg.batch_size, "must be at least 1"),
        (
            cfg.base_filters is None or cfg.base_filters >= 1,
            "--base-filters",
            cfg.base_filters,
            "must be at least 1",
        ),
        (
            cfg.learning_rate > 0 and math.isfinite(cfg.learning_rate),
            "--learning-rate",
            cfg.learning_rate,
            "must be a positive number",
        ),
        (
            0 <= cfg.warmup_epochs < cfg.epochs,
            "--warmup-epochs",
            cfg.warmup_epochs,
            "must be 0 or more and fewer than --epochs",
        ),
        (cfg.early_stop >= 0, "--early-stop", cfg.early_stop, "must be 0 (off) or a number of epochs"),
        (0 < cfg.val_split < 1, "--val-split", cfg.val_split, "must be between 0 and 1 (exclusive)"),
        (
            cfg.limit is None or cfg.limit >= 2,
            "--limit",
            cfg.limit,
            "must be at least 2 (one train and one validation pair)",
        ),
        (cfg.num_preds >= 0, "--num-preds", cfg.num_preds, "must be 0 or more"),
        (cfg.progress_every >= 0, "--progress-every", cfg.progress_every, "must be 0 (off) or more"),
        (cfg.num_progress >= 1, "--num-progress", cfg.num_progress, "must be at least 1"),
        (
            cfg.precision in PRECISIONS,
            "--precision",
            cfg.precision,
            f"must be one of {', '.join(PRECISIONS)}",
        ),
        (cfg.schedule in SCHEDULES, "--schedule", cfg.schedule, f"must be one of {', '.join(SCHEDULES)}"),
        (cfg.loss in LOSSES, "--loss", cfg.loss, f"must be one of {', '.join(LOSSES)}"),
        (
            cfg.augment is None or cfg.augment in uf.AUGMENTS,
            "--augment",
            cfg.augment,
            f"must be one of {', '.join(uf.AUGMENTS)}",
        ),
        (
            cfg.block is None or cfg.block in BLOCKS,
            "--block",
            cfg.block,
            f"must be one of {', '.join(BLOCKS)}",
        ),
        (cfg.tta in TTAS, "--tta", cfg.tta, f"must be one of {', '.join(TTAS)}"),
        (0.0 <= cfg.logit_adjust <= 1.0, "--logit-adjust", cfg.logit_adjust, "must be between 0 and 1"),
        (cfg.encoder in ENCODERS, "--encoder", cfg.encoder, f"must be one of {', '.join(ENCODERS)}"),
        (
            cfg.encoder_weights in ("imagenet", "none"),
            "--encoder-weights",
            cfg.encoder_weights,
            "must be imagenet or none",
        ),
        (cfg.xla in XLA_MODES, "--xla", cfg.xla, f"must be one of {', '.join(XLA_MODES)}"),
        (
            cfg.autosize in AUTOSIZE_MODES,
            "--autosize",
            cfg.autosize,
            f"must be one of {', '.join(AUTOSIZE_MODES)}",
        ),
        (
            cfg.distribute in DISTRIBUTE,
            "--distribute",
            cfg.distribute,
            f"must be one of {', '.join(DISTRIBUTE)}",
        ),
        (cfg.cpu_replicas >= 1, "--cpu-replicas", cfg.cpu_replicas, "must be at least 1"),
        (
            cfg.dataset in data_source.DATASETS,
            "--dataset",
            cfg.dataset,
            f"must be one of {', '.join(data_source.DATASETS)}",
        ),
        (
            cfg.pipeline in data_source.PIPELINES,
            "--pipeline",
            cfg.pipeline,
            f"must be one of {', '.join(data_source.PIPELINES)}",
        ),
        (
            cfg.class_weights in CLASS_WEIGHTS,
            "--class-weights",
            cfg.class_weights,
            f"must be one of {', '.join(CLASS_WEIGHTS)}",
        ),
    ]
    if cfg.image_size is not None:
        factor = 2**DEPTH if cfg.encoder == "unet" else 32
        why = (
            f"2^{DEPTH} down-sampling levels"
            if cfg.encoder == "unet"
            else f"the {cfg.encoder} encoder's stride"
        )
        checks.append(
            (
                cfg.image_size >= factor and cfg.image_size % factor == 0,
                "--image-size",
                cfg.image_size,
                f"must be a positive multiple of {factor} ({why})",
            )
        )
    for ok, flag, value, why in checks:
        if not ok:
            raise UsageError(f"{flag} {value}: {why}")


def resolve_config(cfg: TrainConfig, on_gpu: bool) -> tuple[TrainConfig, str, list[str]]:
    """Fill the machine-dependent defaults and choose the precision.

    Args:
        cfg: Configuration with None for "choose".
        on_gpu: Whether a GPU is visible.

    Returns:
        `(resolved_config, precision_policy, reasons)`: reasons are lines
        saying what was chosen and why.
    """
    validate_config(cfg)
    policy, why_policy = resolve_precision(cfg.precision, on_gpu)
    bf16_cpu = not on_gpu and policy == "mixed_bfloat16" and cpu_has_bf16_matmul()
    if on_gpu:
        defaults, where = GPU_DEFAULTS, "GPU"
    elif bf16_cpu:
        defaults, where = CPU_BF16_DEFAULTS, "CPU with bf16 units"
    else:
        defaults, where = CPU_DEFAULTS, "CPU"
    why_default = {
        "image_size": "the classic UNet at the data's full 256x256"
        if on_gpu
        else "10 epochs over the 2975 pairs fit in 30 min on 2 cores",
        "base_filters": "classic widths 64..512, 1024 bottleneck"
        if on_gpu
        else "widths 24..192, 384 bottleneck: under bf16 on these units 10 epochs of it took 25 min on 2 cores"
        if bf16_cpu
        else "widths 16..128, 256 bottleneck: at 96x96 these learned more than 12..96 at 112x112 in the same time",
        "batch_size": "fills the GPU without running out of memory"
        if on_gpu
        else "more steps per epoch learn more in a short run than bigger batches",
        "augment": "random horizontal flip"
        if on_gpu
        else "no flip: the 10-epoch run underfits, and the flip cost it 0.010 validation mean IoU",
        "block": "residual conv blocks: 0.420 against 0.401 mean IoU for plain ones in the same 10 epochs"
        if defaults["block"] == "residual"
        else "plain conv blocks: the classic UNet"
        if on_gpu
        else "plain conv blocks: residual ones were measured only on CPUs with bf16 units",
    }
    if cfg.encoder != "unet":
        defaults = dict(defaults)
        if defaults["image_size"] % 32:
            defaults["image_size"] = 128
            why_default["image_size"] = f"the CPU default rounded up to a multiple of 32 for {cfg.encoder}"
        why_default["base_filters"] = (
            "not used by the encoder UNet: its decoder widths are 256, 128, 64, 32, 16"
        )
        why_default["block"] = "not used by the encoder UNet: its decoder has plain conv blocks"
    reasons = []
    changes = {}
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            changes[key] = value
            reasons.append(f"{key} = {value} ({where} default: {why_default[key]})")
        else:
            reasons.append(f"{key} = {getattr(cfg, key)} (from the command line)")
    cfg = dataclasses.replace(cfg, **changes)
    validate_config(cfg)
    reasons.append(f"precision = {policy} ({why_policy})")
    return cfg, policy, reasons


# OneHotMeanIoU keeps an integer confusion matrix (exact counts; float32
# would drop increments past 2**24 pixels) and warns that float weights are
# cast to int. Ours are exactly 0 (ignored) or 1, so the cast is exact.
warnings.filterwarnings("ignore", message="You are passing weight as `float`")


def make_loss(class_weights: np.ndarray | None = None, kind: str = "ce") -> keras.losses.Loss:
    """Categorical cross-entropy averaged over the labelled pixels.

    Ignored pixels have weight 0 (the sample weights) and an all-zero one-hot
    row; `mean_with_sample_weight` divides by the number of labelled pixels.
    With class weights, Keras' `CategoricalFocalCrossentropy` with `gamma=0`
    is exactly class-weighted cross-entropy (`alpha` per class), and stays a
    built-in that loads without this project.

    `kind="ce_dice"` adds a soft Dice term (`losses.CrossEntropyDice`);
    `kind="ce_lovasz"` adds the Lovasz-softmax term, a surrogate of the
    mean IoU itself (`losses.CrossEntropyLovasz`);
    `kind="focal"` is Keras' `CategoricalFocalCrossentropy` with `gamma=2`
    (the class weights as `alpha`), which down-weights pixels already
    classified with confidence.

    Args:
        class_weights: Per-class weights `(num_classes,)`, or None.
        kind: One of `LOSSES`.

    Returns:
        A Keras loss.
    """
    if kind == "ce_dice":
        return losses.CrossEntropyDice(
            None if class_weights is None else [round(float(w), 4) for w in class_weights]
        )
    if kind == "ce_lovasz":
        return losses.CrossEntropyLovasz(
            None if class_weights is None else [round(float(w), 4) for w in class_weights]
        )
    alpha = 1.0 if class_weights is None else [round(float(w), 4) for w in class_weights]
    if kind == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=alpha, gamma=2.0, reduction="mean_with_sample_weight", name="focal_crossentropy"
        )
    if class_weights is None:
        return keras.losses.CategoricalCrossentropy(reduction="mean_with_sample_weight")
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=[round(float(w), 4) for w in class_weights],
        gamma=0.0,
        reduction="mean_with_sample_weight",
        name="weighted_categorical_crossentropy",
    )


def build_model(cfg: TrainConfig) -> keras.Model:
    """The network of `cfg`: the classic-style UNet, or one on a pretrained encoder.

    For an encoder, ImageNet weights are fetched when `cfg.encoder_weights`
    is `imagenet`; when that fails (offline), one line says so and the
    encoder starts from random weights.

    Args:
        cfg: Resolved configuration.

    Returns:
        An uncompiled `keras.Model`.
    """
    if cfg.encoder == "unet":
        return build_unet(
            cfg.image_size,
            uf.NUM_CLASSES,
            widths_from_base(cfg.base_filters, DEPTH),
            residual=cfg.block == "residual",
        )
    if cfg.encoder_weights == "imagenet":
        try:
            return build_encoder_unet(cfg.image_size, uf.NUM_CLASSES, cfg.encoder, "imagenet")
        except Exception as e:  # noqa: BLE001 - offline, blocked, or a broken download
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            print(
                f"--encoder {cfg.encoder}: could not fetch the ImageNet weights ({first}); "
                "training it from random weights (weights=None)"
            )
    return build_encoder_unet(cfg.image_size, uf.NUM_CLASSES, cfg.encoder, None)


def build_and_compile(
    cfg: TrainConfig,
    steps_per_epoch: int,
    class_weights: np.ndarray | None = None,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Build the UNet of `cfg` and compile it with Adam, CE and the metrics.

    The loss and metrics are Keras built-ins fed per-pixel sample weights (0
    on ignored pixels), so the saved model loads without this project.

    Args:
        cfg: Resolved configuration.
        steps_per_epoch: Batches per epoch (for the cosine schedule).
        class_weights: Per-class loss weights `(num_classes,)`, or None.
        jit_compile: Passed to `Model.compile` (XLA).

    Returns:
        A compiled model.
    """
    model = build_model(cfg)
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        warm = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
        # With warm-up: linear from 2% to the peak over `warm` steps, then
        # the cosine over the rest; without: the cosine from the peak.
        lr = keras.optimizers.schedules.CosineDecay(
            0.02 * cfg.learning_rate if warm else cfg.learning_rate,
            decay_steps=total - warm,
            alpha=0.02,
            warmup_target=cfg.learning_rate if warm else None,
            warmup_steps=warm,
        )
    model.compile(
        # Under mixed_float16, compile() wraps Adam in a LossScaleOptimizer
        # (dynamic loss scaling).
        optimizer=keras.optimizers.Adam(lr),
        loss=make_loss(class_weights, cfg.loss),
        # weighted_metrics, not metrics: Keras hands the sample weights (0 on
        # ignored pixels) only to these. Plain `metrics` would count void
        # pixels as class 0.
        weighted_metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.OneHotMeanIoU(num_classes=uf.NUM_CLASSES, name="mean_iou"),
        ],
        jit_compile=jit_compile,
    )
    return model


def schedule_callbacks(cfg: TrainConfig):
    """The callbacks of `--schedule plateau` and `--early-stop`, both on validation mean IoU.

    Args:
        cfg: Configuration.

    Returns:
        `(plateau, early)`: a `ReduceLROnPlateau` that halves the rate when
        validation mean IoU has not risen for 2 epochs (None unless the
        schedule is `plateau`), and an `EarlyStopping` (None when
        `cfg.early_stop` is 0). The best model is on disk already, so early
        stopping restores no weights.
    """
    plateau = early = None
    if cfg.schedule == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_mean_iou", mode="max", factor=0.5, patience=2, min_lr=0.02 * cfg.learning_rate
        )
    if cfg.early_stop:
        early = keras.callbacks.EarlyStopping(monitor="val_mean_iou", mode="max", patience=cfg.early_stop)
    return plateau, early


def find_data(cfg: TrainConfig) -> tuple[list[str], list[str], str, list[tuple[str, str]]]:
    """Locate the train and validation pair files of `cfg.data_dir`.

    `DIR/train` (else `DIR` itself) holds training pairs; `DIR/val`, when it
    exists, is the validation split, else a seeded `val_split` fraction of
    the training pairs is held out.

    Args:
        cfg: Configuration.

    Returns:
        `(train_files, val_files, val_source, skipped)`.

    Raises:
        UsageError: If the folder is missing or holds no usable pair.
    """
    root = cfg.data_dir
    if not os.path.isdir(root):
        raise UsageError(f"--data-dir {root}: folder not found (put the Cityscapes pairs in {root}/train)")
    train_dir = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    val_dir = os.path.join(root, "val")
    pool = list_images(train_dir)
    if cfg.limit:
        pool = pool[: cfg.limit]
    good, skipped = scan_pairs(pool)
    if not good:
        what = f"no usable pair among {len(pool)} JPEG files" if pool else "no .jpg files"
        kaggle = os.path.join(root, "cityscapes_data")
        if not pool and os.path.isdir(kaggle):
            raise UsageError(
                f"--data-dir {root}: {what} in {train_dir}; the pairs are in {kaggle}: pass --data-dir {kaggle}"
            )
        raise UsageError(
            f"--data-dir {root}: {what} in {train_dir} (put the Cityscapes pairs in {root}/train; "
            "see images/README.md)"
        )
    if os.path.isdir(val_dir) and list_images(val_dir):
        val_pool = list_images(val_dir)
        if cfg.limit:
            val_pool = val_pool[: cfg.limit]
        val, val_skipped = scan_pairs(val_pool)
        skipped += val_skipped
        if not val:
            raise UsageError(f"--data-dir {root}: no usable pair in {val_dir}")
        return good, val, f"folder {val_dir}", skipped
    if len(good) < 2:
        raise UsageError(
            f"--data-dir {root}: only {len(good)} usable pair; need 2 or more to hold out validation"
        )
    train, val = split_train_val(good, cfg.val_split, cfg.seed)
    return train, val, f"seeded {cfg.val_split:.0%} of {train_dir} (seed {cfg.seed})", skipped


#: Flags a resumed run may change: they do not affect what is learned.
RESUME_FREE = (
    "output_dir",
    "num_preds",
    "progress_every",
    "num_progress",
    "tensorboard",
    # The global batch stays the same, whatever devices share it.
    "distribute",
    "cpu_replicas",
    # Either pipeline decodes the same class ids.
    "pipeline",
)


def resume_config(cfg: TrainConfig, given: frozenset[str] | set[str]) -> tuple[TrainConfig, dict]:
    """The configuration of the run in `cfg.output_dir`, for `--resume`.

    Args:
        cfg: Configuration from the command line.
        given: Names of the fields the user set explicitly.

    Returns:
        `(config, saved)`: the saved configuration (with the free flags of
        `RESUME_FREE` taken from `cfg`), and the raw saved `config.json`.

    Raises:
        UsageError: If there is no run to resume, or a given flag
            contradicts the saved configuration.
    """
    path = os.path.join(cfg.output_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no config.json in {cfg.output_dir}: there is no run to resume")
    with open(path) as f:
        saved = json.load(f)
    fields = {k: saved[k] for k in TrainConfig.__dataclass_fields__ if k in saved}
    if isinstance(fields.get("augment"), bool):  # written before --augment took a mode
        fields["augment"] = "flip" if fields["augment"] else "none"
    fields.setdefault("block", "plain")  # written before --block: plain conv blocks
    for key in sorted(given):
        mine = getattr(cfg, key)
        if key in RESUME_FREE:
            fields[key] = mine
            continue
        theirs = fields.get(key)
        same = (
            os.path.realpath(mine) == os.path.realpath(theirs)
            if key == "data_dir" and theirs
            else mine == theirs
        )
        if not same:
            raise UsageError(
                f"--resume: --{key.replace('_', '-')} {mine} contradicts the run in {cfg.output_dir} "
                f"({theirs}); leave the flag out, or start a new run in another --output-dir"
            )
    return TrainConfig(**fields), saved


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
        uf.save_prediction_panel(path, photo, ids, pred, title=f"{name}: pixel accuracy {acc:.3f}")
        paths.append(path)
    return paths


def open_data(cfg: TrainConfig, pad_to: int = 1) -> tuple[data_source.RunData, list[tuple[str, str]]]:
    """The training and validation data of `cfg` (`--dataset`, `--pipeline`).

    Args:
        cfg: Resolved configuration.
        pad_to: Pad batches to a multiple of this (see `data_source.from_pairs`).

    Returns:
        `(data, skipped)`: skipped lists `(path, reason)` of unusable pair files.

    Raises:
        UsageError: For missing or unusable data.
    """
    try:
        pipeline, _ = data_source.resolve_pipeline(cfg.pipeline, cfg.dataset)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.dataset == "tfds-cityscapes":
        from tfds_source import TfdsSourceError

        try:
            data = data_source.from_tfds(
                cfg.image_size,
                cfg.batch_size,
                cfg.seed,
                cfg.augment,
                cfg.tfds_data_dir,
                cfg.tfds_manual_dir,
                cfg.limit,
                pad_to,
            )
        except TfdsSourceError as e:
            raise UsageError(str(e)) from None
        return data, []
    train_files, val_files, val_source, skipped = find_data(cfg)
    if pipeline == "numpy" and cfg.augment == "full":
        raise UsageError("--augment full: needs the tf.data pipeline (TensorFlow); use flip or none")
    data = data_source.from_pairs(
        train_files,
        val_files,
        val_source,
        cfg.image_size,
        cfg.batch_size,
        cfg.seed,
        cfg.augment,
        pipeline,
        pad_to,
    )
    return data, skipped


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
    uf.atomic_write_text(path, "".join(f"{display_name(p)}\t{why}\n" for p, why in skipped))


def interrupted_message(output_dir: str | None, checkpoint: BestModelCheckpoint | None = None) -> str:
    """One line for Ctrl-C: what is on disk, and how to continue.

    Args:
        output_dir: Run folder, or None for commands that are not a run.
        checkpoint: The run's best-model callback, once training has begun.

    Returns:
        The message.
    """
    if output_dir is None:
        return "interrupted"
    state = ResumeState.load(os.path.join(output_dir, "resume"))
    go_on = f"; continue with: python main.py --output-dir {output_dir} --resume" if state else ""
    if checkpoint is not None and checkpoint.best_epoch is not None:
        return (
            f"interrupted: the best model so far (epoch {checkpoint.best_epoch + 1}, validation mean IoU "
            f"{checkpoint.best:.4f}) is in {checkpoint.path}{go_on}"
        )
    if state:
        return f"interrupted: the run in {output_dir} is as it was after epoch {state[0]}{go_on}"
    return "interrupted before an epoch finished: this run saved no model"


def run_training(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    given: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Train the UNet end to end and write every output of a run.

    Args:
        cfg: Configuration (None fields are chosen for the machine).
        resume: Continue the run in `cfg.output_dir` from its last complete
            epoch, with its saved configuration.
        overwrite: Replace an earlier model in the output folder instead of
            keeping it under a dated name; start anew over an unfinished run.
        given: Fields the user set explicitly (checked against the saved
            configuration when resuming).

    Returns:
        A summary dict: best validation mean IoU and epoch, output paths.

    Raises:
        UsageError: For bad flags or data.
        TrainingError: When a save fails or the loss stops being finite.
    """
    t_start = time.perf_counter()
    if resume and overwrite:
        raise UsageError("--resume and --overwrite: choose one (continue the run, or start anew over it)")
    saved = None
    if resume:
        cfg, saved = resume_config(cfg, given)
    validate_config(cfg)
    if resume and cfg.distribute == "multiworker":
        raise UsageError("--resume with --distribute multiworker: resume on one machine, or start anew")
    try:
        # First: splitting the CPU into devices must precede the backend's start.
        dist = distribute.setup(cfg.distribute, cfg.cpu_replicas)
    except distribute.DistributeError as e:
        raise UsageError(str(e)) from None
    scratch = None
    if not dist.is_chief:
        # Workers other than the chief write into a folder removed at the end.
        scratch = tempfile.mkdtemp(prefix="unet-worker-")
        cfg = dataclasses.replace(cfg, output_dir=scratch)
    existed = os.path.isdir(cfg.output_dir)
    lock = None if scratch else lock_run_folder(cfg.output_dir)
    try:
        return _run_in_folder(cfg, resume, overwrite, saved, dist, scratch, t_start)
    finally:
        if lock is not None:
            lock.release()
            if not existed and os.listdir(cfg.output_dir) == [LOCK_FILE]:
                # Refused before writing anything: leave no folder behind.
                shutil.rmtree(cfg.output_dir, ignore_errors=True)


def lock_run_folder(output_dir: str) -> RunLock:
    """Take `output_dir` for this run, and remove what killed saves left there.

    Raises:
        UsageError: When another process runs there, or the folder cannot
            be created or written.
    """
    try:
        lock = RunLock(output_dir)
    except FolderInUse as e:
        raise UsageError(
            f"--output-dir {output_dir}: {e}: wait for that run, or choose another --output-dir"
        ) from None
    except OSError as e:
        raise UsageError(f"--output-dir {output_dir}: cannot write there ({e.strerror or e})") from None
    remove_temporaries(output_dir)
    return lock


def _run_in_folder(cfg, resume, overwrite, saved, dist, scratch, t_start) -> dict:
    # The rest of `run_training`, with the run folder locked.
    on_gpu = gpu_available()
    # Only sizes left to the machine are sized by measurement.
    autosize = (
        not on_gpu
        and cfg.image_size is None
        and cfg.base_filters is None
        and cfg.encoder == "unet"
        and dist.mode == "none"
        and (cfg.autosize == "on" or (cfg.autosize == "auto" and cpu_has_bf16_matmul()))
    )
    cfg, policy, reasons = resolve_config(cfg, on_gpu)
    if cfg.batch_size % dist.replicas:
        raise UsageError(
            f"--batch-size {cfg.batch_size}: must be a multiple of the {dist.replicas} replicas, "
            "so that every replica gets an equal share"
        )
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
    out = lambda name: os.path.join(cfg.output_dir, name)  # noqa: E731
    model_path = out(MODEL_FILE)
    state = ResumeState.load(out("resume")) if os.path.isdir(out("resume")) else None
    if resume:
        if state is None:
            raise UsageError(f"--resume: no complete epoch saved in {out('resume')}: start a new run instead")
        if state[0] >= cfg.epochs:
            raise UsageError(
                f"--resume: the run in {cfg.output_dir} already finished its {cfg.epochs} epochs"
            )
        if policy != saved.get("precision_policy", policy):
            raise UsageError(
                f"--resume: this machine resolves --precision {cfg.precision} to {policy}, the run used "
                f"{saved['precision_policy']}; pass --precision {saved['precision_policy']}"
            )
    elif state is not None and not overwrite:
        raise UsageError(
            f"--output-dir {cfg.output_dir}: holds an unfinished run ({state[0]} epochs done): continue it "
            "with --resume, start anew over it with --overwrite, or choose another --output-dir"
        )
    # JAX shards every batch into equal parts: pad the last one.
    pad_to = dist.replicas if keras.backend.backend() == "jax" else 1
    data, skipped = open_data(cfg, pad_to)
    if resume and (data.n_train, data.n_val) != (saved.get("train_files"), saved.get("val_files")):
        raise UsageError(
            f"--resume: the data changed: {data.n_train} training and {data.n_val} validation samples "
            f"now, {saved.get('train_files')} and {saved.get('val_files')} in the run"
        )

    os.makedirs(cfg.output_dir, exist_ok=True)
    cpu_replicas = dist.replicas if dist.mode == "mirrored" and not on_gpu else 1
    jit = resolve_xla(cfg.xla, on_gpu, policy, cpu_has_bf16_matmul(), cpu_replicas)
    autosize_lines = []
    if autosize:
        keras.mixed_precision.set_global_policy(policy)
        (size, filters), autosize_lines = choose_autosize(
            data.n_train,
            data.n_val,
            cfg.epochs,
            cfg.batch_size,
            jit,
            functools.partial(measure_step_rate, loss=cfg.loss),
            AUTOSIZE_LADDER,
        )
        keras.backend.clear_session()
        why = f"--autosize {cfg.autosize}: the largest size whose run fits {AUTOSIZE_BUDGET_S // 60} min here"
        reasons = [r for r in reasons if not r.startswith(("image_size =", "base_filters ="))]
        reasons[:0] = [f"image_size = {size} ({why})", f"base_filters = {filters} ({why})"]
        if (size, filters) != (cfg.image_size, cfg.base_filters):
            cfg = dataclasses.replace(cfg, image_size=size, base_filters=filters)
            data, skipped = open_data(cfg, pad_to)

    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, {'GPU' if on_gpu else 'CPU'}")
    if dist.mode != "none":
        print(f"Distributed: {dist.description}; global batch {cfg.batch_size}")
    if scratch:
        print(f"Not the chief: this worker's outputs go to {scratch} (removed at the end)")
    if autosize_lines:
        print("Measured training speed by size (--autosize):")
        for line in autosize_lines:
            print(f"  {line}")
    print("Configuration:")
    for line in reasons:
        print(f"  {line}")
    print(f"  epochs = {cfg.epochs}, learning_rate = {cfg.learning_rate} ({cfg.schedule}), seed = {cfg.seed}")
    print(
        f"  loss = {cfg.loss}, class_weights = {cfg.class_weights}, augment = {cfg.augment}"
        + (
            " (cross-entropy plus the Lovasz-softmax surrogate of mean IoU)"
            if cfg.loss == "ce_lovasz"
            else ""
        )
    )
    tta_note = {
        "flip": " (the saved model averages in the scores of the mirrored photo)",
        "scales": " (the saved model averages the scores of the photo and its mirror, at two sizes)",
    }
    print(f"  tta = {cfg.tta}{tta_note.get(cfg.tta, '')}, logit_adjust = {cfg.logit_adjust}")
    print(
        f"Data: {data.n_train} training samples, {data.n_val} validation samples ({data.val_source}); "
        f"{'tf.data' if data.pipeline == 'tf' else 'NumPy'} pipeline"
    )
    if not resume:
        make_room(cfg.output_dir, overwrite)
    if skipped:
        write_skipped(out("skipped.txt"), skipped)
        names = ", ".join(f"{display_name(os.path.basename(p))} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"Skipped {len(skipped)} unusable files: {names}{more} (list: {out('skipped.txt')})")

    if resume:
        print(f"Resuming {cfg.output_dir} after epoch {state[0]} of {cfg.epochs}")

    # ignore_errors() hides the dataset's length, so Keras finds the end of
    # the first epoch by running out of data; that is expected here.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(policy)
    weights = None
    if resume:
        if saved.get("class_weight_values"):
            weights = np.array(saved["class_weight_values"], np.float32)
    elif cfg.class_weights == "auto":
        t0 = time.perf_counter()
        freq = data.class_frequencies()  # also fills the decode cache
        weights = uf.class_weights(freq)
        print(f"Decoded {data.n_train} training samples in {time.perf_counter() - t0:.0f} s; class weights:")
        print("  " + ", ".join(f"{c.name} {w:.2f}" for c, w in zip(uf.CLASSES, weights, strict=True)))
    train_ds, val_ds = data.train, data.val
    if dist.mode == "multiworker":
        if data.pipeline != "tf":
            raise UsageError("--distribute multiworker: needs the tf.data pipeline (--pipeline tf)")
        import tensorflow as tf

        # Every worker reads the same seeded data and keeps its share of
        # each batch (the files are not split: they are read by tf.io).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    with dist.scope():
        if resume:
            # The model with its optimizer state: Adam's moments and step count,
            # so the learning-rate schedule goes on where it stopped.
            model = keras.models.load_model(state[1])
            model.jit_compile = jit if isinstance(jit, bool) else model.jit_compile
        else:
            steps = math.ceil(data.n_train / cfg.batch_size)
            model = build_and_compile(cfg, steps, weights, jit_compile=jit)
    if dist.sync_batchnorm:
        distribute.set_sync_batchnorm(model, True)
    distribute.prebuild(model, dist, cfg.image_size, uf.NUM_CLASSES)
    reasons_xla = {True: "on", False: "off"}.get(jit, "Keras' choice")
    print(f"XLA: {reasons_xla} (--xla {cfg.xla})")

    # The saved model takes the data's photos as they are and returns scores
    # at their size (`at_source_size`): nobody scoring or using it has to
    # resize photos the way training did, or line its output up with the labels.
    source = data.source_size
    if source and source != cfg.image_size:
        saved_size = source
        print(
            f"Saved model: takes {source}x{source} photos (area-resized inside to {cfg.image_size}x{cfg.image_size}) "
            f"and returns scores at {source}x{source}"
        )
    else:
        saved_size = cfg.image_size
    if not resume:
        uf.write_json(
            out("config.json"),
            {
                **dataclasses.asdict(cfg),
                "precision_policy": policy,
                "train_files": data.n_train,
                "val_files": data.n_val,
                "val_source": data.val_source,
                "pipeline_used": data.pipeline,
                "keras_backend": keras.backend.backend(),
                "jit_compile": jit,
                "class_weight_values": None if weights is None else [round(float(w), 4) for w in weights],
                "autosize_measured": autosize_lines,
                "saved_model_size": saved_size,
            },
        )
    uf.write_json(out("classes.json"), uf.classes_table())
    arch = get_model_arch(model, cfg.output_dir)
    print(f"Model: {model.count_params():,} parameters; architecture in {arch}")

    initial_epoch = state[0] if resume else 0
    # Always a fresh, uncompiled model over the trained layers: at the data's
    # size the wrapper, else a plain view, so no custom loss is saved. It
    # computes in float32 whatever the training precision (`float32_copy`):
    # the file runs at full speed on any CPU and agrees with its exports.
    # With `--tta flip` it also averages in the mirrored photo's scores, with
    # `--tta scales` those of both at a second, larger size as well. With
    # class weights, `--logit-adjust` divides weights**alpha back out of the
    # saved model's odds (`with_logit_bias`).
    flip = cfg.tta in ("flip", "scales")
    sizes = tta_sizes(
        cfg.image_size, 2 if cfg.tta == "scales" else 1, 2**DEPTH if cfg.encoder == "unet" else 32
    )
    bias = None
    if weights is not None and cfg.logit_adjust:
        bias = -cfg.logit_adjust * np.log(np.asarray(weights, np.float64))
        print(
            f"Saved model: class scores divided by class_weight**{cfg.logit_adjust} (--logit-adjust): "
            "the weights' pull toward rare classes, partly undone"
        )
    if len(sizes) > 1:
        print(
            f"Saved model: runs the network at {' and '.join(f'{s}x{s}' for s in sizes)}, each with the mirror"
        )

    def to_save(m):
        return inference_model(m, saved_size, flip=flip, sizes=sizes, logit_bias=bias)

    checkpoint = BestModelCheckpoint(model_path, to_save=to_save)
    history = HistoryCSV(out("history.csv"))
    non_finite = StopOnNonFinite()
    if resume:
        checkpoint.restore()
        history.restore(initial_epoch)
        if history.rows:
            # A kill between the resume state and the best-model save of the
            # last epoch: that epoch's model is the resumed one.
            checkpoint.catch_up(model, history.rows[-1])
    callbacks = [non_finite, history]
    plateau, early = schedule_callbacks(cfg)
    callbacks += [c for c in (plateau, early) if c is not None]
    log_dir = out("logs") if cfg.tensorboard else None
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    if cfg.progress_every:
        _, photos, truths = data.samples(cfg.num_progress, True)
        progress = ProgressPictures(photos, truths, cfg.output_dir, cfg.progress_every, log_dir, pad_to)
        if resume:
            progress.restore(initial_epoch)
        callbacks.append(progress)
    # The state names an epoch once its history row is on disk; the best
    # model comes after it, so it never names an epoch the history lacks.
    callbacks += [ResumeState(out("resume")), checkpoint]
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            # The datasets shuffle themselves (seeded).
            shuffle=False,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(cfg.output_dir, checkpoint)) from None
    curves = uf.plot_history(history.columns(), cfg.output_dir)
    if non_finite.failed:
        kept = (
            f"the best model so far (epoch {checkpoint.best_epoch + 1}, validation mean IoU "
            f"{checkpoint.best:.4f}) is kept in {model_path}"
            if checkpoint.best_epoch is not None
            else "no epoch finished with finite weights, so no model was saved"
        )
        raise TrainingError(
            f"{non_finite.failed}: stopped; {kept}. Try a lower --learning-rate or --precision float32"
        )
    shutil.rmtree(out("resume"), ignore_errors=True)  # the run is complete
    if early is not None and early.stopped_epoch:
        print(
            f"Stopped early after epoch {early.stopped_epoch + 1}: validation mean IoU had not risen "
            f"for {cfg.early_stop} epochs"
        )

    panels = []
    if checkpoint.best_epoch is not None and cfg.num_preds:
        # The saved model itself, on photos and labels at the data's size:
        # the pictures show what a user of the file gets (flip averaging
        # included), not the network at its training size.
        try:
            best = keras.models.load_model(model_path)
            samples = data.samples(cfg.num_preds, False, saved_size)
            panels = write_prediction_panels(best, samples, cfg.output_dir, pad_to)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(cfg.output_dir, checkpoint)) from None

    elapsed = time.perf_counter() - t_start
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"\nWorker done in {elapsed / 60:.1f} min; the chief wrote the outputs.")
        best = checkpoint.best if checkpoint.best_epoch is not None else None
        return {"best_val_mean_iou": best, "best_epoch": None, "model": None, "seconds": round(elapsed, 1)}
    summary = {
        "best_val_mean_iou": checkpoint.best if checkpoint.best_epoch is not None else None,
        "best_epoch": None if checkpoint.best_epoch is None else checkpoint.best_epoch + 1,
        "model": model_path if checkpoint.best_epoch is not None else None,
        "seconds": round(elapsed, 1),
    }
    print(f"\nDone in {elapsed / 60:.1f} min. Outputs in {cfg.output_dir}/:")
    if summary["model"]:
        at = (
            ""
            if saved_size == cfg.image_size
            else f" at {cfg.image_size}x{cfg.image_size}; it works at {saved_size}x{saved_size}"
        )
        print(
            f"  {MODEL_FILE:18s} best model (epoch {summary['best_epoch']}, val mean IoU {checkpoint.best:.4f}{at})"
        )
    else:
        print("  no model saved: validation mean IoU was never finite")
    for name, what in (
        ("history.csv", "per-epoch loss, accuracy, mean IoU (train and val), learning rate"),
        ("config.json", "the resolved configuration"),
        ("classes.json", "the 19 classes: name, trainId, colour"),
        (os.path.basename(arch), "model architecture"),
    ):
        print(f"  {name:18s} {what}")
    for p in curves:
        print(f"  {os.path.basename(p):18s} curve, train and validation")
    if panels:
        print(
            f"  {f'pred_1..{len(panels)}.png':18s} photo | ground truth | prediction of the saved model, "
            f"at {saved_size}x{saved_size}"
        )
    if cfg.progress_every:
        print(
            f"  {'progress/':18s} validation samples before training and every {cfg.progress_every} epoch(s)"
        )
        print(f"  {'progress.gif':18s} the same pictures as an animation")
    if log_dir:
        print(f"  {'logs/':18s} TensorBoard: tensorboard --logdir {log_dir}")
    if summary["best_val_mean_iou"] is not None:
        print(f"Best validation mean IoU: {checkpoint.best:.4f} (epoch {summary['best_epoch']})")
    return summary
