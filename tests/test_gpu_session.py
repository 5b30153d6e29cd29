"""The prepared GPU session runs end to end where TensorFlow cannot be imported.

`bench/gpu_pack.py` packs pairs taken across a split by city and
`bench/gpu_session.sh` runs the throughput table and a short JAX training on
them, as on the lent GPU machine (JAX, no TensorFlow); here in its tiny mode
on the CPU, with `import tensorflow` made to fail in every Python process.
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import BLOCK_TF, ROOT, SHARED_TRAIN, write_pairs


def _city_split(root, count_train: int, count_val: int):
    """DIR/train and DIR/val: real pairs of different files where ../shared exists, else tiny ones."""
    if os.path.isdir(SHARED_TRAIN):
        names = sorted(os.listdir(SHARED_TRAIN), key=lambda n: int(n.split(".")[0]))
        for part, chosen in (("train", names[:count_train]), ("val", names[-count_val:])):
            os.makedirs(root / part)
            for name in chosen:
                shutil.copyfile(os.path.join(SHARED_TRAIN, name), root / part / name)
        return "real"
    write_pairs(root / "train", count_train, size=32)
    write_pairs(root / "val", count_val, size=32, seed=1)
    return "tiny"


@pytest.mark.slow
def test_gpu_session_tiny_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    _city_split(tmp_path / "split", 12, 4)
    pack = tmp_path / "pack"
    r = subprocess.run(
        [
            sys.executable,
            "bench/gpu_pack.py",
            "--data-dir",
            tmp_path / "split",
            "--dest",
            pack,
            "--train",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # Taken evenly: the first and a later file of train, all four of val.
    assert len(os.listdir(pack / "pairs" / "train")) == 8 and len(os.listdir(pack / "pairs" / "val")) == 4
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_TF)
    env = {
        **os.environ,
        "TINY": "1",
        "TINY_EPOCHS": "1",
        "POLICIES": "mixed_bfloat16",
        "PYTHON": sys.executable,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(tmp_path / "site"),
    }
    blocked = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True
    )
    assert "No module named 'tensorflow'" in blocked.stderr  # the block is in force
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", "bench/gpu_session.sh", pack, out], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    throughput = (out / "throughput.txt").read_text()
    assert f"real pairs from {pack}/pairs/train" in throughput
    assert "keras mixed_bfloat16" in throughput
    assert "matmul peak" in throughput and "MFU" in throughput
    assert "No module named 'tensorflow'" not in r.stdout
    history = (out / "train" / "history.csv").read_text().splitlines()
    assert history[0].split(",")[6] == "val_mean_iou" and len(history) == 2  # header, one epoch
    assert (out / "train" / "unet_model.keras").is_file()
    assert '"pipeline_used": "numpy"' in (out / "train" / "config.json").read_text()
