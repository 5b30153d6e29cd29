from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet.data import source as data_source
from cityscapes_unet.errors import UsageError
from cityscapes_unet.train.distribute import DISTRIBUTE
from cityscapes_unet.train.losses import make_loss
from segmentation_model import build_unet, widths_from_base

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
