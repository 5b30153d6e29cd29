"""The losses: weighted cross-entropy and the Lovasz term, hand-worked values, void, training, loading."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cityscapes_unet.train.losses import class_weights, make_loss


def _onehot(ids, c=3):
    y = np.zeros(ids.shape + (c,), np.float32)
    for idx, v in np.ndenumerate(ids):
        if v < c:
            y[idx + (v,)] = 1
    return y


def test_weighted_cross_entropy_hand_worked_with_void():
    ids = np.array([[[0, 1, 255]]])  # the third pixel is void
    y, w = _onehot(ids), (ids < 3).astype(np.float32)
    p = np.array([[[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]]], np.float32)
    plain = make_loss("ce")
    weighted = make_loss("ce", np.array([2.0, 4.0, 1.0]))
    # Both labelled pixels give 0.5 to their class; the void pixel counts nowhere.
    assert float(plain(y, p, sample_weight=w)) == pytest.approx(-np.log(0.5), rel=1e-5)
    assert float(weighted(y, p, sample_weight=w)) == pytest.approx(3 * -np.log(0.5), rel=1e-5)
    assert isinstance(weighted, keras.losses.CategoricalFocalCrossentropy)  # a built-in: loads anywhere


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "ce_lovasz"])
def test_a_fit_lowers_the_loss_and_the_model_loads_without_project(tmp_path, loss):
    from conftest import tiny_fit

    model, hist = tiny_fit(tmp_path, loss=loss, epochs=20)
    assert all(np.isfinite(hist)) and np.mean(hist[-3:]) < 0.7 * np.mean(hist[:3])
    model.save(tmp_path / "m.keras")  # compiled: the custom loss is registered
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    script = (
        "import numpy as np, keras\n"
        "m = keras.models.load_model('m.keras', compile=False)\n"
        "np.testing.assert_allclose(m.predict(np.load('x.npy'), verbose=0), np.load('y.npy'), atol=1e-5)\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def _lovasz_brute(y, p):
    """Lovasz-softmax by its definition, over the labelled pixels in NumPy."""
    y, p = y.reshape(-1, y.shape[-1]), p.reshape(-1, p.shape[-1])
    keep = y.sum(-1) > 0
    y, p = y[keep], p[keep]
    values = []
    for c in range(y.shape[-1]):
        if y[:, c].sum() == 0:
            continue  # absent classes do not count
        order = np.argsort(-np.abs(y[:, c] - p[:, c]), kind="stable")
        err, fg = np.abs(y[:, c] - p[:, c])[order], y[order, c]
        jac = 1 - (fg.sum() - np.cumsum(fg)) / (fg.sum() + np.cumsum(1 - fg))
        values.append(err @ np.diff(jac, prepend=0.0))
    return np.mean(values)


def test_lovasz_hand_worked_two_pixels():
    from cityscapes_unet.train.losses import lovasz_softmax

    # Two pixels, both class 0, predicted 0.8 and 0.4 for it. Errors sorted:
    # 0.6 (second pixel), 0.2. Jaccard losses after 1 and 2 pixels: 1 - 1/2
    # and 1 - 0/2, steps 0.5, 0.5: loss 0.6 * 0.5 + 0.2 * 0.5 = 0.4. Class 1
    # is absent and does not count.
    y = np.array([[[[1, 0], [1, 0]]]], np.float32)
    p = np.array([[[[0.8, 0.2], [0.4, 0.6]]]], np.float32)
    assert float(lovasz_softmax(y, p)) == pytest.approx(0.4, rel=1e-6)


def test_lovasz_matches_definition_and_ignores_void():
    from cityscapes_unet.train.losses import CrossEntropyLovasz, lovasz_softmax

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, (2, 4, 6))
    ids[0, 1, 2] = ids[1, 3, 5] = 255  # void
    y = _onehot(ids)
    p = rng.dirichlet(np.ones(3), ids.shape).astype(np.float32)
    assert float(lovasz_softmax(y, p)) == pytest.approx(_lovasz_brute(y, p), rel=1e-5)
    # Stride 2 is the same loss over every second pixel of each axis.
    assert float(lovasz_softmax(y, p, stride=2)) == pytest.approx(
        _lovasz_brute(y[:, ::2, ::2], p[:, ::2, ::2]), rel=1e-5
    )
    # A perfect prediction scores 0; what the model says on void pixels changes nothing.
    assert float(lovasz_softmax(y, np.where(y.sum(-1, keepdims=True) > 0, y, p))) == pytest.approx(
        0, abs=1e-6
    )
    p2 = p.copy()
    p2[0, 1, 2] = [0.98, 0.01, 0.01]
    assert float(lovasz_softmax(y, p2)) == pytest.approx(float(lovasz_softmax(y, p)), rel=1e-6)
    # The combined loss is the mean cross-entropy over labelled pixels plus the term.
    w = (ids < 3).astype(np.float32)
    ce = -(np.log(np.clip(p, 1e-7, 1)) * y).sum(-1)
    expected = ce[w > 0].mean() + _lovasz_brute(y, p)
    got = float(CrossEntropyLovasz(stride=1, bins=None)(y, p, sample_weight=w))
    assert got == pytest.approx(expected, rel=1e-5)
    # As the run makes it: the histogram-ordered term, weight 1.
    loss = make_loss("ce_lovasz")
    expected = ce[w > 0].mean() + float(lovasz_softmax(y, p, bins=loss.bins))
    assert float(loss(y, p, sample_weight=w)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("confident", [False, True])
def test_binned_lovasz_matches_the_exact_sort_in_value_and_gradient(confident):
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.train.losses import lovasz_softmax

    # Spread-out predictions, and confident ones (errors crowd near 0 and 1,
    # many to a bin), with void pixels.
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, (2, 24, 24))
    ids[:, :3] = 255
    y = tf.constant(_onehot(ids, 5))
    if confident:
        p = tf.nn.softmax(tf.constant(4 * rng.normal(size=ids.shape + (5,)), tf.float32))
    else:
        p = tf.constant(rng.dirichlet(np.ones(5), ids.shape).astype(np.float32))
    exact = float(lovasz_softmax(y, p))
    assert exact == pytest.approx(_lovasz_brute(y.numpy(), p.numpy()), rel=1e-5)
    assert float(lovasz_softmax(y, p, bins=4096)) == pytest.approx(exact, rel=1e-3)
    # 4 bins order the errors only coarsely: the value drifts, which shows
    # the bins are what orders them.
    assert abs(float(lovasz_softmax(y, p, bins=4)) - exact) > 1e-3
    grads = []
    for bins in (None, 4096, 4):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = lovasz_softmax(y, p, bins=bins)
        grads.append(tape.gradient(loss, p).numpy())
    g_exact, g_binned, g_coarse = grads
    l1 = np.abs(g_exact).sum()
    assert l1 > 0
    assert np.abs(g_binned - g_exact).sum() / l1 < (0.02 if confident else 0.002)
    assert np.abs(g_coarse - g_exact).sum() / l1 > 0.05
    # Void pixels get no gradient either way.
    assert not g_binned[:, :3].any()


def test_binned_lovasz_is_exact_when_every_error_has_its_own_bin():
    from cityscapes_unet.train.losses import lovasz_softmax

    # The hand-worked case above: errors 0.6 and 0.2 fall in different bins.
    y = np.array([[[[1, 0], [1, 0]]]], np.float32)
    p = np.array([[[[0.8, 0.2], [0.4, 0.6]]]], np.float32)
    assert float(lovasz_softmax(y, p, bins=4096)) == pytest.approx(0.4, rel=1e-6)


def test_class_weights_hand_computed():
    # f**-0.5 = [sqrt2, 2, 2]; pixel-weighted mean = 0.5*sqrt2 + 0.25*2 + 0.25*2.
    w = class_weights(np.array([0.5, 0.25, 0.25, 0.0]), power=0.5)
    mean = 0.5 * np.sqrt(2) + 1.0
    np.testing.assert_allclose(w, [np.sqrt(2) / mean, 2 / mean, 2 / mean, 10.0], rtol=1e-6)
    # Clipped at both ends; power 0 gives ones.
    w = class_weights(np.array([0.999999, 1e-6]), power=0.5, max_weight=5)
    assert w.max() == 5 and w.min() >= 0.2
    np.testing.assert_allclose(class_weights(np.array([0.7, 0.3]), power=0), [1, 1])
