"""Segmentation losses beyond Keras' built-ins: cross-entropy plus Dice.

Cross-entropy alone stays a Keras built-in (see `training.make_loss`), so a
model trained with it loads anywhere. The Dice term needs a class of its own;
it is registered, and `keras.models.load_model(path, compile=False)` loads a
model trained with it without this module.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cityscapes_unet")
class CrossEntropyDice(keras.losses.Loss):
    """Per-pixel (class-weighted) cross-entropy plus a soft Dice term.

    Void pixels have an all-zero one-hot row: they add nothing to the
    cross-entropy (and the sample weights leave them out of its mean), and
    their predictions are masked out of the Dice sums. The Dice term is
    computed over the whole batch per class and averaged over classes, so
    rare classes weigh as much as road; it is added to every pixel's loss,
    which with `mean_with_sample_weight` adds it once to the mean.

    Args:
        class_weights: Per-class cross-entropy weights, or None for 1.
        dice_weight: Weight of the Dice term.
        smooth: Added to the Dice numerator and denominator (a class absent
            from the batch and not predicted scores 1).
        name: Loss name.
        reduction: Keras reduction; keep `mean_with_sample_weight`.
    """

    def __init__(
        self,
        class_weights=None,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        name: str = "ce_dice",
        reduction: str = "mean_with_sample_weight",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        eps = keras.backend.epsilon()
        log_p = ops.log(ops.clip(y_pred, eps, 1.0 - eps))
        if self.class_weights is not None:
            log_p = log_p * ops.convert_to_tensor(self.class_weights, y_pred.dtype)
        ce = -ops.sum(y_true * log_p, axis=-1)  # (B, H, W)
        labelled = ops.sum(y_true, axis=-1, keepdims=True)  # 0 on void
        inter = ops.sum(y_true * y_pred, axis=(0, 1, 2))  # (C,)
        total = ops.sum(y_true + y_pred * labelled, axis=(0, 1, 2))
        dice = 1.0 - ops.mean((2.0 * inter + self.smooth) / (total + self.smooth))
        return ce + self.dice_weight * dice

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
        }
