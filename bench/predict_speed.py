"""`predict` end to end, for several models and test-time averagings side by side.

Times, on the same photos in one process, for each model and each `--tta`:
the model alone (`Engine.predict` on batches already decoded and resized,
nothing written), then the whole `predict` on plain photos (mask, overlay
and ids PNGs written) and on the pairs they came from (`--pairs`: panels
and scores too). The rows run in alternating rounds, so the host's drift
touches every one; each figure is the best of its rounds. Ratios to the
first row last.

    python bench/predict_speed.py --model output/unet_model.keras \
        --data-dir ../shared/data/cityscapes_pairs/train --count 200 --tta none,scales
    python bench/predict_speed.py --model old.keras,output/unet_model.keras --data-dir ... --count 200
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
from cityscapes_unet.infer.engines import load_engine  # noqa: E402
from cityscapes_unet.infer.predict import run_predict  # noqa: E402
from cityscapes_unet.io import read_photo, split_pair  # noqa: E402
from cityscapes_unet.resize import area_resize  # noqa: E402


def model_rate(model_path: str, tta: str, photos: list[np.ndarray], batch_size: int) -> float:
    """Photos per second of the model alone, after one warm-up batch."""
    runner = load_engine(model_path, "auto", tta)
    size = runner.input_size
    x = np.stack([area_resize(p, size, size) for p in photos])
    runner.predict(x[:batch_size])
    t0 = time.perf_counter()
    for start in range(0, len(x), batch_size):
        runner.predict(x[start : start + batch_size])
    return len(x) / (time.perf_counter() - t0)


def command_rate(model_path: str, tta: str, inputs: str, out: str, pairs: bool, batch_size: int) -> float:
    """Inputs per second of `run_predict`, as the command reports it (model load excluded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_predict([inputs], model_path, out=out, pairs=pairs, batch_size=batch_size, tta=tta)
    return summary["predicted"] / summary["seconds"]


def prepare(files: list[str], tmp: str) -> tuple[list[np.ndarray], str, str]:
    """The photo halves in memory and as PNGs in a folder, and a folder linking the pairs."""
    photos_dir, pairs_dir = os.path.join(tmp, "photos"), os.path.join(tmp, "pairs")
    os.makedirs(photos_dir)
    os.makedirs(pairs_dir)
    photos = []
    for f in files:
        photo = split_pair(read_photo(f))[0]
        photos.append(photo)
        name = os.path.basename(f)
        cv2.imwrite(
            os.path.join(photos_dir, os.path.splitext(name)[0] + ".png"),
            cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
        )
        os.symlink(os.path.realpath(f), os.path.join(pairs_dir, name))
    return photos, photos_dir, pairs_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="output/unet_model.keras", help="saved models, comma-separated")
    parser.add_argument("--tta", default="none", help="test-time averagings to time, comma-separated")
    parser.add_argument("--data-dir", required=True, help="folder of pairs (or with train/)")
    parser.add_argument("--count", type=int, default=100, help="pairs to use")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size everywhere")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every row")
    args = parser.parse_args()
    folder = os.path.join(args.data_dir, "train")
    files = list_images(folder if os.path.isdir(folder) else args.data_dir)[: args.count]
    rows = [(m, t) for m in args.model.split(",") for t in args.tta.split(",")]
    best: dict[tuple, list[float]] = {row: [0.0, 0.0, 0.0] for row in rows}
    with tempfile.TemporaryDirectory() as tmp:
        photos, photos_dir, pairs_dir = prepare(files, tmp)
        for round_ in range(args.rounds):
            for i, (model, tta) in enumerate(rows):
                out = os.path.join(tmp, f"out_{round_}_{i}")
                rates = (
                    model_rate(model, tta, photos, args.batch_size),
                    command_rate(model, tta, photos_dir, out + "_photos", False, args.batch_size),
                    command_rate(model, tta, pairs_dir, out + "_pairs", True, args.batch_size),
                )
                best[(model, tta)] = [max(a, b) for a, b in zip(best[(model, tta)], rates, strict=True)]
    print(f"{len(files)} photos, batch {args.batch_size}, best of {args.rounds} rounds, photos/s")
    print(f"{'model':<44}{'tta':<8}{'alone':>8}{'predict':>9}{'--pairs':>9}")
    for (model, tta), (bare, plain, paired) in best.items():
        print(f"{model[-43:]:<44}{tta:<8}{bare:8.1f}{plain:9.1f}{paired:9.1f}")
    (first, *others) = rows
    for row in others:
        ratios = [a / b for a, b in zip(best[row], best[first], strict=True)]
        print(f"{row[0]} ({row[1]}): {ratios[0]:.2f}x the model alone, {ratios[1]:.2f}x predict, "
              f"{ratios[2]:.2f}x predict --pairs of {first[0]} ({first[1]})")  # fmt: skip
    for row in rows:
        bare, plain, _ = best[row]
        print(f"{row[0]} ({row[1]}): predict runs at {plain / bare:.2f}x the model alone")


if __name__ == "__main__":
    main()
