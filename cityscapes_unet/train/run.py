"""The end-to-end training run: the model, its data, and the steps of `run_in_folder`."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import errors, io, plots
from cityscapes_unet.data import source as data_source
from cityscapes_unet.data.decode import ZOOM_JITTER
from cityscapes_unet.data.files import display_name
from cityscapes_unet.data.source import find_data
from cityscapes_unet.errors import FolderInUse, Interrupted, TfdsSourceError, TrainingError, UsageError
from cityscapes_unet.infer.saved_model import inference_model, tta_sizes
from cityscapes_unet.train import distribute
from cityscapes_unet.train.callbacks import (
    BestModelCheckpoint,
    HistoryCSV,
    ProgressPictures,
    ResumeState,
    StopOnNonFinite,
)
from cityscapes_unet.train.config import (
    DEPTH,
    TrainConfig,
    cpu_has_bf16_matmul,
    gpu_available,
    resolve_config,
    resolve_xla,
    resume_config,
    size_phases,
    stride,
    validate_config,
)
from cityscapes_unet.train.losses import class_weights, make_loss
from cityscapes_unet.train.metrics import training_metrics
from cityscapes_unet.train.outputs import (
    LOCK_FILE,
    MODEL_FILE,
    RunLock,
    make_room,
    remove_temporaries,
    write_prediction_panels,
    write_skipped,
)
from model_arch import get_model_arch
from segmentation_model import build_encoder_unet, build_unet, widths_from_base

# OneHotMeanIoU keeps an integer confusion matrix (exact counts; float32
# would drop increments past 2**24 pixels) and warns that float weights are
# cast to int. Ours are exactly 0 (ignored) or 1, so the cast is exact.
warnings.filterwarnings("ignore", message="You are passing weight as `float`")


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

    The loss and metrics are fed per-pixel sample weights (0 on ignored
    pixels). With `--loss ce` the loss is a Keras built-in, and so are the
    metrics outside the PyTorch backend (`train.metrics`): such a compiled
    model loads without this project.

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
        loss=make_loss(class_weights, cfg.loss, cfg.lovasz_weight),
        # weighted_metrics, not metrics: Keras hands the sample weights (0 on
        # ignored pixels) only to these. Plain `metrics` would count void
        # pixels as class 0.
        weighted_metrics=training_metrics(),
        jit_compile=jit_compile,
    )
    return model


def schedule_callbacks(cfg: TrainConfig):
    """The callbacks of `--schedule plateau` and `early_stop`, both on validation mean IoU.

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
    train_files, val_files, val_source, skipped = find_data(
        cfg.data_dir, cfg.limit, cfg.val_split, cfg.seed, cfg.carve
    )
    if pipeline == "numpy" and cfg.augment in ZOOM_JITTER:
        raise UsageError(
            f"--augment {cfg.augment}: needs the tf.data pipeline (TensorFlow); use flip or none"
        )
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
    except errors.DistributeError as e:
        raise UsageError(str(e)) from None
    scratch = None
    if not dist.is_chief:
        # Workers other than the chief write into a folder removed at the end.
        scratch = tempfile.mkdtemp(prefix="unet-worker-")
        cfg = dataclasses.replace(cfg, output_dir=scratch)
    existed = os.path.isdir(cfg.output_dir)
    lock = None if scratch else lock_run_folder(cfg.output_dir)
    try:
        return run_in_folder(Run(cfg, resume, overwrite, saved, dist, scratch, t_start))
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


@dataclass
class Run:
    """One training run in its locked folder, filled in step by step (see `run_in_folder`)."""

    cfg: TrainConfig
    resume: bool
    overwrite: bool
    saved: dict | None
    dist: distribute.Distribution
    scratch: str | None
    t_start: float
    on_gpu: bool = False
    policy: str = "float32"
    reasons: list[str] = field(default_factory=list)
    #: `ResumeState.load`'s `(epochs done, model path)` of an unfinished run.
    state: tuple | None = None
    pad_to: int = 1
    data: data_source.RunData | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    jit: bool | str = "auto"
    weights: np.ndarray | None = None
    train_ds: object = None
    val_ds: object = None
    model: keras.Model | None = None
    saved_size: int | None = None
    #: The training size whose test-time sizes the checkpoint's models run at.
    net_size: int = 0
    arch: str = ""
    checkpoint: BestModelCheckpoint | None = None
    history: HistoryCSV | None = None
    non_finite: StopOnNonFinite | None = None
    early: keras.callbacks.EarlyStopping | None = None
    log_dir: str | None = None
    curves: list[str] = field(default_factory=list)
    panels: list[str] = field(default_factory=list)

    def out(self, name: str) -> str:
        """Path of `name` in the run folder."""
        return os.path.join(self.cfg.output_dir, name)

    @property
    def initial_epoch(self) -> int:
        """Epochs done before this process: those of the resumed run, else 0."""
        return self.state[0] if self.resume else 0


def run_in_folder(run: Run) -> dict:
    """The rest of `run_training`, with the run folder locked: returns its summary."""
    choose_defaults(run)
    check_folder_state(run)
    open_run_data(run)
    print_configuration(run)
    prepare_folder(run)
    prepare_training(run)
    build_or_restore_model(run)
    write_run_files(run)
    callbacks = make_callbacks(run)
    fit(run, callbacks)
    draw_predictions(run)
    return report(run)


def choose_defaults(run: Run) -> None:
    """Fill what the configuration leaves to the machine, and check it fits the devices."""
    run.on_gpu = gpu_available()
    given_by = "the resumed run's config.json" if run.resume else "the command line"
    run.cfg, run.policy, run.reasons = resolve_config(run.cfg, run.on_gpu, given_by)
    cfg = run.cfg
    if cfg.batch_size % run.dist.replicas:
        raise UsageError(
            f"--batch-size {cfg.batch_size}: must be a multiple of the {run.dist.replicas} replicas, "
            "so that every replica gets an equal share"
        )
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")


def check_folder_state(run: Run) -> None:
    """Load the folder's resume state; refuse a resume that cannot go on, or a new run over an unfinished one."""
    cfg, saved = run.cfg, run.saved
    run.state = ResumeState.load(run.out("resume")) if os.path.isdir(run.out("resume")) else None
    if run.resume:
        if run.state is None:
            raise UsageError(
                f"--resume: no complete epoch saved in {run.out('resume')}: start a new run instead"
            )
        if run.state[0] >= cfg.epochs:
            raise UsageError(
                f"--resume: the run in {cfg.output_dir} already finished its {cfg.epochs} epochs"
            )
        if run.policy != saved.get("precision_policy", run.policy):
            raise UsageError(
                f"--resume: this machine resolves --precision {cfg.precision} to {run.policy}, the run used "
                f"{saved['precision_policy']}; pass --precision {saved['precision_policy']}"
            )
    elif run.state is not None and not run.overwrite:
        raise UsageError(
            f"--output-dir {cfg.output_dir}: holds an unfinished run ({run.state[0]} epochs done): continue "
            "it with --resume, start anew over it with --overwrite, or choose another --output-dir"
        )


def open_run_data(run: Run) -> None:
    """Open the data (a resumed run's must not have changed), create the folder, choose XLA."""
    cfg, saved = run.cfg, run.saved
    # JAX shards every batch into equal parts: pad the last one.
    run.pad_to = run.dist.replicas if keras.backend.backend() == "jax" else 1
    run.data, run.skipped = open_data(cfg, run.pad_to)
    data = run.data
    if run.resume and (data.n_train, data.n_val) != (saved.get("train_files"), saved.get("val_files")):
        raise UsageError(
            f"--resume: the data changed: {data.n_train} training and {data.n_val} validation samples "
            f"now, {saved.get('train_files')} and {saved.get('val_files')} in the run"
        )
    os.makedirs(cfg.output_dir, exist_ok=True)
    cpu_replicas = run.dist.replicas if run.dist.mode == "mirrored" and not run.on_gpu else 1
    run.jit = resolve_xla(cfg.xla, run.on_gpu, run.policy, cpu_has_bf16_matmul(), cpu_replicas)


#: What each `tta` mode builds into the saved model, for the log.
TTA_NOTES = {
    "flip": " (the saved model averages in the scores of the mirrored photo)",
    "scales": " (the saved model averages the scores of the photo and its mirror, at several sizes)",
}


def epoch_span(first: int, end: int) -> str:
    """Name epochs `first` to `end` (0-based, exclusive) as the log counts them: "epoch 3", "epochs 1-4"."""
    return f"epoch {end}" if end == first + 1 else f"epochs {first + 1}-{end}"


def print_configuration(run: Run) -> None:
    """Say where the run runs, what it was configured with and why, and its data."""
    cfg, dist, data = run.cfg, run.dist, run.data
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, {'GPU' if run.on_gpu else 'CPU'}")
    if dist.mode != "none":
        print(f"Distributed: {dist.description}; global batch {cfg.batch_size}")
    if run.scratch:
        print(f"Not the chief: this worker's outputs go to {run.scratch} (removed at the end)")
    print("Configuration:")
    for line in run.reasons:
        print(f"  {line}")
    print(f"  epochs = {cfg.epochs}, learning_rate = {cfg.learning_rate} ({cfg.schedule}), seed = {cfg.seed}")
    for size, first, end in size_phases(cfg):
        if size != cfg.image_size:
            part = "first" if size < cfg.image_size else "final"
            count = getattr(cfg, f"{part}_epochs")
            print(
                f"  {epoch_span(first, end)} at {size}x{size} ({part}_size = {size}, {part}_epochs = {count})"
            )
    lovasz = (
        f" (cross-entropy plus the Lovasz-softmax surrogate of mean IoU, weighted {cfg.lovasz_weight:g})"
        if cfg.loss == "ce_lovasz"
        else ""
    )
    print(f"  loss = {cfg.loss}, class_weights = {cfg.class_weights}, augment = {cfg.augment}{lovasz}")
    print(f"  tta = {cfg.tta}{TTA_NOTES.get(cfg.tta, '')}, logit_adjust = {cfg.logit_adjust}")
    print(
        f"Data: {data.n_train} training samples, {data.n_val} validation samples ({data.val_source}); "
        f"{'tf.data' if data.pipeline == 'tf' else 'NumPy'} pipeline"
    )


def prepare_folder(run: Run) -> None:
    """Move an earlier run aside (or remove it), and list the unusable pair files."""
    cfg, skipped = run.cfg, run.skipped
    if not run.resume:
        make_room(cfg.output_dir, run.overwrite)
    if skipped:
        write_skipped(run.out("skipped.txt"), skipped)
        names = ", ".join(f"{display_name(os.path.basename(p))} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"Skipped {len(skipped)} unusable files: {names}{more} (list: {run.out('skipped.txt')})")
    if run.resume:
        print(f"Resuming {cfg.output_dir} after epoch {run.state[0]} of {cfg.epochs}")


def prepare_training(run: Run) -> None:
    """Seed, set the dtype policy, weigh the classes, and shard the data for several workers."""
    cfg, data = run.cfg, run.data
    # ignore_errors() hides the dataset's length, so Keras finds the end of
    # the first epoch by running out of data; that is expected here.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(run.policy)
    if run.resume:
        if run.saved.get("class_weight_values"):
            run.weights = np.array(run.saved["class_weight_values"], np.float32)
    elif cfg.class_weights == "auto":
        t0 = time.perf_counter()
        freq = data.class_frequencies()  # also fills the decode cache
        run.weights = class_weights(freq, power=cfg.class_weight_power)
        print(f"Decoded {data.n_train} training samples in {time.perf_counter() - t0:.0f} s; class weights:")
        print("  " + ", ".join(f"{c.name} {w:.2f}" for c, w in zip(uf.CLASSES, run.weights, strict=True)))
    run.train_ds, run.val_ds = for_workers(run, data)


def for_workers(run: Run, data: data_source.RunData) -> tuple[object, object]:
    """The training and validation datasets of `data`, sharded when several workers train."""
    if run.dist.mode != "multiworker":
        return data.train, data.val
    if data.pipeline != "tf":
        raise UsageError("--distribute multiworker: needs the tf.data pipeline (--pipeline tf)")
    import tensorflow as tf

    # Every worker reads the same seeded data and keeps its share of
    # each batch (the files are not split: they are read by tf.io).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.train.with_options(options), data.val.with_options(options)


def build_or_restore_model(run: Run) -> None:
    """Build and compile the network, or load the resumed run's with its optimizer state."""
    cfg, dist = run.cfg, run.dist
    with dist.scope():
        if run.resume:
            # The model with its optimizer state: Adam's moments and step count,
            # so the learning-rate schedule goes on where it stopped.
            run.model = keras.models.load_model(run.state[1])
            run.model.jit_compile = run.jit if isinstance(run.jit, bool) else run.model.jit_compile
        else:
            steps = math.ceil(run.data.n_train / cfg.batch_size)
            run.model = build_and_compile(cfg, steps, run.weights, jit_compile=run.jit)
    if dist.sync_batchnorm:
        distribute.set_sync_batchnorm(run.model, True)
    distribute.prebuild(run.model, dist, cfg.image_size, uf.NUM_CLASSES)
    xla = {True: "on", False: "off"}.get(run.jit, "Keras' choice")
    print(f"XLA: {xla} (--xla {cfg.xla})")


def write_run_files(run: Run) -> None:
    """Choose the saved model's input size; write config.json, classes.json and the architecture."""
    cfg, data = run.cfg, run.data
    # The saved model takes the data's photos as they are and returns scores
    # at their size (`at_source_size`): nobody scoring or using it has to
    # resize photos the way training did, or line its output up with the labels.
    source = data.source_size
    run.saved_size = source if source and source != cfg.image_size else cfg.image_size
    if run.saved_size != cfg.image_size:
        print(
            f"Saved model: takes {source}x{source} photos (area-resized inside to the network's sizes) "
            f"and returns scores at {source}x{source}"
        )
    if not run.resume:
        weights = run.weights
        io.write_json(
            run.out("config.json"),
            {
                **dataclasses.asdict(cfg),
                "precision_policy": run.policy,
                "train_files": data.n_train,
                "val_files": data.n_val,
                "val_source": data.val_source,
                "pipeline_used": data.pipeline,
                "keras_backend": keras.backend.backend(),
                "jit_compile": run.jit,
                "class_weight_values": None if weights is None else [round(float(w), 4) for w in weights],
                "saved_model_size": run.saved_size,
            },
        )
    io.write_json(run.out("classes.json"), uf.classes_table())
    run.arch = get_model_arch(run.model, cfg.output_dir)
    print(f"Model: {run.model.count_params():,} parameters; architecture in {run.arch}")


def size_of_epoch(cfg: TrainConfig, epoch: int) -> int:
    """The input size epoch `epoch` (0-based) trains and validates at (`size_phases`)."""
    return next(size for size, first, end in size_phases(cfg) if first <= epoch < end)


def saved_model_maker(run: Run, size: int):
    """The function that turns the trained model into the file a user gets.

    Always a fresh, uncompiled model over the trained layers: at the data's
    size the wrapper, else a plain view, so no custom loss is saved. It
    computes in float32 whatever the training precision (`float32_copy`):
    the file runs at full speed on any CPU and agrees with its exports.
    With `tta` flip it also averages in the mirrored photo's scores, with
    `scales` those of both at other sizes as well (`tta_sizes`). With class
    weights, `logit_adjust` divides weights**alpha back out of the saved
    model's odds (`with_logit_bias`). The network runs at the sizes of the
    part of the run (`size_phases`) that trained at `size` (`tta_sizes`):
    a model saved during the first, smaller epochs at that smaller size.
    """
    cfg = run.cfg
    flip = cfg.tta in ("flip", "scales")
    sizes = tta_sizes(min(size, cfg.image_size), cfg.tta == "scales", stride(cfg.encoder)[0], size)
    bias = None
    if run.weights is not None and cfg.logit_adjust:
        bias = -cfg.logit_adjust * np.log(np.asarray(run.weights, np.float64))
    mirror = (", each with the mirror" if len(sizes) > 1 else ", with the mirror") if flip else ""
    names = [f"{s}x{s}" for s in sizes]
    listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    print(f"Saved model: runs the network at {listed}{mirror}")
    return lambda m: inference_model(m, run.saved_size, flip=flip, sizes=sizes, logit_bias=bias)


def make_callbacks(run: Run) -> list[keras.callbacks.Callback]:
    """The run's callbacks, in order; restored to the resumed epoch when resuming."""
    cfg = run.cfg
    # A resumed run's last epoch may still need its save (`catch_up`).
    size = size_of_epoch(cfg, max(0, run.initial_epoch - 1))
    if run.weights is not None and cfg.logit_adjust:
        print(
            f"Saved model: class scores divided by class_weight**{cfg.logit_adjust} (logit_adjust): "
            "the weights' pull toward rare classes, partly undone"
        )
    run.checkpoint = BestModelCheckpoint(run.out(MODEL_FILE), to_save=saved_model_maker(run, size))
    run.net_size = size
    run.history = HistoryCSV(run.out("history.csv"))
    run.non_finite = StopOnNonFinite()
    if run.resume:
        run.checkpoint.restore()
        run.history.restore(run.initial_epoch)
        if run.history.rows:
            # A kill between the resume state and the best-model save of the
            # last epoch: that epoch's model is the resumed one.
            run.checkpoint.catch_up(run.model, run.history.rows[-1])
    callbacks = [run.non_finite, run.history]
    plateau, run.early = schedule_callbacks(cfg)
    callbacks += [c for c in (plateau, run.early) if c is not None]
    run.log_dir = run.out("logs") if cfg.tensorboard else None
    if run.log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run.log_dir, write_graph=False))
    if cfg.progress_every:
        _, photos, truths = run.data.samples(cfg.num_progress, True)
        progress = ProgressPictures(
            photos, truths, cfg.output_dir, cfg.progress_every, run.log_dir, run.pad_to
        )
        if run.resume:
            progress.restore(run.initial_epoch)
        callbacks.append(progress)
    # The state names an epoch once its history row is on disk; the best
    # model comes after it, so it never names an epoch the history lacks.
    return callbacks + [ResumeState(run.out("resume")), run.checkpoint]


def fit(run: Run, callbacks: list[keras.callbacks.Callback]) -> None:
    """Train; draw the curves; stop with `TrainingError` on non-finite weights.

    Raises:
        Interrupted: On Ctrl-C, saying what is on disk.
        TrainingError: When the loss or weights stopped being finite.
    """
    cfg, checkpoint = run.cfg, run.checkpoint
    try:
        for size, first, end in size_phases(cfg):
            if end > run.initial_epoch and not run.model.stop_training:
                fit_at_size(run, callbacks, size, first, end)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(cfg.output_dir, checkpoint)) from None
    run.curves = plots.plot_history(run.history.columns(), cfg.output_dir)
    if run.non_finite.failed:
        kept = (
            f"the best model so far (epoch {checkpoint.best_epoch + 1}, validation mean IoU "
            f"{checkpoint.best:.4f}) is kept in {checkpoint.path}"
            if checkpoint.best_epoch is not None
            else "no epoch finished with finite weights, so no model was saved"
        )
        raise TrainingError(
            f"{run.non_finite.failed}: stopped; {kept}. Try a lower --learning-rate or --precision float32"
        )
    shutil.rmtree(run.out("resume"), ignore_errors=True)  # the run is complete
    if run.early is not None and run.early.stopped_epoch:
        print(
            f"Stopped early after epoch {run.early.stopped_epoch + 1}: validation mean IoU had not risen "
            f"for {cfg.early_stop} epochs"
        )


def fit_at_size(run: Run, callbacks: list[keras.callbacks.Callback], size: int, start: int, end: int) -> None:
    """Train the part of epochs `start` to `end` (0-based, exclusive) on photos of `size`x`size`.

    A resumed run trains only the part's epochs it has not done.
    """
    cfg = run.cfg
    train, val = run.train_ds, run.val_ds
    first = max(start, run.initial_epoch)
    if len(size_phases(cfg)) > 1:
        # Keras counts the epochs of each part: say where they sit in the run.
        span = epoch_span(first, end).capitalize()
        print(f"{span} of {cfg.epochs}: training and validating at {size}x{size}")
    if size != cfg.image_size:
        data, _ = open_data(dataclasses.replace(cfg, image_size=size), run.pad_to)
        train, val = for_workers(run, data)
        # Its layers take any size; only the input's shape check names the first.
        run.model.input_spec = None
    # The part's data are new to this process: draw past its epochs done.
    data_source.skip_epochs(train, first - start)
    if size != run.net_size:
        run.checkpoint.to_save = saved_model_maker(run, size)
        run.net_size = size
    run.model.fit(
        train,
        validation_data=val,
        epochs=end,
        initial_epoch=first,
        callbacks=callbacks,
        # The datasets shuffle themselves (seeded).
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )


def draw_predictions(run: Run) -> None:
    """Draw `pred_N.png` with the saved model itself, at the data's size.

    The pictures show what a user of the file gets (flip averaging
    included), not the network at its training size.
    """
    cfg, checkpoint = run.cfg, run.checkpoint
    if checkpoint.best_epoch is None or not cfg.num_preds:
        return
    try:
        best = keras.models.load_model(checkpoint.path)
        samples = run.data.samples(cfg.num_preds, False, run.saved_size)
        run.panels = write_prediction_panels(best, samples, cfg.output_dir, run.pad_to)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(cfg.output_dir, checkpoint)) from None


def report(run: Run) -> dict:
    """The run's summary, after saying what it wrote (a worker's scratch folder removed)."""
    cfg, checkpoint = run.cfg, run.checkpoint
    elapsed = time.perf_counter() - run.t_start
    best = checkpoint.best if checkpoint.best_epoch is not None else None
    if run.scratch:
        shutil.rmtree(run.scratch, ignore_errors=True)
        print(f"\nWorker done in {elapsed / 60:.1f} min; the chief wrote the outputs.")
        return {"best_val_mean_iou": best, "best_epoch": None, "model": None, "seconds": round(elapsed, 1)}
    summary = {
        "best_val_mean_iou": best,
        "best_epoch": None if checkpoint.best_epoch is None else checkpoint.best_epoch + 1,
        "model": checkpoint.path if checkpoint.best_epoch is not None else None,
        "seconds": round(elapsed, 1),
    }
    print(f"\nDone in {elapsed / 60:.1f} min. Outputs in {cfg.output_dir}/:")
    if summary["model"]:
        size = size_of_epoch(cfg, checkpoint.best_epoch)
        at = (
            ""
            if run.saved_size == size
            else f" at {size}x{size}; it works at {run.saved_size}x{run.saved_size}"
        )
        print(
            f"  {MODEL_FILE:18s} best model (epoch {summary['best_epoch']}, val mean IoU {checkpoint.best:.4f}{at})"
        )
    else:
        print("  no model saved: validation mean IoU was never finite")
    list_outputs(run)
    if best is not None:
        print(f"Best validation mean IoU: {checkpoint.best:.4f} (epoch {summary['best_epoch']})")
    return summary


def list_outputs(run: Run) -> None:
    """One line per file or folder the run wrote besides the model."""
    cfg = run.cfg
    for name, what in (
        ("history.csv", "per-epoch loss, accuracy, mean IoU (train and val), learning rate"),
        ("config.json", "the resolved configuration"),
        ("classes.json", "the 19 classes: name, trainId, colour"),
        (os.path.basename(run.arch), "model architecture"),
    ):
        print(f"  {name:18s} {what}")
    for p in run.curves:
        print(f"  {os.path.basename(p):18s} curve, train and validation")
    if run.panels:
        panels = "pred_1.png" if len(run.panels) == 1 else f"pred_1..{len(run.panels)}.png"
        print(
            f"  {panels:18s} photo | ground truth | prediction of the saved model, "
            f"at {run.saved_size}x{run.saved_size}"
        )
    if cfg.progress_every:
        print(
            f"  {'progress/':18s} validation samples before training and every {cfg.progress_every} epoch(s)"
        )
        print(f"  {'progress.gif':18s} the same pictures as an animation")
    if run.log_dir:
        print(f"  {'logs/':18s} TensorBoard: tensorboard --logdir {run.log_dir}")
