"""The fault campaign: broken models never kept, runs never lost, bad files named."""

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

from cityscapes_unet import errors
from cityscapes_unet.data.files import check_pair, scan_pairs  # noqa: E402
from cityscapes_unet.train import outputs
from cityscapes_unet.train.callbacks import BestModelCheckpoint, HistoryCSV, ResumeState, StopOnNonFinite  # noqa: E402
from conftest import ROOT, TINY, main_in_process, run_main, write_pairs  # noqa: E402
from segmentation_model import build_unet  # noqa: E402

FAST = (*TINY, "--num-preds", 1, "--progress-every", 0)


def _tiny_model():
    keras.utils.set_random_seed(0)
    return build_unet(32, 19, (4, 8))


def _poison(model):
    weights = model.get_weights()
    weights[0] = np.full_like(weights[0], np.nan)
    model.set_weights(weights)


def _truncate(path, keep=300):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


def _bad_name(folder):
    """Copy a good pair under a file name whose bytes are not UTF-8."""
    src = write_pairs(folder / "src", 1)[0]
    raw = os.fsencode(str(folder)) + b"/bad\xff.jpg"
    with open(raw, "wb") as f:
        f.write(open(src, "rb").read())
    os.remove(src)
    os.rmdir(folder / "src")


def _main(*args):
    """`main_in_process(ARGS)` as `(code, stdout, stderr)`."""
    r = main_in_process(*args)
    return r.returncode, r.stdout, r.stderr


def _weights_finite(path):
    model = keras.models.load_model(path, compile=False)
    return all(np.isfinite(w).all() for w in model.get_weights())


# 1. Non-finite weights are never saved.


def test_checkpoint_and_resume_state_refuse_non_finite_weights(tmp_path):
    model = _tiny_model()
    best = BestModelCheckpoint(str(tmp_path / "unet_model.keras"))
    state = ResumeState(str(tmp_path / "resume"))
    stop = StopOnNonFinite()
    for cb in (best, state, stop):
        cb.set_model(model)
    best.on_epoch_end(0, {"val_mean_iou": 0.1, "loss": 1.0})
    state.on_epoch_end(0, {"loss": 1.0})
    before = (tmp_path / "unet_model.keras").read_bytes()
    _poison(model)
    stop.on_epoch_end(1, {"loss": 1.0})
    best.on_epoch_end(1, {"val_mean_iou": 0.9, "loss": 1.0})
    state.on_epoch_end(1, {"loss": 1.0})
    assert stop.failed == "the weights became non-finite in epoch 2" and model.stop_training
    assert (tmp_path / "unet_model.keras").read_bytes() == before and best.best_epoch == 0
    assert ResumeState.load(str(tmp_path / "resume"))[0] == 1
    # A finite model after an epoch whose loss was NaN is not saved either.
    fresh = _tiny_model()
    best.set_model(fresh)
    best.on_epoch_end(2, {"val_mean_iou": 0.9, "loss": float("nan")})
    assert best.best_epoch == 0


@pytest.mark.slow
def test_exploding_run_keeps_no_broken_model(tiny_data, tmp_path):
    out = tmp_path / "o"
    r = run_main("--data-dir", tiny_data, "--output-dir", out, "--epochs", 3, *FAST, "--learning-rate", 1e30)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith("error: the training loss became nan")
    if (out / "unet_model.keras").exists():
        assert _weights_finite(out / "unet_model.keras") and "is kept in" in last
    else:
        assert "no model was saved" in last
    state = ResumeState.load(str(out / "resume"))
    if state:
        assert _weights_finite(state[1])


# 2-4. Truncated files and names that are not UTF-8: skipped by name, not counted.


def test_truncated_and_non_utf8_files_fail_the_check(tmp_path):
    good, cut = write_pairs(tmp_path, 2)
    _truncate(cut)
    assert check_pair(good) is None
    assert "does not decode" in check_pair(cut)
    _bad_name(tmp_path / "n")
    (bad,) = os.listdir(tmp_path / "n")
    assert "not valid UTF-8" in check_pair(str(tmp_path / "n" / bad))
    assert scan_pairs([good, cut]) == ([good], [(cut, check_pair(cut))])


@pytest.mark.slow
def test_bad_files_named_and_counts_exact_in_training_and_evaluate(tmp_path):
    data = tmp_path / "data"
    write_pairs(data / "train", 8)
    write_pairs(data / "val", 4, seed=50)
    _truncate(data / "train" / "3.jpg")
    _truncate(data / "val" / "2.jpg")
    _bad_name(data / "train")
    out = tmp_path / "o"
    r = main_in_process("--data-dir", data, "--output-dir", out, "--epochs", 1, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "Data: 7 training samples, 3 validation samples" in r.stdout
    assert "Decoded 7 training samples" in r.stdout
    skipped = (out / "skipped.txt").read_text().splitlines()
    names = sorted(os.path.basename(line.split("\t")[0]) for line in skipped)
    assert names == ["2.jpg", "3.jpg", "bad\\xff.jpg"]
    cfg = json.load(open(out / "config.json"))
    assert (cfg["train_files"], cfg["val_files"]) == (7, 3)

    for args in ((), ("--data-dir", data)):
        code, stdout, err = _main(
            "evaluate", "--model", out / "unet_model.keras", "--output-dir", tmp_path / "ev", *args
        )
        assert code == 0, err[-3000:]
        assert "on 3 pairs" in stdout and "skipped " in stdout and "2.jpg" in stdout
        assert json.load(open(tmp_path / "ev" / "report.json"))["files"] == 3
        assert "2.jpg" in (tmp_path / "ev" / "skipped.txt").read_text()


def test_evaluate_of_a_folder_with_a_non_utf8_name(tmp_path):
    write_pairs(tmp_path / "pairs", 2)
    _bad_name(tmp_path / "pairs")
    model = _tiny_model()
    model.save(tmp_path / "m.keras")
    code, out, err = _main("evaluate", "--model", tmp_path / "m.keras", "--data-dir", tmp_path / "pairs")
    assert code == 0, err[-3000:]
    assert "on 2 pairs" in out and "bad\\xff.jpg: file name is not valid UTF-8" in out


# 5. One run per folder.


def _hold_lock(folder):
    code = f"import sys, time; sys.path.insert(0, {ROOT!r}); from cityscapes_unet.train.outputs import RunLock; RunLock({str(folder)!r}); print('held', flush=True); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_lock_refuses_a_second_holder_and_not_after_a_kill(tmp_path):
    holder = _hold_lock(tmp_path / "o")
    try:
        with pytest.raises(errors.FolderInUse, match=f"in use by process {holder.pid}"):
            outputs.RunLock(str(tmp_path / "o"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    outputs.RunLock(str(tmp_path / "o")).release()  # the killed holder's lock went with it


# 6-7. Earlier runs: an unfinished one is refused, a finished one kept whole.


def test_unfinished_run_refused_whatever_the_epochs(tiny_data, tmp_path):
    out = tmp_path / "o"
    (out / "resume").mkdir(parents=True)
    (out / "resume" / "epoch_002.keras").write_bytes(b"model")
    (out / "resume" / "state.json").write_text('{"epochs_done": 2, "model": "epoch_002.keras"}')
    for epochs in (1, 2, 3):
        code, _, err = _main("--data-dir", tiny_data, "--output-dir", out, "--epochs", epochs, *FAST)
        assert code == 2 and f"error: --output-dir {out}: " in err and "--resume" in err
    assert sorted(os.listdir(out / "resume")) == ["epoch_002.keras", "state.json"]


@pytest.mark.slow
def test_run_folder_busy_refused_earlier_run_kept_whole_temporaries_removed(tmp_path):
    write_pairs(tmp_path / "a" / "train", 8)
    write_pairs(tmp_path / "b" / "train", 10, seed=30)
    out = tmp_path / "o"
    assert (
        main_in_process("--data-dir", tmp_path / "a", "--output-dir", out, "--epochs", 1, *FAST).returncode
        == 0
    )
    first = {n: (out / n).read_bytes() for n in ("unet_model.keras", "config.json", "history.csv")}

    # Busy: a run (or --resume, or --overwrite) on a folder in use is refused.
    holder = _hold_lock(out)
    try:
        for extra in (
            ("--data-dir", tmp_path / "b"),
            ("--resume",),
            ("--data-dir", tmp_path / "b", "--overwrite"),
        ):
            code, _, err = _main("--output-dir", out, "--epochs", 1, *FAST, *extra)
            assert code == 2 and f"in use by process {holder.pid}" in err, err[-2000:]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # What killed saves left behind goes once a run holds the folder.
    (out / "resume").mkdir()
    stale = [out / ".unet_model.keras.tmp-999.keras", out / "resume" / ".epoch_001.keras.tmp-999.keras"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    r = main_in_process("--data-dir", tmp_path / "b", "--output-dir", out, "--epochs", 1, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [n for _, _, files in os.walk(out) for n in files if ".tmp-" in n] == []

    # The finished run was moved whole, and still scores on its own split.
    (kept,) = os.listdir(out / "earlier")
    earlier = out / "earlier" / kept
    assert f"moved whole to {earlier}" in r.stdout
    for name, data in first.items():
        assert (earlier / name).read_bytes() == data
    assert {"acc.png", "pred_1.png", "unet_model.json", "classes.json"} <= set(os.listdir(earlier))
    code, stdout, err = _main("evaluate", "--model", earlier / "unet_model.keras")
    assert code == 0, err[-3000:]
    assert str(tmp_path / "a") in stdout and "on 1 pairs" in stdout  # its own 15% of 8


# 8. Folders that cannot be written.


def test_unwritable_output_folder_one_line(tiny_data, tmp_path):
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile" / "out", tmp_path / ("x" * 300)):
        code, _, err = _main("--data-dir", tiny_data, "--output-dir", out, "--epochs", 1, *FAST)
        assert code == 2 and err.strip().count("\n") == 0 and f"--output-dir {out}" in err, err[-2000:]
    _tiny_model().save(tmp_path / "m.keras")
    write_pairs(tmp_path / "pairs", 2)
    code, _, err = _main(
        "evaluate", "--model", tmp_path / "m.keras", "--data-dir", tmp_path / "pairs",
        "--output-dir", tmp_path / "afile" / "ev",
    )  # fmt: skip
    assert code == 2 and f"--output-dir {tmp_path / 'afile' / 'ev'}" in err


@pytest.mark.slow
def test_disk_full_at_start_up_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    import main
    from cityscapes_unet import io

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(io, "write_json", full)
    code = main.main(
        ["--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "o"), "--epochs", "1"]
        + [str(a) for a in TINY]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == f"error: {tmp_path / 'o' / 'config.json'}: No space left on device"


# 10. Ctrl-C.


def _interrupt(args, ready):
    """Start main.py, send SIGINT once `ready()` holds; return (code, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell may start children with SIGINT ignored: restore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_says_what_is_on_disk_and_how_to_go_on(tiny_data, tmp_path):
    out = tmp_path / "o"
    flags = ("--data-dir", tiny_data, "--output-dir", out, "--epochs", 200, *FAST)
    code, err = _interrupt(flags, lambda: (out / "unet_model.json").exists())
    last = err.strip().splitlines()[-1]
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert "the best model so far (epoch" in last and f"--output-dir {out} --resume" in last
    assert (out / "unet_model.keras").exists()

    # At once (while the libraries load): no traceback, no claim of a model.
    other = tmp_path / "o2"
    start = time.time()
    code, err = _interrupt((*flags[:2], "--output-dir", other, *flags[4:]), lambda: time.time() > start + 1)
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert "best model" not in err and not (other / "unet_model.keras").exists()


# 11. Models that are not files, the Kaggle folder, the best model's epoch on resume.


def test_folder_and_truncated_model_are_named_as_such(tmp_path):
    _tiny_model().save(tmp_path / "m.keras")
    (tmp_path / "cut.keras").write_bytes((tmp_path / "m.keras").read_bytes()[:5000])
    write_pairs(tmp_path / "pairs", 1)
    for model, needle in ((tmp_path, "is a folder"), (tmp_path / "cut.keras", "not a whole .keras file")):
        code, _, err = _main("evaluate", "--model", model, "--data-dir", tmp_path / "pairs")
        assert code == 2 and needle in err and "File not found" not in err


def test_kaggle_parent_folder_points_at_its_sub_folder(tmp_path):
    write_pairs(tmp_path / "kaggle" / "cityscapes_data" / "train", 2)
    code, _, err = _main("--data-dir", tmp_path / "kaggle", "--output-dir", tmp_path / "o", *FAST)
    assert code == 2 and f"pass --data-dir {tmp_path / 'kaggle' / 'cityscapes_data'}" in err


def test_resume_catches_up_the_best_model_of_the_last_epoch(tmp_path):
    # Killed after epoch 2's resume state, before its best-model save.
    model = _tiny_model()
    best = BestModelCheckpoint(str(tmp_path / "unet_model.keras"))
    best.set_model(model)
    best.on_epoch_end(0, {"val_mean_iou": 0.2, "loss": 1.0})
    history = HistoryCSV(str(tmp_path / "history.csv"))
    history.set_model(model)
    model.compile(optimizer="adam")
    for epoch, score in ((0, 0.2), (1, 0.3)):
        history.on_epoch_end(epoch, {"val_mean_iou": score, "loss": 1.0})
    resumed = BestModelCheckpoint(str(tmp_path / "unet_model.keras"))
    resumed.restore()
    history.restore(2)
    resumed.catch_up(model, history.rows[-1])
    info = json.load(open(tmp_path / "unet_model.json"))
    assert info == {"best": 0.3, "epoch": 2} and resumed.best_epoch == 1
    # Caught up already: the history's rounded score does not save it again.
    mtime = os.path.getmtime(tmp_path / "unet_model.keras")
    resumed.catch_up(model, {**history.rows[-1], "val_mean_iou": 0.3000001})
    assert os.path.getmtime(tmp_path / "unet_model.keras") == mtime
