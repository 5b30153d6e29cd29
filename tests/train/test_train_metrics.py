"""The training metrics: the bincount mean IoU counts what Keras' own does."""

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet.train.metrics import BincountMeanIoU, training_metrics


def _one_hot_batch(true_ids, pred_ids, num_classes):
    """One-hot targets and scores `(1, H, W, C)`, weights `(1, H, W)` 0 on void."""
    true_ids = np.asarray(true_ids)
    w = (true_ids < num_classes).astype("float32")[None]
    return uf.one_hot(true_ids, num_classes)[None], uf.one_hot(np.asarray(pred_ids), num_classes)[None], w


def test_bincount_mean_iou_hand_computed_with_void():
    # The case of tests/infer/test_metrics.py: void pixels excluded, mean 0.5.
    y_true, y_pred, w = _one_hot_batch([[0, 0, 0, 1], [1, 2, 255, 255]], [[0, 0, 1, 1], [2, 2, 0, 2]], 3)
    m = BincountMeanIoU(num_classes=3)
    m.update_state(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(float(m.result()), 0.5, atol=1e-6)
    cm = keras.ops.convert_to_numpy(m.total_cm)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_bincount_mean_iou_matches_keras_over_batches():
    rng = np.random.default_rng(0)
    ours, theirs = BincountMeanIoU(num_classes=19), keras.metrics.OneHotMeanIoU(num_classes=19)
    for _ in range(3):
        ids = rng.integers(0, 19, (2, 16, 16))
        ids[:, :3] = 255
        y_true = uf.one_hot(ids, 19)
        scores = rng.random((2, 16, 16, 19)).astype("float32")
        w = (ids < 19).astype("float32")
        ours.update_state(y_true, scores, sample_weight=w)
        theirs.update_state(y_true, scores, sample_weight=w)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ours.total_cm), keras.ops.convert_to_numpy(theirs.total_cm)
    )
    assert float(ours.result()) == float(theirs.result())
    ours.reset_state()
    assert float(keras.ops.sum(ours.total_cm)) == 0


def test_training_metrics_names_and_kind():
    acc, iou = training_metrics()
    assert (acc.name, iou.name) == ("accuracy", "mean_iou")
    assert iou.num_classes == uf.NUM_CLASSES
    want = BincountMeanIoU if keras.backend.backend() == "torch" else keras.metrics.OneHotMeanIoU
    assert type(iou) is want
