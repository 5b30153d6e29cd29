"""The saved model's test-time options, scored side by side on one trained core.

Rebuilds the model a run saves (`segmentation_model.inference_model`, as
training does) from the trained network inside a saved model, once per
option, and scores each on the run's validation split (or `--data-dir`) at
the model's input size, the labels' own for the pairs. An option is
`TTA:ALPHA`: `tta` (none, flip, scales) and `logit_adjust` (with the
run's class weights, from its `config.json`); `TTA@S1+S2:ALPHA` runs the
network at the sizes given instead of the run's (`tta_sizes`). Training is
the same for all of them, so one run measures them all.

    python bench/saved_model.py --model output/unet_model.keras \
        --options none:0,flip:0,scales:0,flip:0.25,scales:0.2,scales:0.25,scales:0.3
    python bench/saved_model.py --model output/unet_model.keras --options scales:0.3,flip@144+128:0.3
    python bench/saved_model.py --model output/unet_model.keras --train-pairs 446 --options ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cityscapes_unet.startup import load_backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=str, default="output/unet_model.keras", help="Saved model of a UNet run."
    )
    parser.add_argument(
        "--data-dir", type=str, default=None, help="Pairs to score; the run's validation split when unset."
    )
    parser.add_argument(
        "--options",
        type=str,
        default="flip:0,scales:0,scales:0.25",
        help="Comma-separated TTA[@S1+S2]:ALPHA (TTA: none, flip or scales; S: network sizes; ALPHA: the "
        "logit_adjust power).",
    )
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=0,
        help="Score N seeded training pairs of the run instead of its validation split (to choose an option "
        "without looking at the validation split).",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="Batch size.")
    args = parser.parse_args()

    load_backend()  # without TensorFlow's CUDA-probe lines on a CPU machine
    import keras
    import numpy as np

    from cityscapes_unet.data.source import resolve_eval_files
    from cityscapes_unet.infer.evaluate import evaluate_files
    from cityscapes_unet.infer.metrics import scores
    from cityscapes_unet.infer.saved_model import inference_model, network_of, tta_sizes
    from cityscapes_unet.train.config import DEPTH, TTAS, TrainConfig, saved_fields, size_phases

    options = []
    for spec in args.options.split(","):
        tta, _, alpha = spec.partition(":")
        tta, _, given = tta.partition("@")
        if tta not in TTAS:
            sys.exit(f"--options {spec}: TTA must be one of {', '.join(TTAS)}")
        try:
            options.append(
                (tuple(int(v) for v in given.split("+")) if given else None, tta, float(alpha or 0))
            )
        except ValueError:
            sys.exit(f"--options {spec}: S and ALPHA must be numbers")
    with open(os.path.join(os.path.dirname(os.path.abspath(args.model)), "config.json")) as f:
        cfg = json.load(f)
    weights = cfg.get("class_weight_values")
    saved = keras.models.load_model(args.model, compile=False)
    # The saved model wraps the trained core; the core has the weights.
    core = network_of(saved)[0]
    size, source = int(cfg["image_size"]), int(saved.input_shape[1])
    # The size of the run's last epochs (`final_size`), as the saved model has it.
    final = size_phases(TrainConfig(**saved_fields(cfg)))[-1][0]
    # The saved core holds the run's own adjustment in its head's bias
    # (none for runs from before `logit_adjust`): each option's is
    # applied relative to it.
    saved_alpha = float(cfg.get("logit_adjust", 0.0)) if weights is not None else 0.0
    if args.train_pairs:
        from cityscapes_unet.data.source import find_data

        train = find_data(
            cfg["data_dir"], cfg.get("limit"), cfg["val_split"], cfg["seed"], cfg.get("carve", "random")
        )[0]
        picks = np.random.default_rng(0).choice(len(train), min(args.train_pairs, len(train)), replace=False)
        files, where = [train[i] for i in sorted(picks)], "the run's training split (seed 0)"
    else:
        files, where, _ = resolve_eval_files(args.model, args.data_dir)
    print(f"{len(files)} pairs from {where}; network trained at {size}x{size}, scored at {source}x{source}")
    print("| tta | sizes | logit_adjust | mean IoU | pixel accuracy | category mean IoU | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for given, tta, alpha in options:
        bias = None
        if weights is not None and alpha != saved_alpha:
            bias = -(alpha - saved_alpha) * np.log(np.asarray(weights, np.float64))
        sizes = given or tta_sizes(size, tta == "scales", 2**DEPTH, final)
        model = inference_model(core, source, flip=tta != "none", sizes=sizes, logit_bias=bias)
        start = time.perf_counter()
        cm, _ = evaluate_files(model, files, args.batch_size)
        r = scores(cm)
        print(
            f"| {tta} | {'+'.join(map(str, sizes))} | {alpha:g} | {r['mean_iou']:.4f} | {r['pixel_accuracy']:.4f} | "
            f"{r['category_mean_iou']:.4f} | {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
