"""Shared fixtures: tiny synthetic image pairs and the project on sys.path."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARED_TRAIN = os.path.join(ROOT, "..", "shared", "data", "cityscapes_pairs", "train")

#: Flags of a tiny training run, XLA as the machine's default.
TINY_DEFAULT_XLA = ("--image-size", 32, "--base-filters", 4, "--batch-size", 4)
#: Flags of a tiny, fast training run: XLA compilation would take longer
#: than such a run itself.
TINY = (*TINY_DEFAULT_XLA, "--xla", "off")


#: Makes `import tensorflow` fail in a Python process, as on a machine without it.
BLOCK_TF = """
import importlib.abc, sys
class _NoTF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTF())
"""


def run_main(*args, cwd=None, env=None):
    """Run `python main.py ARGS` in a fresh process (with `env` added to its environment)."""
    import subprocess

    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def main_in_process(*args):
    """Run `main.main(ARGS)` in this process; return a CompletedProcess.

    For commands that stop before training (refusals, bad input): it skips
    the second or so a fresh process spends importing TensorFlow.
    """
    import contextlib
    import io
    import subprocess

    import main as cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def make_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic pair: stripes of a few classes, the photo tinted per class.

    Returns:
        `(pair_rgb, ids)`: uint8 `(size, 2*size, 3)` and the trainIds
        `(size, size)` drawn in its label half.
    """
    from utils_func import CLASSES

    rng = np.random.default_rng(seed)
    ids = np.zeros((size, size), np.uint8)
    bands = rng.choice([0, 2, 8, 10, 13], size=4, replace=False)
    for i, c in enumerate(bands):
        ids[i * size // 4 : (i + 1) * size // 4] = c
    ids[: size // 8, : size // 8] = 255  # a void corner, drawn black
    lut = np.zeros((256, 3), np.uint8)
    for c in CLASSES:
        lut[c.train_id] = c.color
    label = lut[ids]
    # The photo tells the class by its colour, plus noise: learnable.
    photo = np.clip(lut[ids].astype(int) // 2 + 60 + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    return np.concatenate([photo.astype(np.uint8), label], axis=1), ids


def write_pairs(folder, count: int, size: int = 32, seed: int = 0) -> list[str]:
    """Write `count` pair JPEGs (high quality) into `folder`; return paths."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        pair, _ = make_pair(size, seed + i)
        p = os.path.join(folder, f"{i + 1}.jpg")
        cv2.imwrite(p, cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
        paths.append(p)
    return paths


def tiny_fit(folder, loss="ce_lovasz", epochs=1, weights=None, pairs=8, size=32, learning_rate=1e-2):
    """Fit the project's tiny UNet on synthetic pairs, as a run's stage does.

    Returns:
        `(model, losses)`: the compiled training model and its loss per epoch.
    """
    import keras

    from cityscapes_unet.data.source import DataSpec, from_pairs, resolve_pipeline
    from cityscapes_unet.settings import TrainConfig
    from cityscapes_unet.train.run import build_network, compile_for_size

    keras.utils.set_random_seed(0)
    files = write_pairs(os.path.join(folder, "pairs"), pairs, size=size)
    spec = DataSpec(batch_size=pairs, pipeline=resolve_pipeline("auto")[0])
    train, _ = from_pairs(files, files[:1], "test", spec).datasets(size)
    cfg = TrainConfig(base_filters=8, block="plain", loss=loss)
    model = compile_for_size(
        build_network(cfg), keras.optimizers.Adam(learning_rate), cfg, weights, size, size
    )
    return model, model.fit(train, epochs=epochs, verbose=0, shuffle=False).history["loss"]


@pytest.fixture
def tiny_data(tmp_path):
    """A data folder with `train/` holding 12 synthetic 32x64 pairs."""
    write_pairs(tmp_path / "data" / "train", 12)
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Reset Keras' global dtype policy: a run in this process sets it (bf16 on CPUs with the units)."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
