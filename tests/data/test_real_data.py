"""Checks on the real Cityscapes pairs, when ../shared holds them."""

import os

import numpy as np
import pytest

import utils_func as uf
from conftest import SHARED_TRAIN

pytestmark = pytest.mark.skipif(not os.path.isdir(SHARED_TRAIN), reason="real pairs not present")


def _sample(n=40):
    from cityscapes_unet.data.files import list_images

    files = list_images(SHARED_TRAIN)
    return files[:: max(1, len(files) // n)][:n]


def test_decoded_class_frequencies_are_plausible():
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.data.tf_pipeline import decode_pair

    counts = np.zeros(256)
    for f in _sample():
        _, ids = decode_pair(tf.constant(f), 256)
        counts += np.bincount(ids.numpy().ravel(), minlength=256)
    frac = counts / counts.sum()
    trained = frac[:19]
    assert trained.argmax() == 0  # road
    assert trained[2] > 0.1 and trained[8] > 0.05  # building, vegetation
    assert 0.03 < frac[255] < 0.25  # void a minority
    assert frac[19:255].sum() == 0


def test_tf_and_numpy_decoders_agree_on_real_pairs():
    tf = pytest.importorskip("tensorflow")
    cv2 = pytest.importorskip("cv2")
    from cityscapes_unet.data.tf_pipeline import tf_colors_to_ids

    for f in _sample(5):
        img = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
        tf_img = tf.io.decode_jpeg(tf.io.read_file(f), channels=3, dct_method="INTEGER_ACCURATE")
        np.testing.assert_array_equal(tf_img.numpy(), img)
        expected = uf.nearest_color_ids(img[:, 256:])
        np.testing.assert_array_equal(uf.colors_to_ids(img[:, 256:]), expected)
        for method in ("table", "search"):
            np.testing.assert_array_equal(tf_colors_to_ids(tf_img[:, 256:], method=method).numpy(), expected)
