"""Faults caused on purpose: kills, failed saves, NaN, bad data, bad models and flags."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cityscapes_unet.data.files import check_pair, scan_pairs  # noqa: E402
from cityscapes_unet.errors import TrainingError  # noqa: E402
from cityscapes_unet.train.callbacks import BestModelCheckpoint  # noqa: E402
from conftest import ROOT, TINY, main_in_process, write_pairs  # noqa: E402
from segmentation_model import build_unet  # noqa: E402


def _history(out):
    return list(csv.DictReader(open(out / "history.csv")))


def _start_main(*args):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_resume_after_sigkill_continues_where_it_stopped(tiny_data, tmp_path):
    # The first epoch at a smaller size, the last two at a larger one: the
    # resumed run goes on in the middle of a stage. With flips: their draws
    # must resume too (`skip_epochs`, tested for both pipelines in test_numpy_pipeline).
    sizes = ("first_size=16", "first_epochs=1", "final_size=48", "final_epochs=2")
    flags = (
        "--data-dir",
        tiny_data,
        "--epochs",
        3,
        *TINY,
        "--num-preds",
        0,
        "--progress-every",
        0,
        "--augment",
        "flip",
    )
    flags += tuple(arg for item in sizes for arg in ("--set", item))
    # The same run, uninterrupted, for comparison.
    ref = tmp_path / "ref"
    r = main_in_process(*flags, "--output-dir", ref)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "run"
    proc = _start_main(*flags, "--output-dir", out)
    state = out / "resume" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.load(open(state))["epochs_done"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.load(open(state))["epochs_done"]
    assert done == 2
    best_before = (out / "unet_model.keras").read_bytes()

    # A new run over the unfinished one is refused; so is a contradicting resume.
    r = main_in_process(*flags, "--output-dir", out)
    assert r.returncode == 2 and f"--output-dir {out}" in r.stderr and "--resume" in r.stderr
    r = main_in_process("--output-dir", out, "--resume", "--learning-rate", 0.5)
    assert r.returncode == 2 and "--learning-rate 0.5" in r.stderr and "Traceback" not in r.stderr
    assert (out / "unet_model.keras").read_bytes() == best_before

    # Resume with no other flag: the saved configuration is used.
    r = main_in_process("--output-dir", out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resuming {out} after epoch 2 of 3" in r.stdout
    assert "image_size = 32 (from the resumed run's config.json)" in r.stdout
    assert "Epoch 3 of 3: training and validating at 48x48" in r.stdout
    rows = _history(out)
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    # The optimizer's step count came back: the learning rate goes on along
    # the same cosine schedule as the uninterrupted run.
    np.testing.assert_allclose(
        [float(row["learning_rate"]) for row in rows],
        [float(row["learning_rate"]) for row in _history(ref)],
        rtol=1e-5,
    )
    # The resumed epochs drew the uninterrupted run's order and flips: the
    # same scores epoch by epoch.
    for column in ("loss", "val_loss", "val_mean_iou"):
        np.testing.assert_allclose(
            [float(row[column]) for row in rows],
            [float(row[column]) for row in _history(ref)],
            rtol=1e-4,
            err_msg=column,
        )
    assert not (out / "resume").exists()  # finished: nothing left to resume
    model = keras.models.load_model(out / "unet_model.keras", compile=False)
    assert model.output_shape == (None, 32, 32, 19)
    info = json.load(open(out / "unet_model.json"))
    best_row = max(rows, key=lambda row: float(row["val_mean_iou"]))
    assert info["best"] == pytest.approx(float(best_row["val_mean_iou"]), abs=1e-6)
    r = main_in_process("--output-dir", out, "--resume")
    assert r.returncode == 2 and r.stderr.startswith("error: --resume: ")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_failed_save_keeps_earlier_best(tmp_path, monkeypatch, code):
    keras.utils.set_random_seed(0)
    model = build_unet(32, 19, (4, 8))
    path = tmp_path / "unet_model.keras"
    cb = BestModelCheckpoint(str(path))
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_mean_iou": 0.2})
    before = path.read_bytes()

    def failing_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:  # half a file, then the disk is full
            f.write(b"PK\x03\x04partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(keras.Model, "save", failing_save)
    with pytest.raises(TrainingError, match=os.strerror(code)) as e:
        cb.on_epoch_end(1, {"val_mean_iou": 0.5})
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["unet_model.json", "unet_model.keras"]  # no temporary file


@pytest.mark.slow
def test_failed_save_ends_the_command_with_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    import main

    def failing_save(self, filepath, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", failing_save)
    code = main.main(
        ["--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "o"), "--epochs", "1"]
        + [str(a) for a in TINY]
    )
    err = capsys.readouterr().err
    assert (
        code == 1
        and err.startswith("error: ")
        and "No space left on device" in err
        and "Traceback" not in err
    )


def _jpeg_with_header(tmp_path, name, height, width):
    """A real pair JPEG whose frame header claims another size."""
    data = bytearray(open(write_pairs(tmp_path / "src", 1)[0], "rb").read())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    (tmp_path / name).write_bytes(bytes(data))
    return tmp_path / name


@pytest.mark.slow
def test_bad_data_suite(tmp_path):
    import cv2
    from PIL import Image

    d = tmp_path / "train"
    good = write_pairs(d, 6)
    (d / "zero.jpg").write_bytes(b"")
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((32, 64, 3), np.uint8))
    (d / "png.jpg").write_bytes((tmp_path / "p.png").read_bytes())
    Image.new("CMYK", (64, 32), (10, 20, 30, 0)).save(d / "cmyk.jpg")
    cv2.imwrite(str(d / "gray.jpg"), np.zeros((32, 64), np.uint8))
    cv2.imwrite(str(d / "square.jpg"), np.zeros((32, 32, 3), np.uint8))
    write_pairs(tmp_path / "large", 1, size=48)
    os.replace(tmp_path / "large" / "1.jpg", d / "larger.jpg")
    huge = _jpeg_with_header(d, "huge.jpg", 20000, 40000)
    trunc = d / "truncated.jpg"
    trunc.write_bytes(open(good[0], "rb").read()[:30])
    (d / "notes.txt").write_text("not an image: not even looked at")
    os.mkdir(d / "sub")
    os.mkdir(d / "folder.jpg")
    os.symlink(d / "missing.jpg", d / "dangling.jpg")
    reasons = {os.path.basename(p): why for p, why in scan_pairs(sorted(str(p) for p in d.glob("*.jpg")))[1]}
    assert set(reasons) == {
        "zero.jpg",
        "random.jpg",
        "png.jpg",
        "cmyk.jpg",
        "gray.jpg",
        "square.jpg",
        "larger.jpg",
        "huge.jpg",
        "truncated.jpg",
        "dangling.jpg",
        "folder.jpg",
    }
    assert (
        "4-channel" in reasons["cmyk.jpg"]
        and "too large" in reasons["huge.jpg"]
        and "64x32" in reasons["larger.jpg"]
    )
    assert check_pair(str(huge)) == reasons["huge.jpg"]

    # The command line skips them (list_images drops links to nothing and
    # folders before the checks), counts them and trains on the good ones.
    r = main_in_process(
        "--data-dir", tmp_path, "--output-dir", tmp_path / "o", "--epochs", 1, *TINY, "--num-preds", 0
    )
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = (tmp_path / "o" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 9 and "Skipped 9 unusable files" in r.stdout
    assert json.load(open(tmp_path / "o" / "config.json"))["train_files"] == 5


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    import builtins

    paths = write_pairs(tmp_path, 2)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file) == paths[1]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    # Tests may run as root, for whom chmod 000 does not stop reading.
    monkeypatch.setattr(builtins, "open", guarded_open)
    good, skipped = scan_pairs(paths)
    assert good == [paths[0]]
    assert skipped == [(paths[1], "cannot read: Permission denied")]


def test_models_refused_with_one_line(tmp_path):
    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(19, 1)(keras.layers.Lambda(lambda t: t / 255.0)(inp))
    keras.Model(inp, out).save(tmp_path / "lambda.keras")
    two = keras.Model(inp, [keras.layers.Conv2D(19, 1)(inp), keras.layers.Conv2D(19, 1)(inp)])
    two.save(tmp_path / "two.keras")
    write_pairs(tmp_path / "pairs", 2)
    for name, needle in (("lambda.keras", "Lambda layer"), ("two.keras", "2 outputs")):
        for cmd in (
            ("evaluate", "--model", tmp_path / name, "--data-dir", tmp_path / "pairs"),
            ("predict", "--model", tmp_path / name, "--out", tmp_path / "o", tmp_path / "pairs"),
        ):
            r = main_in_process(*cmd)
            assert r.returncode == 2, (cmd, r.stderr[-2000:])
            assert needle in r.stderr and "Traceback" not in r.stderr
            assert len(r.stderr.strip().splitlines()[-1]) < 300


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--limit", "1"], "--limit 1"),
        (["--progress-every", "-1"], "--progress-every -1"),
        (["--learning-rate", "-1"], "--learning-rate -1"),
        (["--learning-rate", "nan"], "--learning-rate nan"),
        (["--image-size", "24"], "--image-size 24"),
        (["--base-filters", "0"], "--base-filters 0"),
        (["--set", "val_split=0"], "--val-split 0"),
        (["--epochs", "ten"], "--epochs"),
        (["--loss", "focal"], "--loss"),
    ],
)
def test_nonsense_flags(args, needle, tmp_path):
    r = main_in_process(*args, "--output-dir", tmp_path / "o")
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr and "Traceback" not in r.stderr
