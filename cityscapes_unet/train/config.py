"""The configuration of a training run: its fields, their checks, the machine's defaults.

A `TrainConfig` comes from the command line (`main.py`): the dataclass
defaults, then the fields of a saved `config.json` (`--config`), then
`--set KEY=VALUE`, then the flags written out. `resolve_config` fills what
is left to the machine; the result is saved as the run's `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass

import keras

from cityscapes_unet.data import source as data_source
from cityscapes_unet.data.decode import AUGMENTS
from cityscapes_unet.data.files import CARVES
from cityscapes_unet.errors import UsageError
from cityscapes_unet.train.distribute import DISTRIBUTE

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


CLASS_WEIGHTS = ("auto", "none")


SCHEDULES = ("cosine", "constant", "plateau")


LOSSES = ("ce", "ce_dice", "ce_lovasz", "focal")


TTAS = ("none", "flip", "scales")


BLOCKS = ("plain", "residual")


XLA_MODES = ("auto", "on", "off")


ENCODERS = ("unet", "resnet50", "efficientnetb0")


DEPTH = 4  # down-sampling levels of the UNet


# What a run leaves to the machine, by machine kind (`machine_kind`), with
# why in a few words. A CPU run is meant to finish 10 epochs in about half
# an hour on a couple of cores: small inputs, and batches of 8, since more
# steps learn more in a short run than bigger batches. Such short runs
# underfit, so they go without the flip; a GPU's longer runs keep it. Wider
# levels buy more than extra resolution at the same cost, and bf16 matrix
# units pay for wider levels and residual blocks, and for the last epochs at
# a larger size (`final_size`), bought back in part by the first epochs at a
# smaller one (`first_size`; 0: one size throughout). A GPU takes the
# classic UNet at the data's full size. Measurements: docs/experiments.md.
MACHINE_DEFAULTS = {
    "cpu": (
        {
            "image_size": 96,
            "first_size": 0,
            "final_size": 0,
            "base_filters": 16,
            "batch_size": 8,
            "augment": "none",
            "block": "plain",
        },
        "small enough for a short CPU run, which underfits: no flip",
    ),
    "cpu_bf16": (
        {
            "image_size": 96,
            "first_size": 80,
            "final_size": 144,
            "base_filters": 24,
            "batch_size": 8,
            "augment": "none",
            "block": "residual",
        },
        "bf16 matrix units afford wider levels, residual blocks and larger last epochs",
    ),
    "gpu": (
        {
            "image_size": 256,
            "first_size": 0,
            "final_size": 0,
            "base_filters": 64,
            "batch_size": 16,
            "augment": "flip",
            "block": "plain",
        },
        "the classic UNet at the data's full size, with the flip for longer runs",
    ),
}


#: Fields without a flag of their own: given as `--set KEY=VALUE` (or in a
#: `--config` file). Messages about them name them that way (`flag_text`).
SET_ONLY = (
    "first_size",
    "first_epochs",
    "final_size",
    "final_epochs",
    "warmup_epochs",
    "early_stop",
    "val_split",
    "carve",
    "block",
    "tta",
    "logit_adjust",
    "class_weights",
    "class_weight_power",
    "lovasz_weight",
    "encoder_weights",
    "num_progress",
    "cpu_replicas",
    "tfds_data_dir",
    "tfds_manual_dir",
)


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
    first_size: int | None = None
    first_epochs: int = 4
    final_size: int | None = None
    final_epochs: int = 4
    base_filters: int | None = None
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    early_stop: int = 0
    val_split: float = 0.15
    carve: str = "blocks"
    seed: int = 42
    precision: str = "auto"
    augment: str | None = None
    block: str | None = None
    tta: str = "scales"
    logit_adjust: float = 0.3
    class_weights: str = "auto"
    class_weight_power: float = 0.2
    loss: str = "ce_lovasz"
    lovasz_weight: float = 1.0
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


#: Field name -> `(type, optional)`: `(int, True)` for `int | None`.
FIELD_TYPES = {
    name: (
        next(a for a in typing.get_args(t) if a is not type(None)) if isinstance(t, types.UnionType) else t,
        isinstance(t, types.UnionType),
    )
    for name, t in typing.get_type_hints(TrainConfig).items()
}


def flag_text(field: str, value) -> str:
    """How a user gives `field = value`: `--image-size 96`, or `--set tta=flip` for `SET_ONLY`."""
    if field in SET_ONLY:
        return f"--set {field}={value}"
    return f"--{field.replace('_', '-')} {value}"


_BOOLS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _parse(kind: type, text: str):
    """`text` as a `kind` (bool, int, float); ValueError when it is none."""
    if kind is not bool:
        return kind(text)
    if text.lower() not in _BOOLS:
        raise ValueError(text)
    return _BOOLS[text.lower()]


def typed_value(field: str, raw, where: str):
    """`raw` as a value of `field`'s type: a string is parsed, a JSON value checked.

    For a field that may be None (`int | None`), an empty string is None
    (and for a number, `none` too).

    Raises:
        UsageError: Naming `where` when `raw` is no value of the type.
    """
    kind, optional = FIELD_TYPES[field]
    if isinstance(raw, str):
        if optional and (raw == "" or (kind is not str and raw.strip().lower() in ("none", "null"))):
            return None
        if kind is str:
            return raw
        try:
            return _parse(kind, raw.strip())
        except ValueError:
            pass
    elif raw is None and optional:
        return None
    elif kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    elif isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    wanted = _KIND_WORDS[kind] + (" or empty" if optional else "")
    raise UsageError(f"{where}: {field} must be {wanted}, not {raw!r}")


def parse_setting(item: str) -> tuple[str, object]:
    """`KEY=VALUE` of `--set` as `(field, value)`, the value parsed by the field's type.

    Raises:
        UsageError: For no `=`, an unknown key or a value of the wrong type.
    """
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise UsageError(f"--set {item}: expected KEY=VALUE")
    if key not in FIELD_TYPES:
        raise UsageError(f"--set {item}: no setting {key!r}; the settings: {', '.join(FIELD_TYPES)}")
    return key, typed_value(key, text, f"--set {item}")


def saved_fields(saved: dict) -> dict:
    """The `TrainConfig` fields of a saved `config.json` (older runs' spellings updated)."""
    fields = {k: saved[k] for k in FIELD_TYPES if k in saved}
    if isinstance(fields.get("augment"), bool):  # written before --augment took a mode
        fields["augment"] = "flip" if fields["augment"] else "none"
    return fields


# Recipes shipped with the project, for `--config NAME` (docs/experiments.md
# has the runs behind each): `long` is the long CPU recipe of the README.
PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")


def presets() -> list[str]:
    """The names `--config` takes besides a file: the shipped recipes."""
    return sorted(name[: -len(".json")] for name in os.listdir(PRESETS_DIR) if name.endswith(".json"))


def read_config_file(path: str) -> dict:
    """The fields of the `config.json` at `path` (`--config`), typed.

    Args:
        path: A saved `config.json`, or the name of a shipped recipe
            (`presets`) where no such file exists.

    Raises:
        UsageError: When the file is missing, is not JSON, or holds a value
            of the wrong type.
    """
    if not os.path.isfile(path) and path in presets():
        path = os.path.join(PRESETS_DIR, f"{path}.json")
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: file not found (shipped recipes: {', '.join(presets())})")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {path}: not a JSON file ({e})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--config {path}: not a config.json (no object of settings)")
    return {k: typed_value(k, v, f"--config {path}") for k, v in saved_fields(saved).items()}


def config_from_command_line(
    given: dict, settings: typing.Sequence[str] = (), config_file: str | None = None
) -> tuple[TrainConfig, set[str]]:
    """The configuration of a command line, and the names of the fields it sets.

    Args:
        given: Field -> value of the flags written out on the command line.
        settings: The `--set KEY=VALUE` items, in order (a later one wins).
        config_file: A saved `config.json` whose fields replace the defaults.

    Raises:
        UsageError: For a bad `--config` or `--set`, or a field set both by
            `--set` and by its flag.
    """
    fields = read_config_file(config_file) if config_file else {}
    for item in settings:
        key, value = parse_setting(item)
        if key in given:
            raise UsageError(
                f"--set {item}: {key} is given as {flag_text(key, given[key])} too; give it once"
            )
        fields[key] = value
    fields.update(given)
    return TrainConfig(**fields), set(fields)


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
    turns it on for a CPU in two cases where it is faster
    (`bench/train_speed.py`): float32, and bfloat16 without bf16 matrix
    units (whose uncompiled kernels are slow). A CPU with bf16 units running
    `mixed_bfloat16` keeps TensorFlow's own kernels (oneDNN uses the units
    directly).

    Args:
        mode: `auto`, `on` or `off`.
        on_gpu: Whether a GPU is visible.
        policy: The dtype policy in use.
        bf16_units: Whether the CPU has bf16 matrix units.
        cpu_replicas: Replicas of a TensorFlow strategy over logical CPU
            devices (`--set cpu_replicas=N`). XLA cannot run those: a compiled
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
            f"--xla on: XLA cannot compile a step over {cpu_replicas} CPU replicas "
            f"({flag_text('cpu_replicas', cpu_replicas)}); use --xla auto or off"
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


def stride(encoder: str) -> tuple[int, str]:
    """What the image size must be a multiple of for `encoder`, and why."""
    if encoder == "unet":
        return 2**DEPTH, f"2^{DEPTH} down-sampling levels"
    return 32, f"the {encoder} encoder's stride"


def _one_of(options: tuple[str, ...], optional: bool = False):
    """A check and its message: the value is one of `options` (or None)."""
    return (lambda v, c: (optional and v is None) or v in options), f"must be one of {', '.join(options)}"


def _at_least(n: int, optional: bool = False):
    """A check: the value is at least `n` (or None)."""
    return lambda v, c: (optional and v is None) or v >= n


#: `(field, check(value, cfg), message)`, checked in order; a message may
#: be a function of the configuration.
CHECKS = (
    ("epochs", _at_least(1), "must be at least 1"),
    ("batch_size", _at_least(1, True), "must be at least 1"),
    ("base_filters", _at_least(1, True), "must be at least 1"),
    ("learning_rate", lambda v, c: v > 0 and math.isfinite(v), "must be a positive number"),
    ("warmup_epochs", lambda v, c: 0 <= v < c.epochs, "must be 0 or more and fewer than --epochs"),
    ("early_stop", _at_least(0), "must be 0 (off) or a number of epochs"),
    ("val_split", lambda v, c: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    ("limit", _at_least(2, True), "must be at least 2 (one train and one validation pair)"),
    ("num_preds", _at_least(0), "must be 0 or more"),
    ("progress_every", _at_least(0), "must be 0 (off) or more"),
    ("num_progress", _at_least(1), "must be at least 1"),
    ("carve", *_one_of(CARVES)),
    ("precision", *_one_of(PRECISIONS)),
    ("schedule", *_one_of(SCHEDULES)),
    ("loss", *_one_of(LOSSES)),
    ("augment", *_one_of(AUGMENTS, optional=True)),
    ("block", *_one_of(BLOCKS, optional=True)),
    ("tta", *_one_of(TTAS)),
    ("logit_adjust", lambda v, c: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    ("encoder", *_one_of(ENCODERS)),
    ("encoder_weights", lambda v, c: v in ("imagenet", "none"), "must be imagenet or none"),
    ("xla", *_one_of(XLA_MODES)),
    ("distribute", *_one_of(DISTRIBUTE)),
    ("cpu_replicas", _at_least(1), "must be at least 1"),
    ("dataset", *_one_of(data_source.DATASETS)),
    ("pipeline", *_one_of(data_source.PIPELINES)),
    ("class_weights", *_one_of(CLASS_WEIGHTS)),
    ("class_weight_power", lambda v, c: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    (
        "lovasz_weight",
        lambda v, c: v >= 0.0 and (v == 1.0 or c.loss == "ce_lovasz"),
        "must be at least 0, and other than 1 only with --loss ce_lovasz",
    ),
    (
        "image_size",
        lambda v, c: v is None or (v >= stride(c.encoder)[0] and v % stride(c.encoder)[0] == 0),
        lambda c: "must be a positive multiple of {} ({})".format(*stride(c.encoder)),
    ),
    *(
        (
            field,
            lambda v, c: v is None or v == 0 or (v > 0 and v % stride(c.encoder)[0] == 0),
            lambda c: "must be 0 (off) or a positive multiple of {} ({})".format(*stride(c.encoder)),
        )
        for field in ("first_size", "final_size")
    ),
    ("first_epochs", _at_least(1), "must be at least 1"),
    ("final_epochs", _at_least(1), "must be at least 1"),
)


def size_phases(cfg: TrainConfig) -> list[tuple[int, int, int]]:
    """The input size of each part of a resolved run, in order.

    With `final_size` above `image_size`, the last `final_epochs` epochs
    (never the first) train and validate at `final_size`; with `first_size`
    below it, the first `first_epochs` epochs (never the last) at
    `first_size`: coarse shapes cheaply first, the network's last steps at
    the finer size, most epochs at `image_size` in between.

    Args:
        cfg: Resolved configuration.

    Returns:
        `[(size, first_epoch, end_epoch), ...]`, epochs counted from 0,
        `end_epoch` exclusive, parts without epochs left out; one part
        when there is neither a first nor a final size.
    """
    switch = cfg.epochs
    if cfg.final_size and cfg.final_size > cfg.image_size:
        switch = max(1, cfg.epochs - cfg.final_epochs)
    start = 0
    if cfg.first_size and cfg.first_size < cfg.image_size:
        start = min(cfg.first_epochs, switch, cfg.epochs - 1)
    parts = [
        (cfg.first_size, 0, start),
        (cfg.image_size, start, switch),
        (cfg.final_size, switch, cfg.epochs),
    ]
    return [part for part in parts if part[2] > part[1]]


def validate_config(cfg: TrainConfig) -> None:
    """Raise `UsageError` naming the first setting whose value cannot work (see `CHECKS`)."""
    for field, check, message in CHECKS:
        value = getattr(cfg, field)
        if not check(value, cfg):
            why = message(cfg) if callable(message) else message
            raise UsageError(f"{flag_text(field, value)}: {why}")


def machine_kind(on_gpu: bool, policy: str) -> str:
    """The key of `MACHINE_DEFAULTS` for this machine and dtype policy.

    The bf16 defaults need both the units and the policy that uses them:
    float32 asked for on such a CPU runs at the float32 default's speed.
    """
    if on_gpu:
        return "gpu"
    if policy == "mixed_bfloat16" and cpu_has_bf16_matmul():
        return "cpu_bf16"
    return "cpu"


def resolve_config(
    cfg: TrainConfig, on_gpu: bool, given_by: str = "the command line"
) -> tuple[TrainConfig, str, list[str]]:
    """Fill the machine-dependent defaults and choose the precision.

    Args:
        cfg: Configuration with None for "choose".
        on_gpu: Whether a GPU is visible.
        given_by: Where the values set in `cfg` come from, for the reasons.

    Returns:
        `(resolved_config, precision_policy, reasons)`: reasons are lines
        saying what was chosen and why.
    """
    validate_config(cfg)
    policy, why_policy = resolve_precision(cfg.precision, on_gpu)
    kind = machine_kind(on_gpu, policy)
    defaults, why = MACHINE_DEFAULTS[kind]
    notes = dict.fromkeys(defaults, f"{kind} default")
    if cfg.encoder != "unet":
        defaults = dict(defaults)
        if defaults["image_size"] % 32:
            defaults["image_size"] = 128
            notes["image_size"] = f"the {kind} default rounded up to a multiple of 32 for {cfg.encoder}"
        notes["base_filters"] = f"not used by the {cfg.encoder} UNet: its decoder widths are fixed"
        notes["block"] = f"not used by the {cfg.encoder} UNet: its decoder has plain conv blocks"
    if cfg.image_size is not None or cfg.encoder != "unet":
        # The first and final sizes belong with the default size they surround.
        defaults = {**defaults, "first_size": 0, "final_size": 0}
        for key in ("first_size", "final_size"):
            notes[key] = "one size throughout: --image-size or --encoder given"
    reasons = [f"machine = {kind} ({why})"]
    changes = {}
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            changes[key] = value
            reasons.append(f"{key} = {value} ({notes[key]})")
        else:
            reasons.append(f"{key} = {getattr(cfg, key)} (from {given_by})")
    cfg = dataclasses.replace(cfg, **changes)
    validate_config(cfg)
    reasons.append(f"precision = {policy} ({why_policy})")
    return cfg, policy, reasons


#: Settings a resumed run may change: they do not affect what is learned.
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
        `(config, saved)`: the saved configuration (with the free settings
        of `RESUME_FREE` taken from `cfg`), and the raw saved `config.json`.

    Raises:
        UsageError: If there is no run to resume, or a given setting
            contradicts the saved configuration.
    """
    path = os.path.join(cfg.output_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no config.json in {cfg.output_dir}: there is no run to resume")
    with open(path) as f:
        saved = json.load(f)
    fields = saved_fields(saved)
    fields.setdefault("block", "plain")  # written before --block: plain conv blocks
    fields.setdefault("carve", "random")  # written before the block carve
    fields.setdefault("class_weight_power", 0.5)  # written before the setting
    fields.setdefault("lovasz_weight", 1.0)  # written before the setting
    fields.setdefault("final_size", 0)  # written before the setting: one size throughout
    fields.setdefault("first_size", 0)  # written before the setting: no smaller first epochs
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
                f"--resume: {flag_text(key, mine)} contradicts the run in {cfg.output_dir} "
                f"({theirs}); leave the flag out, or start a new run in another --output-dir"
            )
    return TrainConfig(**fields), saved
