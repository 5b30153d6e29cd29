"""Packs what the GPU session needs into one folder small enough to travel.

A lent GPU machine starts bare and receives a working tree of limited size
(`bench/gpu_session.sh` says what runs there). This copies into `--dest`
(default `.gpu/`, ignored by git):

- `pairs/train`, `pairs/val`: pair JPEGs taken evenly across a split by
  city (`../shared/tools/city_split.sh DEST` makes one), so that the short
  training there validates on cities it never saw, as the CPU recipes do;
- `whl/`: the Keras wheels for that machine's Python when `--wheels` is
  given (it has JAX and PyTorch but no Keras).

It stops with one line when the pack would exceed `--max-mib`.

    python bench/gpu_pack.py --data-dir /tmp/cs --wheels
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cityscapes_unet.data.files import list_images  # noqa: E402

#: The wheels Keras needs beyond what the GPU machine has (its package list:
#: absl-py, h5py, ml-dtypes, numpy, packaging, rich are there).
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0")

#: The GPU machine's interpreter and platform tags, for `pip download`.
PIP_TARGET = (
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
)


def evenly(files: list[str], count: int) -> list[str]:
    """`count` of `files` spread evenly over the list (all when fewer).

    Args:
        files: Paths in city order.
        count: How many to keep.

    Returns:
        The kept paths, in order; every city of a city-ordered list has its share.
    """
    if count >= len(files):
        return list(files)
    return [files[i * len(files) // count] for i in range(count)]


def copy_split(src: str, dest: str, count: int) -> int:
    """Copies `count` pairs of folder `src` (evenly taken) into `dest`.

    Args:
        src: Folder of pair JPEGs (links are followed).
        dest: Folder to create.
        count: Pairs to copy.

    Returns:
        Bytes copied.
    """
    files = list_images(src)
    if not files:
        sys.exit(f"error: {src}: no .jpg pairs")
    os.makedirs(dest, exist_ok=True)
    total = 0
    for path in evenly(files, count):
        out = os.path.join(dest, os.path.basename(path))
        shutil.copyfile(path, out)
        total += os.path.getsize(out)
    return total


def download_wheels(dest: str) -> int:
    """Downloads `WHEELS` for the GPU machine's Python into `dest`.

    Args:
        dest: Folder to create.

    Returns:
        Bytes downloaded.
    """
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*cmd, *PIP_TARGET, "-d", dest, *WHEELS], check=True)
    return sum(os.path.getsize(os.path.join(dest, n)) for n in os.listdir(dest))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="split by city: DIR/train and DIR/val")
    p.add_argument("--dest", default=".gpu", help="folder to fill (replaced)")
    p.add_argument("--train", type=int, default=1200, help="training pairs to take")
    p.add_argument("--val", type=int, default=500, help="validation pairs to take")
    p.add_argument("--wheels", action="store_true", help="also download the Keras wheels")
    p.add_argument("--max-mib", type=float, default=58.0, help="largest pack allowed")
    args = p.parse_args()
    for part in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data_dir, part)):
            sys.exit(f"error: --data-dir {args.data_dir}: no {part}/ folder")
    shutil.rmtree(args.dest, ignore_errors=True)
    total = copy_split(
        os.path.join(args.data_dir, "train"), os.path.join(args.dest, "pairs", "train"), args.train
    )
    total += copy_split(os.path.join(args.data_dir, "val"), os.path.join(args.dest, "pairs", "val"), args.val)
    if args.wheels:
        total += download_wheels(os.path.join(args.dest, "whl"))
    mib = total / 2**20
    if mib > args.max_mib:
        sys.exit(f"error: {args.dest} holds {mib:.1f} MiB, over --max-mib {args.max_mib}: take fewer pairs")
    print(f"{args.dest}: {mib:.1f} MiB")


if __name__ == "__main__":
    main()
