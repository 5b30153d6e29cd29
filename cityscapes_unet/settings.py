"""Every setting of the command line, written once: name, type, default, choices, help.

A leaf: no Keras, no TensorFlow, so `main.py` builds its parsers from here
before a backend loads. Each command's options are a small dataclass whose
fields carry their help and choices (`option`); `parser_for` turns one into
an `argparse` parser and `flag_tables` into the README's tables (a test
checks that the README holds it). Training's options are `TrainConfig`,
saved as a run's `config.json`; `upgrade_config` reads older ones.

The defaults a machine decides (`MACHINE_DEFAULTS`) are None in
`TrainConfig`; `train.config.resolve_config` fills them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field

from cityscapes_unet.errors import UsageError

#: Down-sampling levels of the project's UNet; its inputs are multiples of 2**DEPTH.
DEPTH = 4

#: Pretrained encoders (`--encoder`) besides the project's own UNet.
ENCODERS = ("resnet50", "efficientnetb0")

#: Test-time averaging of `predict`, `evaluate` and `export`: `none` runs the
#: network once; `flip` also on the mirrored photo; `scales` both at the
#: network's size and one step below and above it.
TTAS = ("none", "flip", "scales")

#: What runs a model in `predict`: `auto` picks by the file's suffix.
ENGINES = ("auto", "keras", "openvino")

#: Export formats and the suffix of what each writes (a SavedModel is a folder).
FORMATS = {"openvino": ".xml", "tf_saved_model": "", "keras": ".keras"}

# What a run leaves to the machine, by machine kind, with why in a few words.
# A CPU run is meant to finish 10 epochs in about half an hour on a couple of
# cores: small inputs and batches of 8, since more steps learn more in a short
# run than bigger batches; such runs underfit, so no flip. bf16 matrix units
# pay for wider levels, residual blocks and the last epochs at a larger size,
# bought back in part by the first epochs at a smaller one (0: off). A GPU
# takes the classic UNet at the data's full size. Runs: docs/experiments.md.
MACHINE_DEFAULTS = {
    "cpu": (
        dict(image_size=96, first_size=0, final_size=0, base_filters=16, batch_size=8, augment="none", block="plain"),
        "small enough for a short CPU run, which underfits: no flip",
    ),
    "cpu_bf16": (
        dict(image_size=96, first_size=80, final_size=144, base_filters=24, batch_size=8, augment="none", block="residual"),
        "bf16 matrix units afford wider levels, residual blocks and larger last epochs",
    ),
    "gpu": (
        dict(image_size=256, first_size=0, final_size=0, base_filters=64, batch_size=16, augment="flip", block="plain"),
        "the classic UNet at the data's full size, with the flip for longer runs",
    ),
}  # fmt: skip


def option(default, help: str, choices: tuple | None = None, flag: bool = True, positional: bool = False):
    """A dataclass field that is also a command-line option.

    Args:
        default: The default; None for a training setting the machine decides.
        help: One line for `--help` and the README.
        choices: The values it takes, if a closed set.
        flag: False for a setting given only as `--set KEY=VALUE` (or in a
            `--config` file).
        positional: A positional argument (one or more values).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "positional": positional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json`. None: the machine's choice."""

    data_dir: str = option("images", "folder with train/ (and val/), or the pairs themselves")
    output_dir: str = option("output", "where results go")
    epochs: int = option(10, "training epochs")
    batch_size: int | None = option(None, "global batch size")
    image_size: int | None = option(None, "side of the square network input, a multiple of 16")
    base_filters: int | None = option(None, "first UNet width; widths double per level")
    block: str | None = option(
        None, "the UNet's conv blocks; residual adds each block's input", ("plain", "residual")
    )
    first_size: int | None = option(
        None, "train and validate the first epochs at this size (0: off)", flag=False
    )
    first_epochs: int = option(4, "how many epochs first_size takes", flag=False)
    final_size: int | None = option(
        None, "train and validate the last epochs at this size (0: off)", flag=False
    )
    final_epochs: int = option(4, "how many epochs final_size takes", flag=False)
    learning_rate: float = option(3e-3, "Adam's peak rate (cosine decay after a half-epoch warm-up)")
    seed: int = option(42, "split, shuffling, augmentation, initialisation")
    precision: str = option("auto", "dtype policy; auto: the fastest this machine runs well",
                            ("auto", "float32", "mixed_float16", "mixed_bfloat16"))  # fmt: skip
    augment: str | None = option(None, "random horizontal flip in training", ("none", "flip"))
    loss: str = option(
        "ce_lovasz", "cross-entropy, plus the Lovasz-softmax surrogate of mean IoU", ("ce", "ce_lovasz")
    )
    class_weights: str = option("auto", "auto: rare classes weigh more in the loss", ("auto", "none"))
    encoder: str = option("unet", "the UNet, or a UNet decoder on an ImageNet encoder", ("unet", *ENCODERS))
    xla: str = option("auto", "compile the training step with XLA", ("auto", "on", "off"))
    val_split: float = option(0.15, "share of train/ held out when there is no val/")
    early_stop: int = option(0, "stop when validation mean IoU has not risen for N epochs (0: off)")
    limit: int | None = option(None, "only the first N pairs of train/ (and val/): smoke runs")
    num_preds: int = option(4, "validation samples drawn as pred_N.png")
    progress_every: int = option(1, "progress pictures every N epochs (0: off)")
    tensorboard: bool = option(False, "log scalars and pictures to OUTPUT_DIR/logs")
    distribute: str = option("none", "data-parallel training on local GPUs or TF_CONFIG workers",
                             ("none", "mirrored", "multiworker"))  # fmt: skip
    dataset: str = option(
        "pairs", "the pair JPEGs, or the official Cityscapes through TFDS", ("pairs", "tfds-cityscapes")
    )
    pipeline: str = option("auto", "input pipeline: tf.data, or NumPy/OpenCV; auto: tf where installed",
                           ("auto", "tf", "numpy"))  # fmt: skip
    tfds_manual_dir: str | None = option(
        None, "with tfds-cityscapes: the folder of the downloaded zips", flag=False
    )
    tfds_data_dir: str | None = option(None, "with tfds-cityscapes: where TFDS keeps its records", flag=False)


#: Settings a resumed run may change: they do not change what is learned.
RESUME_FREE = ("output_dir", "num_preds", "progress_every", "tensorboard", "distribute", "pipeline")


@dataclass
class EvaluateOptions:
    """`main.py evaluate`: score a model."""

    model: str = option("output/unet_model.keras", "the .keras model to score")
    data_dir: str | None = option(
        None, "pairs to score (DIR/val, else DIR); default: the run's validation split"
    )
    output_dir: str | None = option(None, "report folder (default: eval/ beside the model)")
    batch_size: int = option(16, "prediction batch size")
    tta: str = option("none", "test-time averaging (flip: 2 passes; scales: 6)", TTAS)


@dataclass
class PredictOptions:
    """`main.py predict`: segment photos and videos."""

    inputs: list = option([], "JPEG or PNG photos, videos, or folders of them", positional=True)
    model: str = option("output/unet_model.keras", "a .keras model, or an .xml written by 'main.py export'")
    engine: str = option("auto", "what runs the model; auto: from --model's suffix", ENGINES)
    out: str = option("output/predictions", "folder for the results")
    pairs: bool = option(False, "inputs are photo | colour-label pairs: add NAME_panel.png and scores")
    batch_size: int = option(8, "prediction batch size")
    frame_ids: bool = option(False, "with videos: also write each frame's ids as NAME_ids/FRAME.png")
    tta: str = option("none", "test-time averaging (flip: 2 passes; scales: 6); .keras models only", TTAS)


@dataclass
class ExportOptions:
    """`main.py export`: write the model for another runtime, checked against Keras."""

    model: str = option("output/unet_model.keras", "the .keras model to export")
    format: str = option("openvino", "openvino IR, TensorFlow SavedModel, or .keras", tuple(FORMATS))
    tta: str = option("none", "test-time averaging built into the export", TTAS)
    out: str | None = option(None, "destination (default: beside the model)")


@dataclass
class PlotOptions:
    """`main.py plot`: redraw a run's curves."""

    history: str = option("output/history.csv", "history.csv written by training")
    output_dir: str | None = option(None, "folder for the PNGs (default: the history's folder)")


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> `(type, optional)` of an options dataclass: `(int, True)` for `int | None`."""
    out = {}
    for name, t in typing.get_type_hints(cls).items():
        optional = isinstance(t, types.UnionType)
        out[name] = (next(a for a in typing.get_args(t) if a is not type(None)) if optional else t, optional)
    return out


FIELD_TYPES = field_types(TrainConfig)


def flag_name(name: str) -> str:
    """`--image-size` for `image_size`."""
    return "--" + name.replace("_", "-")


def flag_text(name: str, value) -> str:
    """How a user gives `name = value`: `--image-size 96`, or `--set final_size=144` for a set-only one."""
    if not TrainConfig.__dataclass_fields__[name].metadata["flag"]:
        return f"--set {name}={value}"
    return f"{flag_name(name)} {value}"


def default_text(f: dataclasses.Field) -> str:
    """A field's default in words, the machine's table included ("8 on CPU, 16 on GPU")."""
    if f.default is None and f.name in MACHINE_DEFAULTS["cpu"][0]:
        cpu, bf16, gpu = (MACHINE_DEFAULTS[kind][0][f.name] for kind in ("cpu", "cpu_bf16", "gpu"))
        units = "" if bf16 == cpu else f" ({bf16} with bf16 units)"
        return f"{cpu} on CPU{units}, {gpu} on GPU"
    if f.default is None or f.default is False or f.default_factory is not dataclasses.MISSING:
        return ""
    return str(f.default)


def _add(parser: argparse.ArgumentParser, f: dataclasses.Field, kind: type, suppress: bool) -> None:
    meta = f.metadata
    default = argparse.SUPPRESS if suppress else (f.default if f.default is not dataclasses.MISSING else [])
    said = default_text(f)
    kwargs = {"help": meta["help"] + (f" (default: {said})" if said else ""), "default": default}
    if meta["positional"]:
        parser.add_argument(f.name, nargs="+", metavar=f.name.upper().rstrip("S"), help=meta["help"])
        return
    if kind is bool:
        kwargs["action"] = "store_true"
    else:
        kwargs.update(type=kind, choices=meta["choices"])
    parser.add_argument(flag_name(f.name), **kwargs)


def parser_for(
    cls: type, prog: str, epilog: str | None = None, suppress: bool = False, description: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one option per flagged field of `cls`.

    Args:
        cls: An options dataclass.
        prog: The command, e.g. `main.py evaluate`.
        epilog: Text after the options.
        suppress: Leave an option out of the namespace unless given
            (`argparse.SUPPRESS`): the namespace then holds exactly what
            the command line sets.
        description: What the command does; the dataclass's docstring by default.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__, epilog=epilog)
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.metadata["flag"]:
            _add(parser, f, types_[f.name][0], suppress)
    return parser


def flag_tables() -> tuple[str, str]:
    """The README's tables of the training flags and of the `--set` settings, as markdown."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    rest = ["| setting | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        choices = f.metadata["choices"]
        meaning = f.metadata["help"] + (f" ({', '.join(f'`{c}`' for c in choices)})" if choices else "")
        cell = f"`{flag_name(f.name)}`" if f.metadata["flag"] else f"`{f.name}`"
        (rows if f.metadata["flag"] else rest).append(f"| {cell} | {default_text(f)} | {meaning} |")
    return "\n".join(rows) + "\n", "\n".join(rest) + "\n"


_BOOLS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}
_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def typed_value(name: str, raw, where: str):
    """`raw` as a value of setting `name`'s type: a string is parsed, a JSON value checked.

    For a setting that may be None, an empty string is None (and, for a
    number, `none` too).

    Raises:
        UsageError: Naming `where` when `raw` is no value of the type.
    """
    kind, optional = FIELD_TYPES[name]
    if isinstance(raw, str):
        text = raw.strip()
        if optional and (raw == "" or (kind is not str and text.lower() in ("none", "null"))):
            return None
        if kind is str:
            return raw
        if kind is bool and text.lower() in _BOOLS:
            return _BOOLS[text.lower()]
        try:
            if kind is not bool:
                return kind(text)
        except ValueError:
            pass
    elif raw is None and optional:
        return None
    elif kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    elif isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    wanted = _KIND_WORDS[kind] + (" or empty" if optional else "")
    raise UsageError(f"{where}: {name} must be {wanted}, not {raw!r}")


def parse_setting(item: str) -> tuple[str, object]:
    """`KEY=VALUE` of `--set` as `(name, value)`, the value parsed by the setting's type.

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


#: Settings that earlier versions had and this one fixes, with the value it
#: keeps: a run that used another value cannot be resumed or copied as it was.
RETIRED = {
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "carve": "blocks",
    "class_weight_power": 0.2,
    "lovasz_weight": 1.0,
    "logit_adjust": 0.3,
    "encoder_weights": "imagenet",
}
#: The version of the `config.json` a run writes now (before it, none was written).
CONFIG_VERSION = 2
#: What a run's `config.json` of an older version lacks, as those runs trained.
OLDER_DEFAULTS = {
    "block": "plain",
    "first_size": 0,
    "final_size": 0,
    "carve": "random",
    "class_weight_power": 0.5,
}


def upgrade_config(saved: dict) -> tuple[dict, dict]:
    """The settings of a saved `config.json` or recipe in this version's terms.

    The one place that reads older files: a run's `config.json` of an older
    version (it names its `precision_policy`, and no `config_version`) gets
    the values it lacks as runs of then had them; older spellings are
    updated; settings this version no longer has are dropped (test-time
    averaging, for one, is now chosen at `predict`).

    Args:
        saved: A `config.json` as loaded.

    Returns:
        `(fields, retired)`: the `TrainConfig` fields it holds, and the
        retired settings or choices whose value differs from what this
        version does, name -> value.
    """
    older = "precision_policy" in saved and saved.get("config_version", 1) < CONFIG_VERSION
    saved = {**OLDER_DEFAULTS, **saved} if older else dict(saved)
    if isinstance(saved.get("augment"), bool):  # written before --augment took a mode
        saved["augment"] = "flip" if saved["augment"] else "none"
    retired = {k: saved[k] for k, keep in RETIRED.items() if k in saved and saved[k] != keep}
    for name in ("loss", "augment"):
        if (
            saved.get(name) is not None
            and saved[name] not in TrainConfig.__dataclass_fields__[name].metadata["choices"]
        ):
            retired[name] = saved[name]
    return {k: saved[k] for k in FIELD_TYPES if k in saved and k not in retired}, retired


def read_json(path: str, flag: str) -> dict:
    """A JSON object from `path`.

    Raises:
        UsageError: Naming `flag` and the file, when it is missing or no JSON object.
    """
    try:
        with open(path) as f:
            loaded = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: file not found") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{flag} {path}: not a JSON file ({e})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{flag} {path}: not a config.json (no object of settings)")
    return loaded


#: Recipes shipped with the project, for `--config NAME` (docs/experiments.md
#: has the runs behind each).
RECIPES_DIR = os.path.join(os.path.dirname(__file__), "recipes")


def recipes() -> list[str]:
    """The names `--config` takes besides a file: the shipped recipes."""
    return sorted(name[: -len(".json")] for name in os.listdir(RECIPES_DIR) if name.endswith(".json"))


def read_config_file(path: str) -> dict:
    """The settings of a `config.json` (`--config`), or of a shipped recipe by name, typed.

    Raises:
        UsageError: When the file is missing, is not JSON, holds a value of
            the wrong type, or a setting this version retired.
    """
    if not os.path.isfile(path) and path in recipes():
        path = os.path.join(RECIPES_DIR, f"{path}.json")
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: file not found (shipped recipes: {', '.join(recipes())})")
    fields, retired = upgrade_config(read_json(path, "--config"))
    if retired:
        key, value = next(iter(retired.items()))
        raise UsageError(f"--config {path}: {key}={value} is no longer a choice; leave it out")
    return {k: typed_value(k, v, f"--config {path}") for k, v in fields.items()}


def config_from_command_line(
    given: dict, settings: typing.Sequence[str] = (), config_file: str | None = None
) -> tuple[TrainConfig, set[str]]:
    """The configuration of a command line, and the names of the settings it sets.

    Args:
        given: Setting -> value of the flags written out on the command line.
        settings: The `--set KEY=VALUE` items, in order (a later one wins).
        config_file: A saved `config.json` or recipe whose settings replace the defaults.

    Raises:
        UsageError: For a bad `--config` or `--set`, or a setting given both
            by `--set` and by its flag.
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


def stride(encoder: str) -> int:
    """What the network's input sides must be a multiple of."""
    return 2**DEPTH if encoder == "unet" else 32


def _size_check(zero_ok: bool):
    def check(v, c):
        return v is None or (zero_ok and v == 0) or (v > 0 and v % stride(c.encoder) == 0)

    return check


#: `(setting, check(value, cfg), why)`, checked in order; choices are checked
#: from the fields themselves (`validate_config`).
CHECKS = (
    ("epochs", lambda v, c: v >= 1, "must be at least 1"),
    ("batch_size", lambda v, c: v is None or v >= 1, "must be at least 1"),
    ("base_filters", lambda v, c: v is None or v >= 1, "must be at least 1"),
    ("learning_rate", lambda v, c: v > 0 and math.isfinite(v), "must be a positive number"),
    ("early_stop", lambda v, c: v >= 0, "must be 0 (off) or a number of epochs"),
    ("val_split", lambda v, c: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    ("limit", lambda v, c: v is None or v >= 2, "must be at least 2 (one train and one validation pair)"),
    ("num_preds", lambda v, c: v >= 0, "must be 0 or more"),
    ("progress_every", lambda v, c: v >= 0, "must be 0 (off) or more"),
    ("image_size", _size_check(False), lambda c: f"must be a positive multiple of {stride(c.encoder)}"),
    (
        "first_size",
        _size_check(True),
        lambda c: f"must be 0 (off) or a positive multiple of {stride(c.encoder)}",
    ),
    (
        "final_size",
        _size_check(True),
        lambda c: f"must be 0 (off) or a positive multiple of {stride(c.encoder)}",
    ),
    ("first_epochs", lambda v, c: v >= 1, "must be at least 1"),
    ("final_epochs", lambda v, c: v >= 1, "must be at least 1"),
)


def validate_config(cfg: TrainConfig) -> None:
    """Raise `UsageError` naming the first setting whose value cannot work."""
    for f in dataclasses.fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata["choices"]
        if choices and value is not None and value not in choices:
            raise UsageError(f"{flag_text(f.name, value)}: must be one of {', '.join(choices)}")
    for name, check, why in CHECKS:
        value = getattr(cfg, name)
        if not check(value, cfg):
            raise UsageError(f"{flag_text(name, value)}: {why(cfg) if callable(why) else why}")


@dataclass(frozen=True)
class Stage:
    """A part of a run at one input size: epochs `first` to `end` (0-based, `end` exclusive)."""

    size: int
    first: int
    end: int


def stages(cfg: TrainConfig) -> list[Stage]:
    """The input size of each part of a resolved run, in order.

    With `final_size` above `image_size`, the last `final_epochs` epochs
    (never the first) train at `final_size`; with `first_size` below it, the
    first `first_epochs` (never the last) at `first_size`: coarse shapes
    cheaply first, the last steps at the finer size, the rest in between.
    Parts without epochs are left out.
    """
    switch = cfg.epochs
    if cfg.final_size and cfg.final_size > cfg.image_size:
        switch = max(1, cfg.epochs - cfg.final_epochs)
    start = 0
    if cfg.first_size and cfg.first_size < cfg.image_size:
        start = min(cfg.first_epochs, switch, cfg.epochs - 1)
    parts = [
        Stage(cfg.first_size, 0, start),
        Stage(cfg.image_size, start, switch),
        Stage(cfg.final_size, switch, cfg.epochs),
    ]
    return [s for s in parts if s.end > s.first]


def stage_of_epoch(cfg: TrainConfig, epoch: int) -> Stage:
    """The stage epoch `epoch` (0-based) trains in."""
    return next(s for s in stages(cfg) if s.first <= epoch < s.end)


if __name__ == "__main__":  # python -m cityscapes_unet.settings: the README's tables
    print(*flag_tables(), sep="\n", end="")
