"""Training: configuration, precision, callbacks and the end-to-end run."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import errors, io, plots
from cityscapes_unet.data import source as data_source
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
    AUTOSIZE_BUDGET_S,
    AUTOSIZE_LADDER,
    DEPTH,
    TrainConfig,
    choose_autosize,
    cpu_has_bf16_matmul,
    gpu_available,
    measure_step_rate,
    resolve_config,
    resolve_xla,
    resume_config,
    validate_config,
)
from cityscapes_unet.train.losses import make_loss
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
    train_files, val_files, val_source, skipped = find_data(cfg.data_dir, cfg.limit, cfg.val_split, cfg.seed)
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
        io.write_json(
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
    io.write_json(out("classes.json"), uf.classes_table())
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
    curves = plots.plot_history(history.columns(), cfg.output_dir)
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
