"""`predict` end to end against the saved model's own rate.

Times, on the same photos in one process: the model alone (`predict` on
batches already decoded and resized, nothing written), then the whole
`predict` command on plain photos (mask, overlay and ids PNGs written) and
on the pairs they came from (`--pairs`: ground-truth panels and scores
too). Ratios last.

    python bench/predict_speed.py --model output/unet_model.keras \
        --data-dir ../shared/data/cityscapes_pairs/train --count 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cityscapes_unet.startup import load_backend  # noqa: E402

load_backend()  # before the imports below load Keras: no CUDA-probe lines on a CPU machine

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cityscapes_unet.data.files import list_images  # noqa: E402
from cityscapes_unet.data.numpy_pipeline import resize_area  # noqa: E402
from cityscapes_unet.infer.engines import load_engine  # noqa: E402
from cityscapes_unet.infer.predict import run_predict  # noqa: E402
from cityscapes_unet.io import read_photo, split_pair  # noqa: E402


def model_rate(model_path: str, photos: list[np.ndarray], batch_size: int) -> float:
    """Photos per second of the model alone, after one warm-up batch."""
    runner = load_engine(model_path)
    size = runner.input_size
    x = np.stack([resize_area(p, size, size) for p in photos]).astype(np.float32)
    runner.predict(x[:batch_size])
    t0 = time.perf_counter()
    for start in range(0, len(x), batch_size):
        runner.predict(x[start : start + batch_size])
    return len(x) / (time.perf_counter() - t0)


def command_rate(model_path: str, inputs: str, out: str, pairs: bool, batch_size: int) -> float:
    """Inputs per second of `run_predict`, as the command reports it (model load excluded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_predict(model_path, [inputs], out, pairs=pairs, batch_size=batch_size)
    return summary["predicted"] / summary["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="output/unet_model.keras", help="Saved model.")
    parser.add_argument("--data-dir", required=True, help="Folder of pairs (or with train/).")
    parser.add_argument("--count", type=int, default=100, help="Pairs to use.")
    parser.add_argument("--batch-size", type=int, default=8, help="Batch size everywhere.")
    args = parser.parse_args()
    folder = os.path.join(args.data_dir, "train")
    files = list_images(folder if os.path.isdir(folder) else args.data_dir)[: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, pairs_dir = os.path.join(tmp, "photos"), os.path.join(tmp, "pairs")
        os.makedirs(photos_dir)
        os.makedirs(pairs_dir)
        photos = []
        for f in files:
            photo = split_pair(read_photo(f))[0]
            photos.append(photo)
            name = os.path.basename(f)
            cv2.imwrite(os.path.join(photos_dir, name), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
            os.symlink(os.path.realpath(f), os.path.join(pairs_dir, name))
        bare = model_rate(args.model, photos, args.batch_size)
        plain = command_rate(args.model, photos_dir, os.path.join(tmp, "out_photos"), False, args.batch_size)
        paired = command_rate(args.model, pairs_dir, os.path.join(tmp, "out_pairs"), True, args.batch_size)
    print(f"{len(files)} photos of {args.model}, batch {args.batch_size}")
    print(f"{'model alone':<28}{bare:8.1f} photos/s")
    print(f"{'predict, photos':<28}{plain:8.1f} photos/s  {plain / bare:.2f}x the model")
    print(f"{'predict --pairs':<28}{paired:8.1f} pairs/s   {paired / plain:.2f}x predict on photos")


if __name__ == "__main__":
    main()
