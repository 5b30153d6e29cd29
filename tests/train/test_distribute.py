"""Data-parallel training on CPU: two replicas and two workers train like one.

The CPU is split into two logical devices (`CITYSCAPES_CPU_REPLICAS=2`), or two
worker processes talk over localhost; each run has its own process, since
devices must be set before TensorFlow starts.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow

from conftest import ROOT, TINY, main_in_process, run_main  # noqa: E402

#: One short epoch; the cosine schedule depends on the epoch count, so all
#: runs compared here use the same flags.
RUN = (*TINY, "--epochs", 1, "--num-preds", 1)
#: Stated tolerance between a distributed run and one replica. Batch norm
#: is synchronised and the data order is the same, but each replica
#: averages its loss over its own labelled pixels, so the gradient differs
#: slightly from one replica's when the shares hold different numbers of
#: ignored pixels, and sums run in another order.
MIOU_TOL = 0.002
#: The CPU split into two devices.
TWO_CPUS = {"CITYSCAPES_CPU_REPLICAS": "2"}
LOSS_RTOL = 2e-3


def _last_row(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        row = list(csv.DictReader(f))[-1]
    return {k: float(v) for k, v in row.items()}


@pytest.fixture(scope="module")
def data_and_single(tmp_path_factory):
    """The tiny data folder and the one-replica run everything is compared with."""
    from conftest import write_pairs

    root = tmp_path_factory.mktemp("dist")
    write_pairs(root / "data" / "train", 12)
    out = root / "single"
    r = main_in_process("--data-dir", root / "data", "--output-dir", out, *RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, _last_row(out)


def _assert_like_single(row, single):
    assert abs(row["val_mean_iou"] - single["val_mean_iou"]) <= MIOU_TOL, (row, single)
    assert row["val_loss"] == pytest.approx(single["val_loss"], rel=LOSS_RTOL)
    assert row["loss"] == pytest.approx(single["loss"], rel=LOSS_RTOL)


def test_mirrored_two_cpu_replicas_match_one(data_and_single):
    root, single = data_and_single
    out = root / "mirrored"
    r = run_main(
        "--data-dir", root / "data", "--output-dir", out, *RUN, "--distribute", "mirrored", env=TWO_CPUS
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MirroredStrategy over 2 CPU device(s)" in r.stdout
    _assert_like_single(_last_row(out), single)
    # The saved model is a plain one: it loads on any backend.
    assert '"synchronized": true' not in _model_config(out / "unet_model.keras")


def _model_config(path):
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.read("config.json").decode()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_workers_on_localhost_match_one(data_and_single):
    root, single = data_and_single
    out = root / "workers"
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    procs = []
    for index in range(2):
        env = dict(
            os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        )
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--data-dir", str(root / "data")]
        cmd += ["--output-dir", str(out), *map(str, RUN), "--distribute", "multiworker"]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_out, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    assert "MultiWorkerMirroredStrategy: 2 workers, 2 replicas" in results[0][0]
    assert "the chief wrote the outputs" in results[1][0]
    _assert_like_single(_last_row(out), single)
    # Only the chief wrote: one model, one history, no worker leftovers.
    assert (out / "unet_model.keras").is_file()
    assert not [n for n in os.listdir(out) if n.startswith("unet-worker-")]


def test_distribute_errors_are_one_line(tmp_path, data_and_single, monkeypatch):
    from cityscapes_unet import errors
    from cityscapes_unet.train import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(errors.DistributeError, match="^--distribute multiworker: set TF_CONFIG on each"):
        distribute.setup("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(errors.DistributeError, match="TF_CONFIG is not valid JSON"):
        distribute.setup("multiworker")
    with pytest.raises(
        errors.DistributeError, match="^CITYSCAPES_CPU_REPLICAS=2: only with --distribute mirrored"
    ):
        distribute.setup("none", cpu_replicas=2)
    monkeypatch.setenv("CITYSCAPES_CPU_REPLICAS", "two")
    with pytest.raises(errors.DistributeError, match="^CITYSCAPES_CPU_REPLICAS=two: "):
        distribute.cpu_replicas_from_env()
    monkeypatch.delenv("TF_CONFIG")
    # From the command line: one line, exit code 2, no traceback.
    root, _ = data_and_single
    r = run_main(
        "--data-dir", root / "data", "--output-dir", tmp_path / "c", *RUN[:-2], "--batch-size", 3,
        "--distribute", "mirrored", env=TWO_CPUS,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --batch-size 3: ")
