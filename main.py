"""Command line: train the Cityscapes UNet, score it, run it, redraw its curves.

python main.py --epochs 10
python main.py evaluate --model output/unet_model.keras
python main.py predict --model output/unet_model.keras --out preds photo.jpg folder/
python main.py plot --history output/history.csv
"""

from __future__ import annotations

import sys

#: What Ctrl-C says before the run has begun.
INTERRUPTED_AT_START = "interrupted while starting: nothing was written"

try:
    import argparse
    import os

    from cityscapes_unet.startup import load_backend
except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, no traceback
    print(INTERRUPTED_AT_START, file=sys.stderr)
    sys.exit(130)

# Quiet TensorFlow's start-up chatter; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of a training run; the other settings go through --set."""
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train a UNet on the Cityscapes image pairs (photo | colour label JPEGs).",
        epilog="Settings without a flag, for --set KEY=VALUE (any field of config.json works): "
        "first_size, first_epochs, final_size, final_epochs, warmup_epochs, early_stop, val_split, carve, "
        "block, tta, logit_adjust, class_weights, class_weight_power, "
        "lovasz_weight, encoder_weights, num_progress, cpu_replicas, tfds_data_dir, tfds_manual_dir. "
        "Other commands: 'python main.py evaluate --help' (score a model), "
        "'python main.py predict --help' (segment photos), "
        "'python main.py export --help' (export a model), "
        "'python main.py plot --help' (redraw curves from history.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # No abbreviations: --resume compares the flags given by their full names.
        allow_abbrev=False,
    )
    p.add_argument(
        "--config", type=str, default=None, help="start from a saved config.json or a shipped recipe (long)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="set any setting by name (repeatable)",
    )
    p.add_argument(
        "--data-dir", type=str, default="images", help="folder with train/ (and optionally val/) pair JPEGs"
    )
    p.add_argument(
        "--output-dir", type=str, default="output", help="folder for the model, history, curves and pictures"
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=None, help="batch size; unset: the machine's default")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the square model input; unset: the machine's default",
    )
    p.add_argument(
        "--base-filters",
        type=int,
        default=None,
        help="width of the first UNet level; unset: the machine's default",
    )
    p.add_argument(
        "--learning-rate", type=float, default=3e-3, help="Adam learning rate (peak of the schedule)"
    )
    p.add_argument(
        "--schedule",
        type=str,
        default="cosine",
        choices=["cosine", "constant", "plateau"],
        help="learning-rate schedule",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the split, shuffling, augmentation and initialisation"
    )
    p.add_argument(
        "--precision",
        type=str,
        default="auto",
        choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
        help="dtype policy; auto: the fastest this machine runs well",
    )
    p.add_argument(
        "--augment",
        type=str,
        default=None,
        choices=["none", "flip", "full", "mild"],
        help="training augmentation; unset: the machine's default",
    )
    p.add_argument(
        "--loss",
        type=str,
        default="ce_lovasz",
        choices=["ce", "ce_dice", "ce_lovasz", "focal"],
        help="training loss",
    )
    p.add_argument(
        "--encoder",
        type=str,
        default="unet",
        choices=["unet", "resnet50", "efficientnetb0"],
        help="the UNet, or a UNet decoder on a keras.applications encoder",
    )
    p.add_argument(
        "--xla",
        type=str,
        default="auto",
        choices=["auto", "on", "off"],
        help="compile the training step with XLA",
    )
    p.add_argument(
        "--distribute",
        type=str,
        default="none",
        choices=["none", "mirrored", "multiworker"],
        help="data-parallel training over local GPUs or TF_CONFIG workers",
    )
    p.add_argument(
        "--dataset",
        type=str,
        default="pairs",
        choices=["pairs", "tfds-cityscapes"],
        help="the pair JPEGs, or Cityscapes through TensorFlow Datasets",
    )
    p.add_argument(
        "--pipeline",
        type=str,
        default="auto",
        choices=["auto", "tf", "numpy"],
        help="input pipeline: tf.data, or NumPy/OpenCV",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N training pairs (smoke runs)")
    p.add_argument("--num-preds", type=int, default=4, help="validation samples drawn as pred_N.png")
    p.add_argument(
        "--progress-every",
        type=int,
        default=1,
        help="draw validation samples into progress/ every N epochs; 0: off",
    )
    p.add_argument(
        "--tensorboard", action="store_true", help="log scalars and progress pictures to OUTPUT_DIR/logs"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in OUTPUT_DIR with its saved configuration",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the earlier run in OUTPUT_DIR instead of moving it to earlier/",
    )
    return p


#: Flags of the training command that are not fields of `TrainConfig`.
COMMAND_FLAGS = ("config", "set", "resume", "overwrite")


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options written out in `argv`."""
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(tok == opt or tok.startswith(opt + "=") for tok in argv):
                given.add(action.dest)
    return given


def build_plot_parser() -> argparse.ArgumentParser:
    """The flags of `main.py plot`."""
    p = argparse.ArgumentParser(
        prog="main.py plot",
        description="Draw acc.png, loss.png and miou.png from a run's history.csv, without retraining.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--history", type=str, default="output/history.csv", help="history.csv written by training"
    )
    p.add_argument(
        "--output-dir", type=str, default=None, help="folder for the PNGs (default: the history's folder)"
    )
    return p


def build_evaluate_parser() -> argparse.ArgumentParser:
    """The flags of `main.py evaluate`."""
    p = argparse.ArgumentParser(
        prog="main.py evaluate",
        description="Score a trained model: per-class IoU, mean IoU, pixel accuracy, mean class accuracy, "
        "category mean IoU and a confusion matrix (void excluded everywhere).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=str, default="output/unet_model.keras", help="the .keras model to score")
    p.add_argument(
        "--data-dir",
        type=str,
        default=None,
        help="pairs to score (DIR/val if it exists, else DIR); default: the validation split of the run that made the model, from its config.json",
    )
    p.add_argument(
        "--output-dir", type=str, default=None, help="report folder (default: eval/ beside the model)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prediction batch size")
    return p


def build_predict_parser() -> argparse.ArgumentParser:
    """The flags of `main.py predict`."""
    p = argparse.ArgumentParser(
        prog="main.py predict",
        description="Segment photos of any size: for each NAME, NAME_mask.png (class colours), "
        "NAME_overlay.png (colours over the photo) and NAME_ids.png (uint8 trainIds, the photo's size).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JPEG or PNG photos, videos, or folders of them"
    )
    p.add_argument(
        "--model",
        type=str,
        default="output/unet_model.keras",
        help="the .keras model to run, or an OpenVINO .xml written by 'main.py export'",
    )
    p.add_argument(
        "--engine",
        type=str,
        default="auto",
        choices=["auto", "keras", "openvino"],
        help="what runs the model; auto: from --model's suffix; openvino with a .keras model uses the .xml "
        "exported beside it",
    )
    p.add_argument("--out", type=str, default="output/predictions", help="folder for the results")
    p.add_argument(
        "--pairs",
        action="store_true",
        help="inputs are photo | colour-label pairs: predict the left half, add NAME_panel.png with the ground "
        "truth, and score against it",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prediction batch size")
    p.add_argument(
        "--frame-ids",
        action="store_true",
        help="with videos: also write each frame's ids as NAME_ids/FRAME.png",
    )
    return p


def build_export_parser() -> argparse.ArgumentParser:
    """The flags of `main.py export`."""
    p = argparse.ArgumentParser(
        prog="main.py export",
        description="Export a trained model for inference (Keras' model.export) and check it against the "
        "Keras model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=str, default="output/unet_model.keras", help="the .keras model to export")
    p.add_argument(
        "--format",
        type=str,
        default="openvino",
        choices=["openvino", "tf_saved_model", "keras"],
        help="openvino: an OpenVINO IR (.xml + .bin) for fast CPU inference with 'predict'; tf_saved_model: "
        "a TensorFlow SavedModel folder (TF Serving); keras: a .keras file (with --tta)",
    )
    p.add_argument(
        "--tta",
        type=str,
        default="saved",
        choices=["saved", "flip", "none"],
        help="test-time averaging: the saved model's; flip: its network once plus the mirror; none: once",
    )
    p.add_argument(
        "--out",
        type=str,
        default=None,
        help="destination (default: beside the model, unet_model.xml, unet_model_saved_model/ or "
        "unet_model_TTA.keras)",
    )
    return p


def plot(args: argparse.Namespace) -> None:
    """Redraw the curves of a finished or running training run."""
    from cityscapes_unet import io, plots
    from cityscapes_unet.errors import UsageError

    if not os.path.isfile(args.history):
        raise UsageError(f"--history {args.history}: file not found")
    try:
        history = io.read_history(args.history)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise UsageError(f"--history {args.history}: not a history.csv ({e})") from None
    if not history or "loss" not in history:
        raise UsageError(f"--history {args.history}: no epochs in it")
    out = args.output_dir or os.path.dirname(os.path.abspath(args.history))
    os.makedirs(out, exist_ok=True)
    for path in plots.plot_history(history, out):
        print(path)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run; bad input ends with one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    load_backend()
    from cityscapes_unet.errors import TrainingError, UsageError
    from cityscapes_unet.train.config import config_from_command_line
    from cityscapes_unet.train.run import interrupted_message, run_training

    output_dir = None
    try:
        if argv[:1] == ["plot"]:
            plot(build_plot_parser().parse_args(argv[1:]))
        elif argv[:1] == ["predict"]:
            from cityscapes_unet.infer.predict import run_predict

            a = build_predict_parser().parse_args(argv[1:])
            run_predict(a.model, a.inputs, a.out, a.pairs, a.batch_size, a.engine, a.frame_ids)
        elif argv[:1] == ["export"]:
            from cityscapes_unet.infer.export import run_export

            a = build_export_parser().parse_args(argv[1:])
            run_export(a.model, a.format, a.out, a.tta)
        elif argv[:1] == ["evaluate"]:
            from cityscapes_unet.infer.evaluate import run_evaluate

            a = build_evaluate_parser().parse_args(argv[1:])
            run_evaluate(a.model, a.data_dir, a.output_dir, a.batch_size)
        else:
            parser = build_parser()
            flags = vars(parser.parse_args(argv))
            written = {k: flags[k] for k in given_flags(parser, argv) if k not in COMMAND_FLAGS}
            output_dir = flags["output_dir"]
            cfg, given = config_from_command_line(written, flags["set"] or [], flags["config"])
            output_dir = cfg.output_dir
            run_training(cfg, resume=flags["resume"], overwrite=flags["overwrite"], given=given)
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
        print(str(e) or interrupted_message(output_dir), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while the libraries load, before main's own handler
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
