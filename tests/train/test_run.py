"""Training: the checkpoint, the schedule, the command line end to end, staged sizes, messages."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cityscapes_unet.infer.saved_model import network_of  # noqa: E402
from cityscapes_unet.resize import area_resize  # noqa: E402
from cityscapes_unet.settings import TrainConfig, config_from_command_line  # noqa: E402
from cityscapes_unet.train.callbacks import BestModelCheckpoint  # noqa: E402
from cityscapes_unet.train.run import build_network, compile_for_size, make_optimizer  # noqa: E402
from conftest import TINY, TINY_DEFAULT_XLA, main_in_process, run_main, write_pairs  # noqa: E402


def _tiny_model():
    cfg = TrainConfig(base_filters=4, block="plain", loss="ce")
    return compile_for_size(build_network(cfg), keras.optimizers.Adam(), cfg, None, 32, 32)


def test_checkpoint_replaces_only_on_improvement(tmp_path):
    path = str(tmp_path / "best.keras")
    model = _tiny_model()
    cb = BestModelCheckpoint(path)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_mean_iou": 0.30})
    first = os.stat(path).st_mtime_ns

    def head():
        return network_of(keras.models.load_model(path))[0].get_layer("head_conv").get_weights()[0]

    saved = head()
    # Change the weights: a worse, equal or NaN epoch must not be saved.
    layer = network_of(model)[0].get_layer("head_conv")
    layer.set_weights([w + 1 for w in layer.get_weights()])
    for value in (0.20, 0.30, float("nan")):
        cb.on_epoch_end(1, {"val_mean_iou": value})
    assert os.stat(path).st_mtime_ns == first
    np.testing.assert_array_equal(head(), saved)
    cb.on_epoch_end(2, {"val_mean_iou": 0.35})
    assert (cb.best, cb.best_epoch) == (0.35, 2) and not np.array_equal(head(), saved)
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras"]  # no temporary files left


def test_warmup_cosine_schedule():
    sched = make_optimizer(TrainConfig(epochs=4, learning_rate=1e-2), steps_per_epoch=20)._learning_rate
    assert float(sched(0)) == pytest.approx(2e-4)  # 2% of the peak
    assert float(sched(5)) == pytest.approx((2e-4 + 1e-2) / 2, rel=1e-3)  # linear rise over half an epoch
    assert float(sched(10)) == pytest.approx(1e-2)  # the peak
    assert float(sched(80)) == pytest.approx(2e-4, rel=1e-3)  # cosine down to 2%


@pytest.mark.slow
def test_main_end_to_end_tiny(tiny_data, tmp_path):
    out = tmp_path / "out"
    r = run_main("--data-dir", tiny_data, "--output-dir", out, "--epochs", 2, *TINY_DEFAULT_XLA, "--num-preds", 2,
                 "--tensorboard", "--set", "val_split=0.25")  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "loss = ce_lovasz, class_weights = auto" in r.stdout
    for name in (
        "unet_model.keras",
        "history.csv",
        "config.json",
        "classes.json",
        "acc.png",
        "loss.png",
        "miou.png",
        "pred_1.png",
        "pred_2.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "model_arch.png").exists() or (out / "model_arch.txt").exists()
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {
        "loss",
        "accuracy",
        "mean_iou",
        "val_loss",
        "val_accuracy",
        "val_mean_iou",
        "learning_rate",
    } <= set(rows[0])
    cfg = json.load(open(out / "config.json"))
    assert (cfg["image_size"], cfg["val_split"], cfg["train_files"], cfg["val_files"]) == (32, 0.25, 9, 3)
    assert len(json.load(open(out / "classes.json"))) == 19
    assert "Best validation mean IoU" in r.stdout and "pred_1..2.png" in r.stdout
    assert keras.models.load_model(out / "unet_model.keras", compile=False).output_shape == (None, 32, 32, 19)
    # Progress pictures before training and after each epoch, and a GIF of them.
    from PIL import Image

    frames = sorted(os.listdir(out / "progress"))
    assert frames == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]
    assert Image.open(out / "progress.gif").n_frames == 3
    for sub in ("train", "validation", "progress"):  # TensorBoard: scalars and pictures
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(out / "logs" / sub)), sub
    # Its config.json as the defaults of a new run: the same settings; a flag and --set override.
    again, _ = config_from_command_line({}, [], str(out / "config.json"))
    assert dataclasses.asdict(again) == {k: cfg[k] for k in dataclasses.asdict(again)}
    other, _ = config_from_command_line({"output_dir": "o2"}, ["seed=7"], str(out / "config.json"))
    assert {k for k, v in dataclasses.asdict(other).items() if cfg[k] != v} == {"output_dir", "seed"}

    # A second run over it, at 16x16 on the 32x32 pairs (--overwrite: the
    # first run is removed, not kept): its saved model takes the photos as they are.
    r2 = main_in_process("--data-dir", tiny_data, "--output-dir", out, "--epochs", 1, *TINY, "--image-size", 16,
                         "--num-preds", 1, "--progress-every", 0, "--overwrite")  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "--overwrite: removed the earlier" in r2.stdout and not (out / "earlier").exists()
    _check_saved_at_data_size(out, tmp_path)


def _check_saved_at_data_size(out, tmp_path):
    cfg = json.load(open(out / "config.json"))
    assert cfg["image_size"] == 16 and cfg["saved_model_size"] == 32
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "assert 'segmentation_model' not in sys.modules\n"
        "print(m.input_shape, m.output_shape)\n"
        "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]), verbose=0))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [
        sys.executable,
        "-c",
        script,
        str(out / "unet_model.keras"),
        str(tmp_path / "y.npy"),
        str(tmp_path / "x.npy"),
    ]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "(None, 32, 32, 3) (None, 32, 32, 19)" in r.stdout, r.stderr[-2000:]
    # The network once, on the photo area-resized to 16x16, scores resized back bilinearly.
    import tensorflow as tf

    saved = keras.models.load_model(out / "unet_model.keras", compile=False)
    network = next(layer for layer in saved.layers if isinstance(layer, keras.Model))
    small = np.stack([area_resize(p, 16, 16) for p in x])
    want = tf.image.resize(network.predict(small, verbose=0), (32, 32), method="bilinear").numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-4)
    # Scoring it needs no resize: both figures are at the labels' 32x32.
    r = main_in_process("evaluate", "--model", out / "unet_model.keras")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.load(open(out / "eval" / "report.json"))
    assert report["image_size"] == 32 and report["label_resolution"]["mean_iou"] == pytest.approx(
        report["mean_iou"], abs=1e-6
    )


@pytest.mark.slow
def test_main_trains_the_first_and_last_epochs_at_their_sizes(tmp_path):
    write_pairs(tmp_path / "data" / "train", 12, size=64)
    out = tmp_path / "out"
    r = main_in_process("--data-dir", tmp_path / "data", "--output-dir", out, "--epochs", 3, *TINY, "--num-preds", 1,
                 "--set", "first_size=16", "--set", "first_epochs=1", "--set", "final_size=48", "--set", "final_epochs=1")  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for epoch, size in ((1, 16), (2, 32), (3, 48)):
        assert f"Epoch {epoch} of 3: training and validating at {size}x{size}" in r.stdout
    assert [row["epoch"] for row in csv.DictReader(open(out / "history.csv"))] == ["0", "1", "2"]
    # The saved model takes the 64x64 photos and runs the network at the
    # size of the stage that trained it: 16 after epoch 1, 32 after 2, 48 after 3.
    epoch = json.loads((out / "unet_model.json").read_text())["epoch"]
    saved = keras.models.load_model(out / "unet_model.keras", compile=False)
    assert tuple(saved.get_layer("photo_area_h").kernel.shape) == (64, {1: 16, 2: 32, 3: 48}[epoch])
    probs = saved.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (1, 64, 64, 19) and np.allclose(probs.sum(-1), 1, atol=1e-3)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--epochs", "0"], "--epochs 0"),
        (["--image-size", "100"], "--image-size 100"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--val-split", "1.5"], "--val-split 1.5"),
        (["--set", "final_size=40"], "--set final_size=40"),
        (["--data-dir", "/nonexistent/folder"], "--data-dir /nonexistent/folder"),
        (["--encoder", "resnet50", "--image-size", "48"], "--image-size 48"),
    ],
)
def test_main_bad_flags_one_line(args, flag, tmp_path):
    r = main_in_process(*args, "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and f"error: {flag}" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_main_empty_or_unusable_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "1.jpg").write_bytes(b"junk")
    for folder in (tmp_path / "empty", bad):
        r = main_in_process("--data-dir", folder, "--output-dir", tmp_path / "o")
        assert r.returncode == 2 and f"error: --data-dir {folder}" in r.stderr and "Traceback" not in r.stderr


def test_plot_from_history_without_retraining(tmp_path):
    hist = tmp_path / "history.csv"
    hist.write_text(
        "epoch,loss,accuracy,mean_iou,val_loss,val_accuracy,val_mean_iou,learning_rate\n"
        "0,1.5,0.6,0.2,1.4,0.62,0.21,0.002\n1,1.1,0.7,0.3,1.2,0.68,0.27,0.001\n"
    )
    r = main_in_process("plot", "--history", hist, "--output-dir", tmp_path / "curves")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("acc.png", "loss.png", "miou.png"):
        assert (tmp_path / "curves" / name).stat().st_size > 5000
    r = main_in_process("plot", "--history", tmp_path / "missing.csv")
    assert r.returncode == 2 and "--history" in r.stderr and "Traceback" not in r.stderr


def test_encoder_network_offline_falls_back_to_random_weights(capsys):
    network = build_network(TrainConfig(encoder="efficientnetb0"))
    assert network.name == "unet_efficientnetb0" and network.input_shape == (None, None, None, 3)
    printed = capsys.readouterr().out
    if "could not fetch the ImageNet weights" in printed:  # offline, as here
        (line,) = [ln for ln in printed.splitlines() if "could not fetch" in ln]
        assert line.startswith("--encoder efficientnetb0:")


def test_plain_and_residual_networks():
    names = {layer.name for layer in build_network(TrainConfig(base_filters=4, block="plain")).layers}
    assert "enc1_add" not in names and "enc1_conv1" in names
    assert "enc1_add" in {
        layer.name for layer in build_network(TrainConfig(base_filters=4, block="residual")).layers
    }
