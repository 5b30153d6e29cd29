"""Training losses: class weights, and cross-entropy with or without the Lovasz term.

Cross-entropy alone stays a Keras built-in (see `make_loss`), so a model
trained with it loads anywhere. The Lovasz term needs a class of its own;
it is registered, and `keras.models.load_model(path, compile=False)` loads a
model trained with it without this module.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

#: Power of the class weights, `frequency ** -CLASS_WEIGHT_POWER`; docs/experiments.md
#: has the runs that chose it.
CLASS_WEIGHT_POWER = 0.2


def class_weights(
    frequencies: np.ndarray, power: float = CLASS_WEIGHT_POWER, max_weight: float = 10.0
) -> np.ndarray:
    """Per-class loss weights that lift rare classes: `f ** -power`.

    A power under 1 is milder than inverse frequency: with 0.5 a class 100
    times rarer than another gets 10 times its weight, not 100.
    Weights are scaled so that their pixel-weighted mean is 1 (the loss
    keeps its scale), then clipped to `[1 / max_weight, max_weight]`.
    Classes absent from the data get `max_weight`.

    Args:
        frequencies: Share of pixels per class, shape `(num_classes,)`.
        power: Exponent; 0 gives all ones, 1 inverse frequency.
        max_weight: Clip bound.

    Returns:
        float32 array `(num_classes,)`.
    """
    f = np.asarray(frequencies, np.float64)
    w = np.full_like(f, max_weight)
    present = f > 0
    w[present] = f[present] ** -power
    if present.any():
        w[present] /= (f[present] * w[present]).sum() / f[present].sum()
    return np.clip(w, 1.0 / max_weight, max_weight).astype(np.float32)


def _cross_entropy(y_true, y_pred, class_weights):
    """Per-pixel (class-weighted) cross-entropy, `(B, H, W)`; 0 on void pixels."""
    eps = keras.backend.epsilon()
    log_p = ops.log(ops.clip(y_pred, eps, 1.0 - eps))
    if class_weights is not None:
        log_p = log_p * ops.convert_to_tensor(class_weights, y_pred.dtype)
    return -ops.sum(y_true * log_p, axis=-1)


def lovasz_softmax(y_true, y_pred, stride: int = 1, bins: int | None = None):
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
        stride: Use every `stride`-th pixel along each axis.
        bins: None sorts the errors exactly (`argsort`, one sort per class
            over the batch's pixels: the cost of the exact term). An integer
            orders them by histogram instead (`_lovasz_binned`): the same
            value and nearly the same gradient (a test bounds the gap), at
            a fraction of the cost.

    Returns:
        Scalar tensor.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if stride > 1:
        y_true, y_pred = y_true[:, ::stride, ::stride], y_pred[:, ::stride, ::stride]
    num_classes = y_pred.shape[-1]
    labelled = ops.sum(y_true, axis=-1, keepdims=True)  # 0 on void
    if bins:
        return _lovasz_binned(y_true, y_pred, labelled, int(bins))
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


def _lovasz_binned(y_true, y_pred, labelled, bins: int):
    """`lovasz_softmax` with the sort replaced by a histogram of the errors.

    Sorting is slow on CPU, under XLA most of all. Errors lie in [0, 1], so
    `bins` equal bins, largest errors first, order them to within
    `1 / bins`: per class and bin, segment sums count the labelled and the
    foreground pixels (`_error_bins`), cumulative sums over the bins give
    the Jaccard loss at each bin's end, and each bin's step is shared among
    its pixels (`_bin_shares`). The value is exact up to the error spread
    within a bin; the gradient departs most from the exact one when many
    pixels share a bin, where the exact order among near-equal errors is
    itself arbitrary.

    Args:
        y_true: One-hot `(B, H, W, C)`, float.
        y_pred: Probabilities `(B, H, W, C)`.
        labelled: `(B, H, W, 1)`, 1 on labelled pixels, 0 on void.
        bins: Number of bins.

    Returns:
        Scalar tensor.
    """
    num_classes = y_pred.shape[-1]
    fg = ops.reshape(y_true, (-1, num_classes))  # (P, C)
    lab = ops.reshape(labelled, (-1, 1))  # (P, 1)
    errors = ops.abs(fg - ops.reshape(y_pred, (-1, num_classes))) * lab  # 0 on void
    seg, count, n_fg = _error_bins(fg, lab, errors, bins)
    fg_share, bg_share = _bin_shares(count, n_fg)
    fg_flat = ops.reshape(fg, (-1,))
    weight = fg_flat * ops.take(ops.reshape(fg_share, (-1,)), seg) + (1.0 - fg_flat) * ops.take(
        ops.reshape(bg_share, (-1,)), seg
    )
    per_class = ops.sum(errors * ops.stop_gradient(ops.reshape(weight, (-1, num_classes))), axis=0)  # (C,)
    present = ops.cast(ops.sum(n_fg, axis=-1) > 0, y_pred.dtype)
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


def _error_bins(fg, lab, errors, bins: int):
    """Bin of every pixel and class, and the pixels each bin holds.

    Args:
        fg: One-hot `(P, C)`, float.
        lab: `(P, 1)`, 1 on labelled pixels.
        errors: `(P, C)` in [0, 1], 0 on void.
        bins: Number of bins per class.

    Returns:
        `(seg, count, n_fg)`: int32 `(P * C,)` segment of each pixel and
        class (bin 0 of a class holds its largest errors, the order the
        Lovasz extension sorts in); labelled pixels `(C, bins)` and
        foreground pixels `(C, bins)` per bin.
    """
    num_classes = fg.shape[-1]
    b = ops.cast(ops.floor((1.0 - ops.stop_gradient(errors)) * bins), "int32")
    # Clipped after the cast: a NaN error (a diverged run) becomes some int
    # that must still index a bin, so the loss turns NaN (which training
    # reports) instead of the gather failing on a wild index.
    b = ops.clip(b, 0, bins - 1)
    seg = ops.reshape(b + ops.arange(num_classes, dtype="int32")[None, :] * bins, (-1,))  # (P*C,)

    def per_bin(values):  # (P, C) -> (C, bins)
        total = ops.segment_sum(ops.reshape(values, (-1,)), seg, num_segments=num_classes * bins)
        return ops.reshape(total, (num_classes, bins))

    count = per_bin(ops.broadcast_to(lab, ops.shape(fg)))  # void pixels count nowhere
    return seg, count, per_bin(fg)


def _bin_shares(count, n_fg):
    """Each bin's Jaccard step, shared among its foreground and background pixels.

    Not evenly: in the exact order, a foreground pixel raises the Jaccard
    loss by `1 / U` and a background one by `I / (U * (U + 1))`
    (intersection `I`, union `U` before it), so within a bin each kind gets
    its share in that ratio, taken halfway through the bin.

    Args:
        count: Labelled pixels per class and bin, `(C, bins)`.
        n_fg: Foreground pixels per class and bin, `(C, bins)`.

    Returns:
        `(fg_share, bg_share)`: the weight `(C, bins)` of one foreground and
        of one background pixel of each bin.
    """
    gts = ops.sum(n_fg, axis=-1, keepdims=True)  # (C, 1)
    # Intersection and union left once each bin's pixels are taken.
    inter = gts - ops.cumsum(n_fg, axis=-1)
    union = gts + ops.cumsum(count - n_fg, axis=-1)
    jaccard = 1.0 - inter / ops.maximum(union, 1.0)
    steps = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    # Intersection and union halfway through each bin.
    inter_mid, union_mid = inter + 0.5 * n_fg, union - 0.5 * (count - n_fg)
    a_fg = 1.0 / ops.maximum(union_mid, 1.0)
    a_bg = inter_mid / ops.maximum(union_mid * (union_mid + 1.0), 1.0)
    scale = steps / ops.maximum(n_fg * a_fg + (count - n_fg) * a_bg, 1e-12)
    return scale * a_fg, scale * a_bg


@keras.saving.register_keras_serializable(package="cityscapes_unet")
class CrossEntropyLovasz(keras.losses.Loss):
    """Per-pixel (class-weighted) cross-entropy plus the Lovasz-softmax term.

    The cross-entropy keeps every pixel's gradient; the Lovasz term
    (`lovasz_softmax`) pushes on the mean IoU directly. It is added to every
    pixel's loss, which with `mean_with_sample_weight` adds it once to the
    mean.

    Args:
        class_weights: Per-class cross-entropy weights, or None for 1.
        lovasz_weight: Weight of the Lovasz term.
        stride: Pixel stride of the Lovasz term (see `lovasz_softmax`).
        bins: Histogram bins that order the errors, or None for an exact
            sort (see `lovasz_softmax`). The histogram makes the term over
            every pixel cheap, where a sort costs more than the rest of a
            training step on CPU.
        name: Loss name.
        reduction: Keras reduction; keep `mean_with_sample_weight`.
    """

    def __init__(
        self,
        class_weights=None,
        lovasz_weight: float = 1.0,
        stride: int = 1,
        bins: int | None = 4096,
        name: str = "ce_lovasz",
        reduction: str = "mean_with_sample_weight",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.lovasz_weight = float(lovasz_weight)
        self.stride = int(stride)
        self.bins = None if bins is None else int(bins)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = _cross_entropy(y_true, y_pred, self.class_weights)
        return ce + self.lovasz_weight * lovasz_softmax(y_true, y_pred, self.stride, self.bins)

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "lovasz_weight": self.lovasz_weight,
            "stride": self.stride,
            "bins": self.bins,
        }


def make_loss(kind: str = "ce", class_weights: np.ndarray | None = None) -> keras.losses.Loss:
    """Categorical cross-entropy averaged over the labelled pixels, with the Lovasz term for `ce_lovasz`.

    Ignored pixels have weight 0 (the sample weights) and an all-zero one-hot
    row; `mean_with_sample_weight` divides by the number of labelled pixels.
    With class weights, Keras' `CategoricalFocalCrossentropy` with `gamma=0`
    is exactly class-weighted cross-entropy (`alpha` per class), and stays a
    built-in that loads without this project.

    Args:
        kind: `ce` or `ce_lovasz` (`CrossEntropyLovasz`).
        class_weights: Per-class weights `(num_classes,)`, or None.

    Returns:
        A Keras loss.
    """
    # Rounded: the weights are written into the model's config.
    weights = None if class_weights is None else [round(float(w), 4) for w in class_weights]
    if kind == "ce_lovasz":
        return CrossEntropyLovasz(weights)
    if weights is None:
        return keras.losses.CategoricalCrossentropy(reduction="mean_with_sample_weight")
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=weights,
        gamma=0.0,
        reduction="mean_with_sample_weight",
        name="weighted_categorical_crossentropy",
    )
