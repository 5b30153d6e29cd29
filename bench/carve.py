"""Which carved validation predicts new cities: a random carve or blocks of files.

A user without a `val/` folder validates on a fraction carved out of the
training pairs. This lays out one experiment that compares the carves on the
same model: from the training folder of a city split (`city_split.sh`) it
holds out a block carve and a random carve of the same size (the project's
own `split_train_val`), and links the rest as training data, with the city
split's validation cities as `val/`:

    python bench/carve.py --city-split CS --dest CARVE
    python main.py --epochs 10 --data-dir CARVE/run --output-dir CARVE/out
    python main.py evaluate --model CARVE/out/unet_model.keras --data-dir CARVE/random
    python main.py evaluate --model CARVE/out/unet_model.keras --data-dir CARVE/blocks
    python main.py evaluate --model CARVE/out/unet_model.keras --data-dir CARVE/run

The carve whose score is closest to the new cities' (the last command) is
the one that predicts them.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cityscapes_unet.data.files import list_images, split_train_val  # noqa: E402


def link_all(files: list[str], folder: str) -> None:
    """Link each file into `folder` under its own name (made if missing)."""
    os.makedirs(folder, exist_ok=True)
    for f in files:
        target = os.path.join(folder, os.path.basename(f))
        if os.path.lexists(target):
            os.remove(target)
        os.symlink(os.path.realpath(f), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--city-split", required=True, help="Folder with train/ and val/ split by city.")
    parser.add_argument("--dest", required=True, help="Folder to lay the experiment out in.")
    parser.add_argument("--fraction", type=float, default=0.075, help="Share of train/ in each carve.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of both carves.")
    args = parser.parse_args()
    files = list_images(os.path.join(args.city_split, "train"))
    rest, blocks = split_train_val(files, args.fraction, args.seed, "blocks")
    # The random carve is drawn from what the blocks left, at the same size.
    train, random = split_train_val(rest, len(blocks) / len(rest), args.seed, "random")
    link_all(blocks, os.path.join(args.dest, "blocks"))
    link_all(random, os.path.join(args.dest, "random"))
    link_all(train, os.path.join(args.dest, "run", "train"))
    link_all(list_images(os.path.join(args.city_split, "val")), os.path.join(args.dest, "run", "val"))
    print(f"{args.dest}: {len(train)} train, {len(blocks)} in blocks, {len(random)} at random")


if __name__ == "__main__":
    main()
