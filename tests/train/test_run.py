"""Training: a short fit, the best-model checkpoint, save/load, the command line."""

import csv
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cityscapes_unet.data.tf_pipeline import make_dataset  # noqa: E402
from cityscapes_unet.errors import UsageError  # noqa: E402
from cityscapes_unet.train.callbacks import BestModelCheckpoint  # noqa: E402
from cityscapes_unet.train.config import TrainConfig  # noqa: E402
from cityscapes_unet.train.run import build_and_compile  # noqa: E402
from conftest import TINY, TINY_DEFAULT_XLA, run_main, write_pairs  # noqa: E402


def _tiny_model(steps=1, epochs=1, class_weights=None, loss="ce_lovasz"):
    cfg = TrainConfig(
        image_size=32,
        base_filters=8,
        batch_size=4,
        epochs=epochs,
        learning_rate=1e-2,
        schedule="constant",
        loss=loss,
    )
    return build_and_compile(cfg, steps_per_epoch=steps, class_weights=class_weights)


def test_short_fit_loss_finite_and_falls(tmp_path):
    keras.utils.set_random_seed(0)
    paths = write_pairs(tmp_path, 8, size=32)
    ds = make_dataset(paths, 32, 8, training=True, seed=0, augment=False)
    model = _tiny_model(steps=1, epochs=30)
    hist = model.fit(ds, epochs=30, verbose=0, shuffle=False).history["loss"]
    assert all(np.isfinite(hist))
    assert np.mean(hist[-3:]) < 0.7 * np.mean(hist[:3])


def test_checkpoint_replaces_only_on_improvement(tmp_path):
    path = str(tmp_path / "best.keras")
    model = _tiny_model()
    cb = BestModelCheckpoint(path)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_mean_iou": 0.30})
    first = os.stat(path).st_mtime_ns
    saved_kernel = keras.models.load_model(path).get_layer("head_conv").get_weights()[0]
    # Change the weights: a worse or equal or NaN epoch must not be saved.
    model.get_layer("head_conv").set_weights([w + 1 for w in model.get_layer("head_conv").get_weights()])
    for value in (0.20, 0.30, float("nan")):
        cb.on_epoch_end(1, {"val_mean_iou": value})
    assert os.stat(path).st_mtime_ns == first
    np.testing.assert_array_equal(
        keras.models.load_model(path).get_layer("head_conv").get_weights()[0], saved_kernel
    )
    cb.on_epoch_end(2, {"val_mean_iou": 0.35})
    assert cb.best == 0.35 and cb.best_epoch == 2
    assert not np.array_equal(
        keras.models.load_model(path).get_layer("head_conv").get_weights()[0], saved_kernel
    )
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras"]  # no temporary files left


@pytest.mark.parametrize("loss", ["ce_lovasz", "ce"])
def test_save_load_in_fresh_process_without_project(tmp_path, loss):
    from cityscapes_unet.infer.saved_model import at_source_size

    keras.utils.set_random_seed(1)
    model = _tiny_model(class_weights=np.linspace(0.5, 3, 19), loss=loss)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    model.fit(x, np.eye(19, dtype="float32")[np.zeros((2, 32, 32), int)], epochs=1, verbose=0)
    # What the run's checkpoint writes (an uncompiled view: no custom loss in
    # the file), and, for the built-in loss, the compiled training model.
    at_source_size(model, 32).save(tmp_path / "m.keras")
    flip = at_source_size(model, 48, flip=True)  # what `--set tta=flip` saves: resize and mirror inside
    flip.save(tmp_path / "flip.keras")
    model.save(tmp_path / "compiled.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    x48 = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3)).astype("float32")
    np.save(tmp_path / "x48.npy", x48)
    np.save(tmp_path / "y48.npy", flip.predict(x48, verbose=0))
    script = (
        "import sys, numpy as np, keras\n"
        "assert not any(p.endswith('main') for p in sys.path if p)\n"
        "m = keras.models.load_model('m.keras')\n"  # plain load_model, compile=True
        "y = m.predict(np.load('x.npy'), verbose=0)\n"
        "np.testing.assert_allclose(y, np.load('y.npy'), atol=1e-5)\n"
        "f = keras.models.load_model('flip.keras', compile=False)\n"
        "np.testing.assert_allclose(f.predict(np.load('x48.npy'), verbose=0), np.load('y48.npy'), atol=1e-5)\n"
        "if sys.argv[1] == 'ce':\n"
        "    c = keras.models.load_model('compiled.keras')\n"  # compile=True: loss and metrics too
        "    np.testing.assert_allclose(c.predict(np.load('x.npy'), verbose=0), np.load('y.npy'), atol=1e-5)\n"
        "    print('loss', c.loss.__class__.__name__, c.loss.alpha[-1])\n"
        "for mod in ('segmentation_model', 'cityscapes_unet', 'utils_func'):\n"
        "    assert mod not in sys.modules\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", script, loss], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK" in r.stdout
    if loss == "ce":
        assert "loss CategoricalFocalCrossentropy 3.0" in r.stdout


def test_main_end_to_end_tiny(tiny_data, tmp_path):
    out = tmp_path / "out"
    r = run_main(
        "--data-dir",
        tiny_data,
        "--output-dir",
        out,
        "--epochs",
        2,
        *TINY_DEFAULT_XLA,
        "--num-preds",
        2,
        "--tensorboard",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "loss = ce_lovasz, class_weights = auto" in r.stdout
    if keras.backend.backend() == "tensorflow":
        # auto: float32 on CPUs without bf16 units, compiled with XLA there;
        # mixed_bfloat16 on CPUs with them, left to Keras (oneDNN's kernels).
        from cityscapes_unet.train.config import cpu_has_bf16_matmul

        xla = "Keras' choice" if cpu_has_bf16_matmul() else "on"
        assert f"XLA: {xla} (--xla auto)" in r.stdout
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
    assert cfg["image_size"] == 32 and cfg["train_files"] + cfg["val_files"] == 12
    assert len(json.load(open(out / "classes.json"))) == 19
    assert "Best validation mean IoU" in r.stdout and "  pred_1..2.png " in r.stdout
    model = keras.models.load_model(out / "unet_model.keras", compile=False)
    assert model.output_shape == (None, 32, 32, 19)

    # Progress pictures: before training and after each epoch, then a GIF
    # whose frames are those pictures.
    from PIL import Image

    frames = sorted(os.listdir(out / "progress"))
    assert frames == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]
    sizes = {Image.open(out / "progress" / f).size for f in frames}
    assert len(sizes) == 1
    gif = Image.open(out / "progress.gif")
    assert gif.n_frames == 3 and gif.size == sizes.pop()
    # TensorBoard: scalars for train and validation, and the pictures.
    for sub in ("train", "validation", "progress"):
        events = [n for n in os.listdir(out / "logs" / sub) if n.startswith("events.out.tfevents")]
        assert events and os.path.getsize(out / "logs" / sub / events[0]) > 0, sub

    # A second run keeps the first run's model instead of overwriting it.
    # It trains at 16x16 on the 32x32 pairs: its saved model takes the 32x32
    # photos as they are (area resize inside) and returns 32x32 scores.
    r2 = run_main(
        "--data-dir", tiny_data, "--output-dir", out, "--epochs", 1, *TINY,
        "--image-size", 16, "--num-preds", 1, "--progress-every", 0,
    )  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    (kept,) = os.listdir(out / "earlier")
    assert os.path.isfile(out / "earlier" / kept / "unet_model.keras") and "moved whole to" in r2.stdout
    assert "  pred_1.png " in r2.stdout and "pred_1..1" not in r2.stdout
    _check_saved_at_data_size(r2, out, tmp_path)


def _check_saved_at_data_size(r, out, tmp_path):
    assert (
        "Saved model: takes 32x32 photos (area-resized inside to the network's sizes) and returns scores at 32x32"
        in r.stdout
    )
    cfg = json.load(open(out / "config.json"))
    assert cfg["image_size"] == 16 and cfg["saved_model_size"] == 32
    assert (out / "pred_1.png").stat().st_size > 0

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
    r = subprocess.run(
        [sys.executable, "-c", script, str(out / "unet_model.keras"), str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(None, 32, 32, 3) (None, 32, 32, 19)" in r.stdout
    y = np.load(tmp_path / "y.npy")

    # The same as the trained core (any input size, `tta=scales`, the
    # default) on the pipeline's area resize to 16x16 and to 32x32 (16 * 7/6
    # rounded up to a multiple of 16), each averaged with its scores of the
    # mirrored photo mirrored back and resized bilinearly, then averaged.
    import tensorflow as tf

    saved = keras.models.load_model(out / "unet_model.keras", compile=False)
    core = next(layer for layer in saved.layers if isinstance(layer, keras.Model))
    assert core.input_shape == (None, None, None, 3)
    want = 0
    for size in (16, 32):
        small = tf.image.resize(x, (size, size), method="area").numpy()
        both = (core.predict(small, verbose=0) + core.predict(small[:, :, ::-1], verbose=0)[:, :, ::-1]) / 2
        want = want + tf.image.resize(both, (32, 32), method="bilinear").numpy() / 2
    np.testing.assert_allclose(y, want, atol=1e-4)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-4)

    # Scoring it needs no resize: both figures are at the labels' 32x32.
    r = run_main("evaluate", "--model", out / "unet_model.keras")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.load(open(out / "eval" / "report.json"))
    assert report["image_size"] == 32
    assert report["label_resolution"]["mean_iou"] == pytest.approx(report["mean_iou"], abs=1e-6)


def test_main_trains_the_first_and_last_epochs_at_their_sizes(tmp_path):
    write_pairs(tmp_path / "data" / "train", 12, size=64)  # 64x64 photos
    out = tmp_path / "out"
    r = run_main(
        "--data-dir", tmp_path / "data", "--output-dir", out, "--epochs", 3, *TINY, "--num-preds", 1,
        "--set", "first_size=16", "--set", "first_epochs=1", "--set", "final_size=48",
        "--set", "final_epochs=1", "--set", "tta=none",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "epoch 1 at 16x16 (first_size = 16, first_epochs = 1)" in r.stdout
    assert "epoch 3 at 48x48 (final_size = 48, final_epochs = 1)" in r.stdout
    assert "Epoch 1 of 3: training and validating at 16x16" in r.stdout
    assert "Epoch 2 of 3: training and validating at 32x32" in r.stdout
    assert "Epoch 3 of 3: training and validating at 48x48" in r.stdout
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    # The saved model takes 64x64 photos and runs the network at the size
    # of the part that trained it: 16 after epoch 1, 32 after 2, 48 after 3.
    epoch = json.loads((out / "unet_model.json").read_text())["epoch"]
    saved = keras.models.load_model(out / "unet_model.keras", compile=False)
    area_h = saved.get_layer("photo_area_h")
    assert tuple(area_h.kernel.shape) == (64, {1: 16, 2: 32, 3: 48}[epoch])
    for size in (16, 32, 48):
        assert f"Saved model: runs the network at {size}x{size}\n" in r.stdout
    probs = saved.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (1, 64, 64, 19) and np.allclose(probs.sum(-1), 1, atol=1e-3)


def test_main_skips_bad_files_and_goes_on(tiny_data, tmp_path):
    (tiny_data / "train" / "broken.jpg").write_bytes(b"not an image")
    (tiny_data / "train" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    r = run_main(
        "--data-dir",
        tiny_data,
        "--output-dir",
        out,
        "--epochs",
        1,
        *TINY,
        "--num-preds",
        0,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Skipped 2 unusable files" in r.stdout
    assert len((out / "skipped.txt").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--epochs", "0"], "--epochs 0"),
        (["--image-size", "-32"], "--image-size -32"),
        (["--image-size", "100"], "--image-size 100"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--set", "val_split=1.5"], "--set val_split=1.5: must be between 0 and 1"),
        (
            ["--set", "lovasz_weight=2", "--loss", "ce"],
            "--set lovasz_weight=2.0: must be at least 0, and other",
        ),
        (["--data-dir", "/nonexistent/folder"], "--data-dir /nonexistent/folder: folder not found"),
    ],
)
def test_main_bad_flags_one_line(args, needle, tmp_path):
    r = run_main(*args, "--output-dir", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_main_empty_or_unusable_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_main("--data-dir", tmp_path / "empty", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "no .jpg files" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "1.jpg").write_bytes(b"junk")
    r = run_main("--data-dir", bad, "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "no usable pair among 1 JPEG files" in r.stderr


def test_plot_from_history_without_retraining(tmp_path):
    hist = tmp_path / "history.csv"
    hist.write_text(
        "epoch,loss,accuracy,mean_iou,val_loss,val_accuracy,val_mean_iou,learning_rate\n"
        "0,1.5,0.6,0.2,1.4,0.62,0.21,0.002\n"
        "1,1.1,0.7,0.3,1.2,0.68,0.27,0.001\n"
    )
    r = run_main("plot", "--history", hist, "--output-dir", tmp_path / "curves")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("acc.png", "loss.png", "miou.png"):
        assert (tmp_path / "curves" / name).stat().st_size > 5000
    r = run_main("plot", "--history", tmp_path / "missing.csv")
    assert r.returncode == 2 and "--history" in r.stderr and "Traceback" not in r.stderr


def test_xla_choice():
    from cityscapes_unet.train.config import resolve_xla

    assert resolve_xla("on", on_gpu=True) is True
    assert resolve_xla("off", on_gpu=False, policy="mixed_bfloat16") is False
    assert resolve_xla("auto", on_gpu=True) == "auto"
    if keras.backend.backend() == "tensorflow":
        # CPU: Keras' own "auto" would leave XLA off; float32, and bf16
        # without bf16 units, run faster with it.
        assert resolve_xla("auto", on_gpu=False) is True
        assert resolve_xla("auto", on_gpu=False, policy="mixed_bfloat16", bf16_units=False) is True
        # With bf16 units, TensorFlow's oneDNN kernels stay.
        assert resolve_xla("auto", on_gpu=False, policy="mixed_bfloat16", bf16_units=True) == "auto"
        # A strategy over logical CPU devices: XLA cannot run it.
        assert resolve_xla("auto", on_gpu=False, cpu_replicas=2) is False
        assert resolve_xla("off", on_gpu=False, cpu_replicas=2) is False
        with pytest.raises(UsageError, match="--xla on: XLA cannot compile a step over 2 CPU replicas"):
            resolve_xla("on", on_gpu=False, cpu_replicas=2)


def test_warmup_cosine_schedule():
    cfg = TrainConfig(image_size=32, base_filters=4, epochs=4, learning_rate=1e-2, warmup_epochs=1)
    model = build_and_compile(cfg, steps_per_epoch=10)
    sched = model.optimizer._learning_rate
    assert float(sched(0)) == pytest.approx(2e-4)  # 2% of the peak
    assert float(sched(5)) == pytest.approx((2e-4 + 1e-2) / 2, rel=1e-3)  # linear rise
    assert float(sched(10)) == pytest.approx(1e-2)  # the peak after one epoch
    assert float(sched(40)) == pytest.approx(2e-4, rel=1e-3)  # cosine down to 2%


def test_plateau_and_early_stop_watch_validation_mean_iou():
    from cityscapes_unet.train.run import schedule_callbacks

    cfg = TrainConfig(image_size=32, base_filters=4, learning_rate=1e-2, schedule="plateau", early_stop=2)
    model = build_and_compile(cfg, steps_per_epoch=1)
    plateau, early = schedule_callbacks(cfg)
    for cb in (plateau, early):
        cb.set_model(model)
        cb.on_train_begin()
    # Rises, then two epochs without a rise: the rate halves and training stops.
    for epoch, miou in enumerate([0.2, 0.3, 0.29, 0.3]):
        logs = {"val_mean_iou": miou, "loss": 1.0}
        plateau.on_epoch_end(epoch, logs)
        early.on_epoch_end(epoch, logs)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(5e-3)
    assert model.stop_training and early.stopped_epoch == 3
    assert schedule_callbacks(TrainConfig()) == (None, None)


def test_focal_loss_hand_worked_and_ignores_void():
    from cityscapes_unet.train.losses import make_loss

    loss = make_loss(np.array([2.0] + [1.0] * 18, np.float32), "focal")
    assert isinstance(loss, keras.losses.CategoricalFocalCrossentropy)
    y = np.zeros((1, 1, 2, 19), np.float32)
    y[0, 0, 0, 0] = 1  # a road pixel
    p = np.full((1, 1, 2, 19), 0.1 / 18, np.float32)
    p[..., 0] = 0.9
    w = np.array([[[1.0, 0.0]]], np.float32)  # the second pixel is void
    # alpha * (1 - p)^2 * -log(p) for the road pixel, averaged over 1 labelled pixel.
    want = 2.0 * 0.1**2 * -np.log(0.9)
    assert float(loss(y, p, sample_weight=w)) == pytest.approx(want, rel=1e-4)


def test_encoder_model_offline_falls_back_to_random_weights(tmp_path, capsys):
    from cityscapes_unet.train.run import build_model

    cfg = TrainConfig(image_size=32, batch_size=2, encoder="efficientnetb0")
    model = build_model(cfg)
    printed = capsys.readouterr().out
    assert model.name == "unet_efficientnetb0" and model.output_shape == (None, 32, 32, 19)
    # Offline (as here), one line says the weights could not be fetched.
    if "could not fetch the ImageNet weights" in printed:
        (line,) = [ln for ln in printed.splitlines() if "could not fetch" in ln]
        assert line.startswith("--encoder efficientnetb0:") and "weights=None" in line
    r = run_main("--output-dir", tmp_path / "x", "--encoder", "resnet50", "--image-size", 48)
    assert r.returncode == 2 and "--image-size 48: must be a positive multiple of 32" in r.stderr


@pytest.mark.parametrize(
    "precision, bf16_units, expected",
    [
        ("auto", True, ("mixed_bfloat16", "cpu_bf16")),
        ("auto", False, ("float32", "cpu")),
        # float32 asked for on a CPU with bf16 units: the float32 default's speed.
        ("float32", True, ("float32", "cpu")),
        # bf16 without the units is no faster: the float32 default's size.
        ("mixed_bfloat16", False, ("mixed_bfloat16", "cpu")),
    ],
)
def test_cpu_defaults_follow_the_precision(monkeypatch, precision, bf16_units, expected):
    from cityscapes_unet.train import config

    monkeypatch.setattr(config, "cpu_has_bf16_matmul", lambda: bf16_units)
    cfg, policy, reasons = config.resolve_config(config.TrainConfig(precision=precision), on_gpu=False)
    kind = expected[1]
    defaults, why = config.MACHINE_DEFAULTS[kind]
    assert policy == expected[0]
    assert (cfg.image_size, cfg.base_filters, cfg.batch_size) == tuple(
        defaults[k] for k in ("image_size", "base_filters", "batch_size")
    )
    # One line says which machine's defaults and why; each default says where it came from.
    assert reasons[0] == f"machine = {kind} ({why})"
    assert f"base_filters = {defaults['base_filters']} ({kind} default)" in reasons
    # The short CPU runs underfit: no flip unless asked for.
    assert cfg.augment == "none" and f"augment = none ({kind} default)" in reasons
    # What is given on the command line stays.
    cfg, _, reasons = config.resolve_config(
        config.TrainConfig(precision=precision, base_filters=8, augment="flip"), on_gpu=False
    )
    assert cfg.base_filters == 8 and cfg.augment == "flip"
    assert "base_filters = 8 (from the command line)" in reasons
    # Residual blocks on the bf16 CPU default; a given block stays.
    assert cfg.block == defaults["block"] == ("residual" if kind == "cpu_bf16" else "plain")
    assert config.resolve_config(config.TrainConfig(block="plain"), on_gpu=False)[0].block == "plain"
    # A GPU's longer runs keep the flip, and the classic (plain) UNet.
    gpu = config.resolve_config(config.TrainConfig(precision="mixed_float16"), on_gpu=True)[0]
    assert gpu.augment == "flip" and gpu.block == "plain"


def test_machine_defaults_table():
    from cityscapes_unet.train.config import MACHINE_DEFAULTS

    assert set(MACHINE_DEFAULTS) == {"cpu", "cpu_bf16", "gpu"}
    for values, why in MACHINE_DEFAULTS.values():
        assert set(values) == {
            "image_size",
            "first_size",
            "final_size",
            "base_filters",
            "batch_size",
            "augment",
            "block",
        }
        # A reason in a few words, with no measured figures in it.
        assert isinstance(why, str) and "\n" not in why and len(why) < 100
        assert not re.search(r"\b\d", why), why  # "bf16" is a name, not a figure


def test_resume_of_a_run_from_before_block_builds_plain_blocks(tmp_path):
    import json

    from cityscapes_unet.train import config, run

    # config.json of a run written before the block setting existed: no "block" key.
    saved = {
        "data_dir": "images",
        "output_dir": str(tmp_path),
        "epochs": 3,
        "image_size": 32,
        "base_filters": 4,
    }
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg, _ = config.resume_config(config.TrainConfig(output_dir=str(tmp_path)), set())
    assert cfg.block == "plain"
    cfg, _, _ = config.resolve_config(cfg, on_gpu=False)
    assert cfg.block == "plain"
    assert "enc1_add" not in {layer.name for layer in run.build_model(cfg).layers}
