"""Command line: train the Cityscapes UNet, score it, run it, export it, redraw its curves.

python main.py --epochs 10
python main.py evaluate --model output/unet_model.keras
python main.py predict --model output/unet_model.keras --out preds photo.jpg folder/
python main.py export --model output/unet_model.keras
python main.py plot --history output/history.csv

Every flag is generated from `cityscapes_unet.settings`, where each
setting's name, default, choices and help are written once.
"""

from __future__ import annotations

import sys

#: What Ctrl-C says before the run has begun.
INTERRUPTED_AT_START = "interrupted while starting: nothing was written"

try:
    import argparse
    import dataclasses
    import os

    from cityscapes_unet import settings
    from cityscapes_unet.errors import Interrupted, TrainingError, UsageError
    from cityscapes_unet.startup import load_backend
except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, no traceback
    print(INTERRUPTED_AT_START, file=sys.stderr)
    sys.exit(130)

# Quiet TensorFlow's start-up chatter; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The other commands: the options dataclass of each.
COMMANDS = {
    "evaluate": settings.EvaluateOptions,
    "predict": settings.PredictOptions,
    "export": settings.ExportOptions,
    "plot": settings.PlotOptions,
}


def build_parser() -> argparse.ArgumentParser:
    """The training command's parser: one flag per setting with a flag, and --config, --set, --resume, --overwrite.

    A flag left out stays out of the namespace (`argparse.SUPPRESS`), so
    the namespace says exactly which settings the command line gives.
    """
    set_only = [f.name for f in dataclasses.fields(settings.TrainConfig) if not f.metadata["flag"]]
    epilog = (
        f"Settings without a flag, for --set KEY=VALUE: {', '.join(set_only)}. "
        f"Other commands: {', '.join(f'python main.py {c} --help' for c in COMMANDS)}."
    )
    what = "Train a UNet on the Cityscapes image pairs (photo | colour label JPEGs)."
    p = settings.parser_for(settings.TrainConfig, "main.py", epilog, suppress=True, description=what)
    recipes = ", ".join(settings.recipes())
    p.add_argument(
        "--config", default=None, help=f"start from a saved config.json or a shipped recipe ({recipes})"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any setting by name (repeatable)"
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the earlier run in --output-dir instead of keeping it",
    )
    return p


def plot(history: str, output_dir: str | None) -> None:
    """Redraw the curves of a finished or running training run."""
    from cityscapes_unet import io, plots

    if not os.path.isfile(history):
        raise UsageError(f"--history {history}: file not found")
    try:
        columns = io.read_history(history)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise UsageError(f"--history {history}: not a history.csv ({e})") from None
    if not columns or "loss" not in columns:
        raise UsageError(f"--history {history}: no epochs in it")
    out = output_dir or os.path.dirname(os.path.abspath(history))
    os.makedirs(out, exist_ok=True)
    for path in plots.plot_history(columns, out):
        print(path)


def run_command(name: str, argv: list[str]) -> None:
    """Parse and run one of `COMMANDS`; the wing it needs loads only now."""
    options = vars(settings.parser_for(COMMANDS[name], f"main.py {name}").parse_args(argv))
    if name == "plot":
        plot(**options)
    elif name == "predict":
        from cityscapes_unet.infer.predict import run_predict

        run_predict(**options)
    elif name == "export":
        from cityscapes_unet.infer.export import run_export

        run_export(**options)
    else:
        from cityscapes_unet.infer.evaluate import run_evaluate

        run_evaluate(**options)


def train(argv: list[str]) -> None:
    """Parse the training command line and run it."""
    from cityscapes_unet.train.run import interrupted_message, run_training

    given = vars(build_parser().parse_args(argv))
    command = {k: given.pop(k) for k in ("config", "set", "resume", "overwrite")}
    cfg, names = settings.config_from_command_line(given, command["set"], command["config"])
    try:
        run_training(cfg, resume=command["resume"], overwrite=command["overwrite"], given=names)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(cfg.output_dir)) from None


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run; bad input ends with one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    load_backend()
    try:
        if argv[:1] and argv[0] in COMMANDS:
            run_command(argv[0], argv[1:])
        else:
            train(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # A file that cannot be written (disk full, read-only, name too long):
        # every write is atomic, so what was on disk before is whole.
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while the libraries load, before main's own handler
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
