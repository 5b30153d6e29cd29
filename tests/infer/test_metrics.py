"""Loss and metrics honour the ignore value: hand-computed cases."""

import keras
import numpy as np

import utils_func as uf


def _compiled(size, weights=None):
    """The tiny UNet compiled as a run compiles it (loss, weighted metrics)."""
    from cityscapes_unet.settings import TrainConfig
    from cityscapes_unet.train.run import build_network, compile_for_size

    cfg = TrainConfig(base_filters=4, block="plain")
    return compile_for_size(build_network(cfg), keras.optimizers.Adam(), cfg, weights, size, size)


def _inputs(true_ids, pred_ids, num_classes):
    true_ids = np.asarray(true_ids)
    y_true = uf.one_hot(true_ids, num_classes)[None]
    y_pred = uf.one_hot(np.asarray(pred_ids), num_classes)[None]
    w = (true_ids < num_classes).astype("float32")[None]
    return y_true, y_pred, w


def test_mean_iou_hand_computed_with_void():
    # 3 classes; 255 = void. Pixels (true -> pred):
    true = [[0, 0, 0, 1], [1, 2, 255, 255]]
    pred = [[0, 0, 1, 1], [2, 2, 0, 2]]
    # Void pixels excluded. Class 0: TP 2, FP 0, FN 1 -> 2/3.
    # Class 1: TP 1, FP 1 (a true 0), FN 1 (predicted 2) -> 1/3.
    # Class 2: TP 1, FP 1, FN 0 -> 1/2.  Mean = (2/3 + 1/3 + 1/2) / 3 = 0.5.
    y_true, y_pred, w = _inputs(true, pred, 3)
    m = keras.metrics.OneHotMeanIoU(num_classes=3)
    m.update_state(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(float(m.result()), 0.5, atol=1e-6)
    # Without weights the void pixels (one-hot all zero -> argmax 0) would
    # count as class 0 and change the figure: the weights matter.
    m2 = keras.metrics.OneHotMeanIoU(num_classes=3)
    m2.update_state(y_true, y_pred)
    assert abs(float(m2.result()) - 0.5) > 0.01


def test_mean_iou_accumulates_over_batches():
    true = [[0, 0, 0, 1], [1, 2, 255, 255]]
    pred = [[0, 0, 1, 1], [2, 2, 0, 2]]
    m = keras.metrics.OneHotMeanIoU(num_classes=3)
    for row in range(2):  # one row per batch
        y_true, y_pred, w = _inputs(true[row : row + 1], pred[row : row + 1], 3)
        m.update_state(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(float(m.result()), 0.5, atol=1e-6)


def test_pixel_accuracy_excludes_void():
    true = [[0, 0, 0, 1], [1, 2, 255, 255]]
    pred = [[0, 0, 1, 1], [2, 2, 0, 2]]
    y_true, y_pred, w = _inputs(true, pred, 3)
    m = keras.metrics.CategoricalAccuracy()
    m.update_state(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(float(m.result()), 4 / 6, atol=1e-6)


def test_loss_ignores_void_pixels():
    loss = keras.losses.CategoricalCrossentropy(reduction="mean_with_sample_weight")
    y_true = uf.one_hot(np.array([[0, 1, 255]]), 3)[None]
    probs = np.array([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.01, 0.01, 0.98]]], "float32")[None]
    w = np.array([[[1, 1, 0]]], "float32")
    # Mean over the two labelled pixels: -log(0.5); the void pixel, whatever
    # its prediction, adds nothing.
    np.testing.assert_allclose(float(loss(y_true, probs, sample_weight=w)), -np.log(0.5), rtol=1e-5)


def test_weighted_loss_is_class_weighted_ce_and_ignores_void():
    from cityscapes_unet.train.losses import make_loss

    weights = np.array([2.0, 0.5, 1.0], "float32")
    loss = make_loss("ce", weights)
    y_true = uf.one_hot(np.array([[0, 1, 255]]), 3)[None]
    probs = np.array([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.01, 0.01, 0.98]]], "float32")[None]
    w = np.array([[[1, 1, 0]]], "float32")
    expected = (2.0 * -np.log(0.5) + 0.5 * -np.log(0.5)) / 2
    np.testing.assert_allclose(float(loss(y_true, probs, sample_weight=w)), expected, rtol=1e-5)


def test_compiled_model_metrics_exclude_void():
    """The figures Keras reports during fit/evaluate match a hand count."""
    keras.utils.set_random_seed(0)
    model = _compiled(16)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 16, 16, 3)).astype("float32")
    ids = rng.integers(0, 19, (4, 16, 16))
    ids[:, :6] = 255  # over a third of the pixels are void
    y, w = uf.one_hot(ids), (ids < 19).astype("float32")
    got = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0).argmax(-1)
    valid = ids < 19
    assert abs(got["accuracy"] - (pred[valid] == ids[valid]).mean()) < 1e-4
    cm = np.bincount(ids[valid] * 19 + pred[valid], minlength=361).reshape(19, 19)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    assert abs(got["mean_iou"] - (tp[union > 0] / union[union > 0]).mean()) < 1e-4


def test_uint8_batches_score_like_float32():
    # The pipeline hands uint8 photos, one-hot masks and weights; Keras casts
    # them in the step. Loss and metrics must equal those of float32 inputs.
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _compiled(32, np.linspace(0.5, 2, 19))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    ids = rng.integers(0, 19, (4, 32, 32))
    ids[:, :5] = 255
    y = tf.one_hot(ids, 19, dtype=tf.uint8).numpy()
    w = (ids < 19).astype(np.uint8)
    as_float = model.evaluate(
        x.astype("float32"), y.astype("float32"), sample_weight=w.astype("float32"), verbose=0
    )
    as_uint8 = model.evaluate(x, y, sample_weight=w, verbose=0)
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-6)
