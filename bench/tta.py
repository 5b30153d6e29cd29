"""Test-time augmentation of a trained model: flips and extra scales, scored.

Scores a saved model on the validation split of the run that wrote it (or on
`--data-dir`), at the labels' own size, plain and with test-time
augmentation: the horizontally flipped photo's scores flipped back and
averaged in, and the same network run at other input sizes (it is fully
convolutional; each size's scores are resized bilinearly to the labels'
size before averaging). The figures decide whether such averaging is worth
building into the saved model.

    python bench/tta.py --model output/unet_model.keras --sizes 96,112,128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=str, default="output/unet_model.keras", help="Saved model of a UNet run."
    )
    parser.add_argument(
        "--data-dir", type=str, default=None, help="Pairs to score; the run's validation split when unset."
    )
    parser.add_argument(
        "--sizes",
        type=str,
        default="96,112,128",
        help="Input sizes to run the network at; the first is the plain one.",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="Batch size.")
    args = parser.parse_args()

    from cityscapes_unet.startup import load_backend

    load_backend()  # without TensorFlow's CUDA-probe lines on a CPU machine
    import keras
    import numpy as np
    import tensorflow as tf

    from cityscapes_unet.data.source import resolve_eval_files
    from cityscapes_unet.data.tf_pipeline import decode_pair
    from cityscapes_unet.infer.metrics import confusion_matrix, scores
    from cityscapes_unet.infer.saved_model import network_of
    from cityscapes_unet.train.config import DEPTH
    from segmentation_model import build_unet, widths_from_base

    with open(os.path.join(os.path.dirname(os.path.abspath(args.model)), "config.json")) as f:
        cfg = json.load(f)
    saved = keras.models.load_model(args.model, compile=False)
    # The saved model may wrap the trained core (at the data's size); the core has the weights.
    core = network_of(saved)[0]
    sizes = [int(s) for s in args.sizes.split(",")]
    nets = {}
    residual = cfg.get("block") == "residual"
    for s in sizes:
        nets[s] = build_unet(s, 19, widths_from_base(cfg["base_filters"], DEPTH), residual=residual)
        nets[s].set_weights(core.get_weights())
    files, source, _ = resolve_eval_files(args.model, args.data_dir)
    print(f"{len(files)} pairs from {source}; sizes {sizes}")

    def decode(path):
        out = [decode_pair(path, s, full_labels=True) for s in sizes]
        return (*[o[0] for o in out], out[0][2])

    ds = tf.data.Dataset.from_tensor_slices(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    cms: dict[str, np.ndarray] = {}

    def add(name, probs, labels):
        cms.setdefault(name, np.zeros((19, 19), np.int64))
        cms[name] += confusion_matrix(labels, probs.argmax(-1))

    start = time.perf_counter()
    for batch in ds.batch(args.batch_size):
        photos, labels = batch[:-1], batch[-1].numpy()
        height, width = labels.shape[1:3]
        plain, flipped = {}, {}
        for s, photo in zip(sizes, photos, strict=True):
            x = photo.numpy().astype(np.float32)
            p = nets[s].predict(x, verbose=0)
            pf = nets[s].predict(x[:, :, ::-1], verbose=0)[:, :, ::-1]
            plain[s] = tf.image.resize(p, (height, width), "bilinear").numpy()
            flipped[s] = tf.image.resize(pf, (height, width), "bilinear").numpy()
            add(f"{s}", plain[s], labels)
            add(f"{s} + flip", plain[s] + flipped[s], labels)
        if len(sizes) > 1:
            add("all sizes", sum(plain.values()), labels)
            add("all sizes + flip", sum(plain.values()) + sum(flipped.values()), labels)
    print(f"scored in {time.perf_counter() - start:.0f} s, at the labels' own size")
    print("| input | mean IoU | pixel accuracy | category mean IoU |")
    print("|---|---:|---:|---:|")
    for name, cm in cms.items():
        r = scores(cm)
        print(f"| {name} | {r['mean_iou']:.4f} | {r['pixel_accuracy']:.4f} | {r['category_mean_iou']:.4f} |")


if __name__ == "__main__":
    main()
