"""Every Keras backend: a one-epoch run under JAX and PyTorch, and both mixed precisions.

Each backend runs in its own process (Keras picks its backend at import).
The JAX run also stands in for a GPU machine without TensorFlow: TensorFlow
is blocked from importing, so the NumPy pipeline feeds it, and it trains
data-parallel over two CPU devices. `predict`, `evaluate` and `export` run
there too, on a model saved without training.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import BLOCK_TF, ROOT, write_pairs

#: Runs main.py in-process, then one training step of a tiny UNet under
#: each mixed-precision policy.
DRIVER = """
import sys
sys.path.insert(0, ROOT)
import keras, numpy as np
import main
code = main.main(ARGS)
assert code == 0, code
assert "tensorflow" not in sys.modules or not NO_TF
from segmentation_model import build_unet
x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("uint8")
y = np.eye(19, dtype="float32")[np.random.default_rng(1).integers(0, 19, (2, 32, 32))]
for policy in POLICIES:
    keras.mixed_precision.set_global_policy(policy)
    model = build_unet(32, 19, (4, 8))
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    loss = float(model.train_on_batch(x, y))
    out = model.predict(x, verbose=0)
    assert np.isfinite(loss) and out.dtype == np.float32, (policy, loss, out.dtype)
    assert model.get_layer("enc1_conv1").compute_dtype == policy.split("_")[1]
    print("POLICY", policy, loss)
"""


#: Builds and saves a tiny model (no training), then runs the commands of
#: COMMANDS through main.py in-process, checking after each that TensorFlow
#: was never imported.
COMMANDS_DRIVER = """
import sys
sys.path.insert(0, ROOT)
import keras, numpy as np
import main
from segmentation_model import build_unet, sized_model
from cityscapes_unet.infer.saved_model import saved_model
keras.utils.set_random_seed(0)
network = build_unet(None, 19, (4, 8))
rng = np.random.default_rng(0)
for w in network.weights:  # the head starts at zero: every pixel would tie
    low, high = (0.5, 1.5) if "moving_variance" in w.path else (-0.5, 0.5)
    w.assign(rng.uniform(low, high, w.shape).astype("float32"))
# As a run below the data's size saves it: area resize in, scores out.
saved_model(sized_model(network, 32, 16)).save(MODEL)
for expected, args in COMMANDS:
    code = main.main(args)
    print("COMMAND", args[0], code, flush=True)
    assert code == expected, (args, code)
    assert "tensorflow" not in sys.modules, args
print("NO TENSORFLOW")
"""


def _run_commands(backend, model, commands, tmp_path):
    script = BLOCK_TF + textwrap.dedent(COMMANDS_DRIVER)
    script = script.replace("ROOT", repr(ROOT)).replace("MODEL", repr(str(model)))
    script = script.replace("COMMANDS", repr([(code, [str(a) for a in c]) for code, c in commands]))
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_predict_evaluate_under_jax_without_tensorflow(tmp_path):
    write_pairs(tmp_path / "pairs", 5)
    model = tmp_path / "run" / "unet_model.keras"
    model.parent.mkdir()
    preds, report = tmp_path / "preds", tmp_path / "eval"
    commands = [
        (0, ["predict", "--pairs", "--model", model, "--out", preds, "--tta", "flip", tmp_path / "pairs"]),
        (0, ["evaluate", "--model", model, "--data-dir", tmp_path / "pairs", "--output-dir", report]),
        # Keras exports a JAX model through jax2tf, which is TensorFlow: one line, nothing left behind.
        (2, ["export", "--model", model, "--format", "tf_saved_model"]),
    ]
    r = _run_commands("jax", model, commands, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "NO TENSORFLOW" in r.stdout
    assert "error: --format tf_saved_model: " in r.stderr and sorted(
        p.name for p in model.parent.iterdir()
    ) == ["unet_model.keras"]
    assert "Predicted 5 pairs" in r.stdout and "mean IoU" in r.stdout
    for name in ("1_ids.png", "1_mask.png", "1_overlay.png", "1_panel.png"):
        assert (preds / name).stat().st_size > 0, name
    with open(report / "report.json") as f:
        scored = json.load(f)
    assert scored["files"] == 5 and scored["pixels"] > 0 and scored["image_size"] == 32
    assert scored["label_resolution"]["pixels"] == scored["pixels"]  # the labels are 32x32 too
    assert (report / "confusion_matrix.png").stat().st_size > 0


def _run(backend, args, tmp_path, no_tf=False, env=None, policies=("mixed_float16", "mixed_bfloat16")):
    script = (BLOCK_TF if no_tf else "") + textwrap.dedent(DRIVER)
    script = script.replace("ROOT", repr(ROOT)).replace("ARGS", repr([str(a) for a in args]))
    script = script.replace("POLICIES", repr(tuple(policies)))
    script = script.replace("NO_TF", repr(no_tf))
    env = dict(os.environ, KERAS_BACKEND=backend, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def _check_run(out, backend, pipeline):
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["keras_backend"] == backend and config["pipeline_used"] == pipeline
    with open(out / "history.csv") as f:
        rows = f.read().splitlines()
    assert len(rows) == 2 and all(np.isfinite(float(v)) for v in rows[1].split(","))
    for name in ("unet_model.keras", "acc.png", "pred_1.png", "progress.gif"):
        assert (out / name).is_file(), name
    # Saved under another backend, the model loads and predicts here (TensorFlow).
    pytest.importorskip("tensorflow")
    import keras

    model = keras.models.load_model(out / "unet_model.keras")
    probs = model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    assert probs.shape == (1, 32, 32, 19)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_without_tensorflow_data_parallel(tmp_path):
    write_pairs(tmp_path / "data" / "train", 12)
    out = tmp_path / "out"
    args = ["--data-dir", tmp_path / "data", "--output-dir", out, "--epochs", 1]
    args += ["--image-size", 32, "--base-filters", 4, "--batch-size", 4, "--num-preds", 1]
    args += ["--distribute", "mirrored"]
    # (JAX's mixed-precision step is timed by test_gpu_session's bench run.)
    r = _run("jax", args, tmp_path, no_tf=True, env={"CITYSCAPES_CPU_REPLICAS": "2"}, policies=())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "keras.distribution.DataParallel over 2 CPU device(s)" in r.stdout
    assert "NumPy pipeline" in r.stdout
    _check_run(out, "jax", "numpy")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_one_epoch_fed_by_tf_data(tmp_path):
    pytest.importorskip("tensorflow")
    write_pairs(tmp_path / "data" / "train", 12)
    out = tmp_path / "out"
    args = ["--data-dir", tmp_path / "data", "--output-dir", out, "--epochs", 1]
    args += ["--image-size", 32, "--base-filters", 4, "--batch-size", 4, "--num-preds", 1]
    r = _run("torch", args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backend torch" in r.stdout and "tf.data pipeline" in r.stdout
    assert r.stdout.count("POLICY") == 2
    _check_run(out, "torch", "tf")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_tensorflow_mixed_precision_trains(policy):
    """The same step as the other backends' drivers, here under TensorFlow (in-process)."""
    pytest.importorskip("tensorflow")
    import keras

    from segmentation_model import build_unet

    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("uint8")
    y = np.eye(19, dtype="float32")[np.random.default_rng(1).integers(0, 19, (2, 32, 32))]
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_unet(32, 19, (4, 8))
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
        if policy == "mixed_float16":
            # compile() wraps the optimizer in dynamic loss scaling.
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        out = model.predict(x, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(losses)) and out.dtype == np.float32
    assert model.get_layer("enc1_conv1").compute_dtype == policy.split("_")[1]
