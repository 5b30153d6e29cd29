"""The end-to-end training run: plan it, open its data, train it stage by stage, report.

`run_training` reads top to bottom: `plan_run` resolves everything the run
depends on into a frozen `Plan`; `train_in_folder` opens the data, builds
the network (or loads the resumed one), and `train_stages` fits one model
per input size (`settings.stages`), all sharing the network and the
optimizer; then the curves, the prediction panels and the summary.
"""

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
from dataclasses import dataclass

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import io, plots
from cityscapes_unet.data import source as data_source
from cityscapes_unet.data.files import display_name
from cityscapes_unet.errors import DistributeError, FolderInUse, Interrupted, TrainingError, UsageError
from cityscapes_unet.infer.saved_model import fixed_size_copy, network_of, saved_model
from cityscapes_unet.settings import (
    CONFIG_VERSION,
    DEPTH,
    Stage,
    TrainConfig,
    stage_of_epoch,
    stages,
    validate_config,
)
from cityscapes_unet.train import distribute
from cityscapes_unet.train.callbacks import (
    BestModelCheckpoint,
    HistoryCSV,
    ProgressPictures,
    ResumeState,
    StopOnNonFinite,
)
from cityscapes_unet.train.config import Machine, resolve_config, resolve_xla, resume_config, this_machine
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
from segmentation_model import build_encoder_unet, build_unet, sized_model, widths_from_base

# OneHotMeanIoU keeps an integer confusion matrix (exact counts; float32
# would drop increments past 2**24 pixels) and warns that float weights are
# cast to int. Ours are exactly 0 (ignored) or 1, so the cast is exact.
warnings.filterwarnings("ignore", message="You are passing weight as `float`")
# Datasets whose length Keras cannot know (tf.data after ignore_errors) end
# their first epoch by running out of data; that is expected here.
warnings.filterwarnings("ignore", message="Your input ran out of data")

#: The learning rate rises from this share of its peak over the first half
#: epoch, then falls along a cosine to the same share (docs/experiments.md).
WARMUP_START, WARMUP_EPOCHS = 0.02, 0.5
#: Samples in each progress picture.
PROGRESS_SAMPLES = 4


def build_network(cfg: TrainConfig) -> keras.Model:
    """The network of `cfg`, taking any input size: the UNet, or one on a pretrained encoder.

    An encoder starts from ImageNet weights; when they cannot be fetched
    (offline), one line says so and it starts from random ones.
    """
    if cfg.encoder == "unet":
        widths = widths_from_base(cfg.base_filters, DEPTH)
        return build_unet(None, uf.NUM_CLASSES, widths, residual=cfg.block == "residual")
    try:
        return build_encoder_unet(None, uf.NUM_CLASSES, cfg.encoder, "imagenet")
    except Exception as e:  # noqa: BLE001 - offline, blocked, or a broken download
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        print(
            f"--encoder {cfg.encoder}: could not fetch the ImageNet weights ({first}); training it from random weights"
        )
    return build_encoder_unet(None, uf.NUM_CLASSES, cfg.encoder, None)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam with the run's schedule: a linear warm-up to the peak rate, then a cosine down."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, round(WARMUP_EPOCHS * steps_per_epoch))
    peak = cfg.learning_rate
    schedule = keras.optimizers.schedules.CosineDecay(
        WARMUP_START * peak if warm else peak,
        decay_steps=total - warm,
        alpha=WARMUP_START,
        warmup_target=peak if warm else None,
        warmup_steps=warm,
    )
    # Under mixed_float16, compile() wraps it in a LossScaleOptimizer.
    return keras.optimizers.Adam(schedule)


def compile_for_size(network, optimizer, cfg: TrainConfig, weights, source_size: int, size: int, jit=False):
    """The model one stage fits: photos of `source_size` area-resized inside to `size`, then the network.

    Every stage's model shares the network and the optimizer, so training
    goes on from one size to the next. The loss and metrics get per-pixel
    sample weights (0 on ignored pixels): `weighted_metrics`, not `metrics`,
    or void pixels would count as class 0.
    """
    model = sized_model(network, source_size, size)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(cfg.loss, weights),
        weighted_metrics=training_metrics(),
        jit_compile=jit,
    )
    return model


@dataclass(frozen=True)
class Plan:
    """What a run was resolved to before it starts (`plan_run`); every later step reads it, none changes it.

    Attributes:
        cfg: The resolved configuration.
        policy: The dtype policy.
        reasons: Lines saying what was chosen and why.
        machine: This machine.
        dist: How the run spreads over devices.
        jit: `jit_compile` for `Model.compile`.
        pad_to: Batches are padded to a multiple of this (JAX replicas).
        resumed: `(epochs done, model file)` of the run being continued, or None.
        saved: The continued run's `config.json`, or None.
        scratch: A worker's temporary output folder, or None on the chief.
    """

    cfg: TrainConfig
    policy: str
    reasons: tuple[str, ...]
    machine: Machine
    dist: distribute.Distribution
    jit: bool | str
    pad_to: int
    resumed: tuple[int, str] | None
    saved: dict | None
    scratch: str | None

    def out(self, name: str) -> str:
        """Path of `name` in the run folder."""
        return os.path.join(self.cfg.output_dir, name)

    @property
    def initial_epoch(self) -> int:
        """Epochs done before this process: those of the continued run, else 0."""
        return self.resumed[0] if self.resumed else 0


def run_training(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    given: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Train end to end and write every output of a run.

    Args:
        cfg: Configuration (None fields are chosen for the machine).
        resume: Continue the run in `cfg.output_dir` from its last complete epoch.
        overwrite: Remove an earlier run in the folder instead of keeping it
            under `earlier/`; start anew over an unfinished run.
        given: Settings the user gave (checked against a resumed run's).

    Returns:
        A summary dict: best validation mean IoU and epoch, model path, seconds.

    Raises:
        UsageError: For bad settings or data.
        TrainingError: When a save fails or the loss stops being finite.
    """
    start = time.perf_counter()
    if resume and overwrite:
        raise UsageError("--resume and --overwrite: choose one (continue the run, or start anew over it)")
    cfg, saved = resume_config(cfg, given) if resume else (cfg, None)
    validate_config(cfg)
    if resume and cfg.distribute == "multiworker":
        raise UsageError("--resume with --distribute multiworker: resume on one machine, or start anew")
    try:
        # First: splitting the CPU into devices must precede the backend's start.
        dist = distribute.setup(cfg.distribute, distribute.cpu_replicas_from_env())
    except DistributeError as e:
        raise UsageError(str(e)) from None
    # Workers other than the chief write into a folder removed at the end.
    scratch = None if dist.is_chief else tempfile.mkdtemp(prefix="unet-worker-")
    cfg = dataclasses.replace(cfg, output_dir=scratch or cfg.output_dir)
    existed = os.path.isdir(cfg.output_dir)
    lock = None if scratch else lock_run_folder(cfg.output_dir)
    try:
        return train_in_folder(plan_run(cfg, dist, saved, overwrite, scratch), overwrite, start)
    finally:
        if lock is not None:
            lock.release()
            if not existed and os.listdir(cfg.output_dir) == [LOCK_FILE]:
                # Refused before writing anything: leave no folder behind.
                shutil.rmtree(cfg.output_dir, ignore_errors=True)


def lock_run_folder(output_dir: str) -> RunLock:
    """Take `output_dir` for this run, and remove what killed saves left there.

    Raises:
        UsageError: When another process runs there, or the folder cannot be written.
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


def plan_run(cfg: TrainConfig, dist, saved: dict | None, overwrite: bool, scratch: str | None) -> Plan:
    """Resolve the run on this machine, and check the folder and devices can take it.

    Raises:
        UsageError: For a batch the replicas cannot share, a missing
            TensorBoard, or a folder whose state contradicts `--resume`.
    """
    machine = this_machine()
    given_by = "the resumed run's config.json" if saved is not None else "the command line"
    cfg, policy, reasons = resolve_config(cfg, machine, given_by)
    if cfg.batch_size % dist.replicas:
        raise UsageError(
            f"--batch-size {cfg.batch_size}: must be a multiple of the {dist.replicas} replicas, "
            "so that every replica gets an equal share"
        )
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
    resumed = folder_state(cfg, saved, policy, overwrite)
    # JAX shards every batch into equal parts: pad the last one.
    pad_to = dist.replicas if keras.backend.backend() == "jax" else 1
    cpu_split = dist.replicas if dist.mode == "mirrored" and not machine.gpu else 1
    jit = resolve_xla(cfg.xla, machine, policy, cpu_split)
    return Plan(cfg, policy, tuple(reasons), machine, dist, jit, pad_to, resumed, saved, scratch)


def folder_state(
    cfg: TrainConfig, saved: dict | None, policy: str, overwrite: bool
) -> tuple[int, str] | None:
    """The resume state of the run folder: what `--resume` continues; refuse what cannot go on.

    Returns:
        `(epochs done, model file)` when resuming, else None.
    """
    folder = os.path.join(cfg.output_dir, "resume")
    state = ResumeState.load(folder) if os.path.isdir(folder) else None
    if saved is None:
        if state is not None and not overwrite:
            raise UsageError(
                f"--output-dir {cfg.output_dir}: holds an unfinished run ({state[0]} epochs done): continue "
                "it with --resume, start anew over it with --overwrite, or choose another --output-dir"
            )
        return None
    if state is None:
        raise UsageError(f"--resume: no complete epoch saved in {folder}: start a new run instead")
    if state[0] >= cfg.epochs:
        raise UsageError(f"--resume: the run in {cfg.output_dir} already finished its {cfg.epochs} epochs")
    if policy != saved.get("precision_policy", policy):
        raise UsageError(
            f"--resume: this machine resolves --precision {cfg.precision} to {policy}, the run used "
            f"{saved['precision_policy']}; pass --precision {saved['precision_policy']}"
        )
    return state


def open_data(plan: Plan) -> tuple[data_source.RunData, list[tuple[str, str]]]:
    """The run's training and validation data, and the unusable pair files skipped.

    Raises:
        UsageError: For missing or unusable data, or data that changed under a resumed run.
    """
    cfg = plan.cfg
    pipeline, _ = data_source.resolve_pipeline(cfg.pipeline, cfg.dataset)
    spec = data_source.DataSpec(cfg.batch_size, cfg.seed, cfg.augment, pipeline, plan.pad_to)
    skipped = []
    if cfg.dataset == "tfds-cityscapes":
        largest = max(s.size for s in stages(cfg))
        data = data_source.from_tfds(spec, largest, cfg.tfds_data_dir, cfg.tfds_manual_dir, cfg.limit)
    else:
        train, val, where, skipped = data_source.find_data(cfg.data_dir, cfg.limit, cfg.val_split, cfg.seed)
        data = data_source.from_pairs(train, val, where, spec)
    saved = plan.saved
    if saved is not None and (data.n_train, data.n_val) != (saved.get("train_files"), saved.get("val_files")):
        raise UsageError(
            f"--resume: the data changed: {data.n_train} training and {data.n_val} validation samples "
            f"now, {saved.get('train_files')} and {saved.get('val_files')} in the run"
        )
    return data, skipped


def epoch_span(first: int, end: int) -> str:
    """Name epochs `first` to `end` (0-based, exclusive) as the log counts them: "epoch 3", "epochs 1-4"."""
    return f"epoch {end}" if end == first + 1 else f"epochs {first + 1}-{end}"


def print_configuration(plan: Plan, data: data_source.RunData) -> None:
    """Say where the run runs, what it was configured with and why, and its data."""
    cfg, dist = plan.cfg, plan.dist
    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, {'GPU' if plan.machine.gpu else 'CPU'}"
    )
    if dist.mode != "none":
        print(f"Distributed: {dist.description}; global batch {cfg.batch_size}")
    if plan.scratch:
        print(f"Not the chief: this worker's outputs go to {plan.scratch} (removed at the end)")
    print("Configuration:")
    for line in plan.reasons:
        print(f"  {line}")
    print(f"  epochs = {cfg.epochs}, learning_rate = {cfg.learning_rate}, seed = {cfg.seed}")
    for stage in stages(cfg):
        if stage.size != cfg.image_size:
            part = "first" if stage.size < cfg.image_size else "final"
            count = getattr(cfg, f"{part}_epochs")
            print(
                f"  {epoch_span(stage.first, stage.end)} at {stage.size}x{stage.size} ({part}_size = {stage.size}, {part}_epochs = {count})"
            )
    print(f"  loss = {cfg.loss}, class_weights = {cfg.class_weights}")
    print(
        f"Data: {data.n_train} training samples, {data.n_val} validation samples ({data.val_source}); "
        f"{'tf.data' if data.pipeline == 'tf' else 'NumPy'} pipeline; photos {data.source_size}x{data.source_size}"
    )


def prepare_folder(plan: Plan, overwrite: bool, skipped: list[tuple[str, str]]) -> None:
    """Move an earlier run aside (or remove it), and list the unusable pair files."""
    os.makedirs(plan.cfg.output_dir, exist_ok=True)
    if plan.resumed is None:
        make_room(plan.cfg.output_dir, overwrite)
    if skipped:
        write_skipped(plan.out("skipped.txt"), skipped)
        names = ", ".join(f"{display_name(os.path.basename(p))} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"Skipped {len(skipped)} unusable files: {names}{more} (list: {plan.out('skipped.txt')})")
    if plan.resumed:
        print(f"Resuming {plan.cfg.output_dir} after epoch {plan.resumed[0]} of {plan.cfg.epochs}")


def loss_weights(plan: Plan, data: data_source.RunData) -> np.ndarray | None:
    """The class weights of the loss: the resumed run's, or from the training split's pixel shares."""
    if plan.saved is not None:
        values = plan.saved.get("class_weight_values")
        return None if values is None else np.array(values, np.float32)
    if plan.cfg.class_weights == "none":
        return None
    t0 = time.perf_counter()
    weights = class_weights(data.class_frequencies())  # also fills the decode cache
    print(f"Decoded {data.n_train} training samples in {time.perf_counter() - t0:.0f} s; class weights:")
    print("  " + ", ".join(f"{c.name} {w:.2f}" for c, w in zip(uf.CLASSES, weights, strict=True)))
    return weights


def network_and_optimizer(
    plan: Plan, n_train: int
) -> tuple[keras.Model, keras.optimizers.Optimizer, keras.Model | None]:
    """A new network and optimizer, or the resumed run's (with Adam's moments and step count).

    Returns:
        `(network, optimizer, resumed)`: `resumed` is the continued run's
        last model as saved (None for a new run).
    """
    with plan.dist.scope():
        if plan.resumed:
            loaded = keras.models.load_model(plan.resumed[1])
            return network_of(loaded)[0], loaded.optimizer, loaded
        network = build_network(plan.cfg)
        optimizer = make_optimizer(plan.cfg, math.ceil(n_train / plan.cfg.batch_size))
    if plan.dist.sync_batchnorm:
        distribute.set_sync_batchnorm(network, True)
    return network, optimizer, None


def write_run_files(plan: Plan, data: data_source.RunData, weights, network: keras.Model) -> str:
    """Write config.json (a new run's), classes.json and the architecture; return the picture's path."""
    cfg = plan.cfg
    if plan.resumed is None:
        io.write_json(
            plan.out("config.json"),
            {
                **dataclasses.asdict(cfg),
                "config_version": CONFIG_VERSION,
                "precision_policy": plan.policy,
                "train_files": data.n_train,
                "val_files": data.n_val,
                "val_source": data.val_source,
                "pipeline_used": data.pipeline,
                "keras_backend": keras.backend.backend(),
                "jit_compile": plan.jit,
                "class_weight_values": None if weights is None else [round(float(w), 4) for w in weights],
                "saved_model_size": data.source_size,
            },
        )
    io.write_json(plan.out("classes.json"), uf.classes_table())
    arch = get_model_arch(fixed_size_copy(network, cfg.image_size), cfg.output_dir)
    print(f"Model: {network.count_params():,} parameters; architecture in {arch}")
    print(
        f"Saved model: takes {data.source_size}x{data.source_size} photos (area-resized inside to the "
        f"network's size) and returns scores at {data.source_size}x{data.source_size}"
    )
    return arch


@dataclass(frozen=True)
class Callbacks:
    """The run's callbacks, in the order `fit` calls them, and the ones read after it."""

    all: tuple[keras.callbacks.Callback, ...]
    checkpoint: BestModelCheckpoint
    history: HistoryCSV
    non_finite: StopOnNonFinite
    early: keras.callbacks.EarlyStopping | None
    log_dir: str | None


def make_callbacks(plan: Plan, data: data_source.RunData, weights, resumed: keras.Model | None) -> Callbacks:
    """The callbacks of the run; restored to the resumed epoch when continuing one."""
    cfg = plan.cfg
    checkpoint = BestModelCheckpoint(plan.out(MODEL_FILE), to_save=lambda m: saved_model(m, weights))
    history = HistoryCSV(plan.out("history.csv"))
    non_finite = StopOnNonFinite()
    if resumed is not None:
        checkpoint.restore()
        history.restore(plan.initial_epoch)
        if history.rows:
            # A kill between the resume state and the best-model save of the
            # last epoch: that epoch's model is the resumed one.
            checkpoint.catch_up(resumed, history.rows[-1])
    early = None
    if cfg.early_stop:
        # The best model is on disk already: no weights to restore.
        early = keras.callbacks.EarlyStopping(monitor="val_mean_iou", mode="max", patience=cfg.early_stop)
    log_dir = plan.out("logs") if cfg.tensorboard else None
    extra = [early] if early else []
    if log_dir:
        extra.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    if cfg.progress_every:
        _, photos, truths = data.samples(PROGRESS_SAMPLES, True)
        progress = ProgressPictures(photos, truths, cfg.output_dir, cfg.progress_every, log_dir, plan.pad_to)
        if resumed is not None:
            progress.restore(plan.initial_epoch)
        extra.append(progress)
    # The state names an epoch once its history row is on disk; the best
    # model comes after it, so it never names an epoch the history lacks.
    ordered = (non_finite, history, *extra, ResumeState(plan.out("resume")), checkpoint)
    return Callbacks(ordered, checkpoint, history, non_finite, early, log_dir)


def for_workers(plan: Plan, train, val) -> tuple[object, object]:
    """The datasets of a stage, sharded when several workers train."""
    if plan.dist.mode != "multiworker":
        return train, val
    if not hasattr(train, "with_options"):
        raise UsageError("--distribute multiworker: needs the tf.data pipeline (--pipeline tf)")
    import tensorflow as tf  # a tf.data pipeline is running: TensorFlow is loaded

    # Every worker reads the same seeded data and keeps its share of each batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return train.with_options(options), val.with_options(options)


def fit_stage(plan: Plan, data, model: keras.Model, stage: Stage, callbacks: Callbacks) -> bool:
    """Train the epochs of `stage` that are not done yet; return whether training should go on."""
    cfg = plan.cfg
    first = max(stage.first, plan.initial_epoch)
    if len(stages(cfg)) > 1:
        # Keras counts the epochs of each stage: say where they sit in the run.
        print(
            f"{epoch_span(first, stage.end).capitalize()} of {cfg.epochs}: training and validating at {stage.size}x{stage.size}"
        )
    distribute.prebuild(model, plan.dist)
    train, val = for_workers(plan, *data.datasets(stage.size))
    # The datasets are new to this process: draw past the stage's epochs done.
    data_source.skip_epochs(train, first - stage.first)
    model.fit(
        train,
        validation_data=val,
        epochs=stage.end,
        initial_epoch=first,
        callbacks=list(callbacks.all),
        shuffle=False,  # the datasets shuffle themselves (seeded)
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return not model.stop_training


def train_stages(plan: Plan, data, network, optimizer, weights, callbacks: Callbacks) -> list[str]:
    """Train every stage in turn, one model per input size sharing the network and the optimizer.

    Returns:
        The curve pictures written.

    Raises:
        Interrupted: On Ctrl-C, saying what is on disk.
        TrainingError: When the loss or weights stopped being finite.
    """
    checkpoint = callbacks.checkpoint
    try:
        for stage in (s for s in stages(plan.cfg) if s.end > plan.initial_epoch):
            with plan.dist.scope():
                model = compile_for_size(
                    network, optimizer, plan.cfg, weights, data.source_size, stage.size, plan.jit
                )
            # Under mixed_float16, compile wrapped it in loss scaling: keep that state too.
            optimizer = model.optimizer
            if not fit_stage(plan, data, model, stage, callbacks):
                break
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(plan.cfg.output_dir, checkpoint)) from None
    curves = plots.plot_history(callbacks.history.columns(), plan.cfg.output_dir)
    if callbacks.non_finite.failed:
        kept = (
            f"the best model so far (epoch {checkpoint.best_epoch + 1}, validation mean IoU "
            f"{checkpoint.best:.4f}) is kept in {checkpoint.path}"
            if checkpoint.best_epoch is not None
            else "no epoch finished with finite weights, so no model was saved"
        )
        raise TrainingError(
            f"{callbacks.non_finite.failed}: stopped; {kept}. Try a lower --learning-rate or --precision float32"
        )
    shutil.rmtree(plan.out("resume"), ignore_errors=True)  # the run is complete
    early = callbacks.early
    if early is not None and early.stopped_epoch:
        print(
            f"Stopped early after epoch {early.stopped_epoch + 1}: validation mean IoU had not risen for {plan.cfg.early_stop} epochs"
        )
    return curves


def interrupted_message(output_dir: str | None, checkpoint: BestModelCheckpoint | None = None) -> str:
    """One line for Ctrl-C: what is on disk, and how to continue."""
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


def draw_predictions(plan: Plan, data: data_source.RunData, checkpoint: BestModelCheckpoint) -> list[str]:
    """Draw `pred_N.png` with the saved model itself: what a user of the file gets."""
    if checkpoint.best_epoch is None or not plan.cfg.num_preds:
        return []
    try:
        best = keras.models.load_model(checkpoint.path)
        samples = data.samples(plan.cfg.num_preds, False)
        return write_prediction_panels(best, samples, plan.cfg.output_dir, plan.pad_to)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(plan.cfg.output_dir, checkpoint)) from None


def train_in_folder(plan: Plan, overwrite: bool, start: float) -> dict:
    """The run in its locked folder: data, network, stages, pictures; returns the summary."""
    data, skipped = open_data(plan)
    print_configuration(plan, data)
    prepare_folder(plan, overwrite, skipped)
    keras.utils.set_random_seed(plan.cfg.seed)
    keras.mixed_precision.set_global_policy(plan.policy)
    weights = loss_weights(plan, data)
    network, optimizer, resumed = network_and_optimizer(plan, data.n_train)
    arch = write_run_files(plan, data, weights, network)
    xla = {True: "on", False: "off"}.get(plan.jit, "Keras' choice")
    print(f"XLA: {xla} (--xla {plan.cfg.xla})")
    callbacks = make_callbacks(plan, data, weights, resumed)
    curves = train_stages(plan, data, network, optimizer, weights, callbacks)
    panels = draw_predictions(plan, data, callbacks.checkpoint)
    return report(plan, callbacks, data.source_size, [arch, *curves], panels, time.perf_counter() - start)


def report(
    plan: Plan, callbacks: Callbacks, source_size: int, pictures: list[str], panels: list[str], seconds: float
) -> dict:
    """Say what the run wrote, and return its summary (a worker's scratch folder removed)."""
    checkpoint = callbacks.checkpoint
    found = checkpoint.best_epoch is not None
    summary = {
        "best_val_mean_iou": checkpoint.best if found else None,
        "best_epoch": checkpoint.best_epoch + 1 if found and not plan.scratch else None,
        "model": checkpoint.path if found and not plan.scratch else None,
        "seconds": round(seconds, 1),
    }
    if plan.scratch:
        shutil.rmtree(plan.scratch, ignore_errors=True)
        print(f"\nWorker done in {seconds / 60:.1f} min; the chief wrote the outputs.")
        return summary
    print(f"\nDone in {seconds / 60:.1f} min. Outputs in {plan.cfg.output_dir}/:")
    if found:
        size = stage_of_epoch(plan.cfg, checkpoint.best_epoch).size
        print(
            f"  {MODEL_FILE:18s} best model (epoch {summary['best_epoch']}, val mean IoU {checkpoint.best:.4f} at "
            f"{size}x{size}; it takes {source_size}x{source_size} photos)"
        )
    else:
        print("  no model saved: validation mean IoU was never finite")
    listed = [("history.csv", "per-epoch loss, accuracy, mean IoU (train and val), learning rate"),
              ("config.json", "the resolved configuration"), ("classes.json", "the classes: name, trainId, colour")]  # fmt: skip
    listed += [
        (os.path.basename(p), "architecture" if i == 0 else "curve, train and validation")
        for i, p in enumerate(pictures)
    ]
    if panels:
        name = "pred_1.png" if len(panels) == 1 else f"pred_1..{len(panels)}.png"
        listed.append(
            (name, f"photo | ground truth | prediction of the saved model, at {source_size}x{source_size}")
        )
    if plan.cfg.progress_every:
        listed += [("progress/", f"validation samples before training and every {plan.cfg.progress_every} epoch(s)"),
                   ("progress.gif", "the same pictures as an animation")]  # fmt: skip
    if callbacks.log_dir:
        listed.append(("logs/", f"TensorBoard: tensorboard --logdir {callbacks.log_dir}"))
    for name, what in listed:
        print(f"  {name:18s} {what}")
    if found:
        print(f"Best validation mean IoU: {checkpoint.best:.4f} (epoch {summary['best_epoch']})")
    return summary
