"""The training metrics: pixel accuracy and mean IoU, fed the per-pixel sample weights.

Keras' `OneHotMeanIoU` builds its confusion matrix with `ops.scatter`, which
the PyTorch backend runs as an accumulating index-put: on a CPU it costs
more than the rest of a training step. `BincountMeanIoU` counts the same
pairs with one `bincount` and is used under that backend; TensorFlow and
JAX keep the built-in (a model trained with built-in metrics loads
compiled without this project).
"""

from __future__ import annotations

import keras
from keras import ops

import utils_func as uf


@keras.saving.register_keras_serializable(package="cityscapes_unet")
class BincountMeanIoU(keras.metrics.OneHotMeanIoU):
    """`keras.metrics.OneHotMeanIoU` with its confusion matrix counted by `bincount`.

    The same counts as the built-in for one-hot targets and scores (every
    argmax is a valid class, so no pair falls out of range); void pixels,
    whose one-hot row is all zero, count only through their sample weight,
    which the pipelines set to 0.

    Args:
        num_classes: Number of classes.
        name: Metric name.
        **kwargs: Passed to `OneHotMeanIoU`.
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        true_ids, pred_ids = ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1)  # (B, H, W)
        pairs = ops.reshape(ops.cast(true_ids * n + pred_ids, "int32"), (-1,))
        weights = 1.0 if sample_weight is None else ops.cast(sample_weight, self.dtype)
        weights = ops.reshape(ops.broadcast_to(weights, ops.shape(true_ids)), (-1,))
        counts = ops.bincount(pairs, weights=weights, minlength=n * n)
        return self.total_cm.assign(self.total_cm + ops.reshape(ops.cast(counts, self.dtype), (n, n)))


def training_metrics() -> list[keras.metrics.Metric]:
    """Pixel accuracy (`accuracy`) and mean IoU over the classes (`mean_iou`).

    Returns:
        Metrics for `Model.compile(weighted_metrics=...)`: `BincountMeanIoU`
        under the PyTorch backend, Keras' `OneHotMeanIoU` elsewhere.
    """
    iou = BincountMeanIoU if keras.backend.backend() == "torch" else keras.metrics.OneHotMeanIoU
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        iou(num_classes=uf.NUM_CLASSES, name="mean_iou"),
    ]
