"""Segmentation losses beyond Keras' built-ins: cross-entropy plus Dice or Lovasz.

Cross-entropy alone stays a Keras built-in (see `training.make_loss`), so a
model trained with it loads anywhere. The Dice and Lovasz terms need classes
of their own; they are registered, and `keras.models.load_model(path,
compile=False)` loads a model trained with them without this module.
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
        ce = _cross_entropy(y_true, y_pred, self.class_weights)
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


def _cross_entropy(y_true, y_pred, class_weights):
    """Per-pixel (class-weighted) cross-entropy, `(B, H, W)`; 0 on void pixels."""
    eps = keras.backend.epsilon()
    log_p = ops.log(ops.clip(y_pred, eps, 1.0 - eps))
    if class_weights is not None:
        log_p = log_p * ops.convert_to_tensor(class_weights, y_pred.dtype)
    return -ops.sum(y_true * log_p, axis=-1)


def lovasz_softmax(y_true, y_pred, stride: int = 1):
    """Lovasz-softmax loss: a convex surrogate of 1 - IoU, averaged over classes.

    Berman et al. (2018), "The Lovasz-Softmax loss". For each class present
    in the batch, the pixels' errors `|fg - p|` are sorted in decreasing
    order and weighted by the steps of the Jaccard loss along that order;
    this is the Lovasz extension of 1 - IoU, so its gradient aims at the
    mean IoU itself rather than at per-pixel likelihood. The IoU is the
    batch's (all its pixels pooled), as the validation metric pools the
    whole split. Void pixels (all-zero one-hot rows) have error 0 and are
    never foreground: they change no class's IoU.

    Args:
        y_true: One-hot masks `(B, H, W, C)`; void pixels all zero.
        y_pred: Probabilities `(B, H, W, C)`.
        stride: Use every `stride`-th pixel along each axis. The sorts are
            the term's cost (one per class over the batch's pixels); a
            stride of 2 sorts a quarter of them.

    Returns:
        Scalar tensor.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if stride > 1:
        y_true, y_pred = y_true[:, ::stride, ::stride], y_pred[:, ::stride, ::stride]
    num_classes = y_pred.shape[-1]
    labelled = ops.sum(y_true, axis=-1, keepdims=True)  # 0 on void
    fg = ops.transpose(ops.reshape(y_true, (-1, num_classes)))  # (C, P)
    probs = ops.transpose(ops.reshape(y_pred * labelled, (-1, num_classes)))
    errors = ops.abs(fg - probs)
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    fg_sorted = ops.take_along_axis(fg, order, axis=-1)
    gts = ops.sum(fg_sorted, axis=-1, keepdims=True)  # (C, 1)
    # Jaccard loss of predicting the first k sorted pixels as the class.
    intersection = gts - ops.cumsum(fg_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - fg_sorted, axis=-1)
    jaccard = 1.0 - intersection / ops.maximum(union, 1.0)
    steps = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    per_class = ops.sum(errors_sorted * ops.stop_gradient(steps), axis=-1)  # (C,)
    present = ops.cast(gts[:, 0] > 0, y_pred.dtype)
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


@keras.saving.register_keras_serializable(package="cityscapes_unet")
class CrossEntropyLovasz(keras.losses.Loss):
    """Per-pixel (class-weighted) cross-entropy plus the Lovasz-softmax term.

    The cross-entropy keeps every pixel's gradient; the Lovasz term
    (`lovasz_softmax`) pushes on the mean IoU directly. Like the Dice term
    of `CrossEntropyDice`, it is added to every pixel's loss, which with
    `mean_with_sample_weight` adds it once to the mean.

    Args:
        class_weights: Per-class cross-entropy weights, or None for 1.
        lovasz_weight: Weight of the Lovasz term.
        stride: Pixel stride of the Lovasz term (see `lovasz_softmax`).
        name: Loss name.
        reduction: Keras reduction; keep `mean_with_sample_weight`.
    """

    def __init__(
        self,
        class_weights=None,
        lovasz_weight: float = 1.0,
        stride: int = 2,
        name: str = "ce_lovasz",
        reduction: str = "mean_with_sample_weight",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.lovasz_weight = float(lovasz_weight)
        self.stride = int(stride)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = _cross_entropy(y_true, y_pred, self.class_weights)
        return ce + self.lovasz_weight * lovasz_softmax(y_true, y_pred, self.stride)

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "lovasz_weight": self.lovasz_weight,
            "stride": self.stride,
        }
