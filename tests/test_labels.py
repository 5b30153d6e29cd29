"""Class table, colour decoding (NumPy and TF), one-hot and colourising."""

import numpy as np
import pytest

import utils_func as uf


def test_class_table_order_and_palette():
    assert uf.CLASS_NAMES == (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
    assert [c.train_id for c in uf.CLASSES] == list(range(19))
    assert uf.CLASSES[13].color == (0, 0, 142)  # car
    colors, ids = uf.decode_palette()
    assert colors.shape == (29, 3) and ids.shape == (29,)
    assert len({tuple(c) for c in colors}) == 29
    # Every trained class decodes from its own colour; 10 colours are void.
    assert sorted(ids[ids != 255].tolist()) == list(range(19))
    assert (ids == 255).sum() == 10


def _farthest_from_palette():
    colors, _ = uf.decode_palette()
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    d = np.sqrt(((grid[:, None].astype(float) - colors[None]) ** 2).sum(-1)).min(1)
    return grid[d.argmax()], d.max()


HAND_CASES = [
    ((128, 64, 128), 0),  # road
    ((131, 60, 125), 0),  # road, JPEG-shifted by a few levels
    ((0, 0, 142), 13),  # car
    ((0, 60, 100), 15),  # bus
    ((0, 80, 100), 16),  # train: 20 from bus
    ((0, 67, 100), 15),  # nearer bus (7) than train (13)
    ((0, 0, 70), 14),  # truck
    ((0, 0, 90), 255),  # caravan: not trained
    ((153, 153, 153), 5),  # pole (and polegroup) grey
    ((0, 0, 0), 255),  # unlabeled / ego vehicle / static ...
    ((111, 74, 0), 255),  # dynamic
    ((250, 170, 160), 255),  # parking
    ((180, 165, 180), 255),  # guard rail
]


def test_colors_to_ids_hand_cases():
    far, dist = _farthest_from_palette()
    assert dist > uf.MAX_COLOR_DISTANCE
    colors = [c for c, _ in HAND_CASES] + [tuple(far)]
    expected = [i for _, i in HAND_CASES] + [255]
    img = np.array(colors, np.uint8)[None]  # (1, N, 3)
    assert uf.colors_to_ids(img)[0].tolist() == expected


def test_blend_between_distant_classes_is_ignored():
    road, sidewalk = np.array([128, 64, 128]), np.array([244, 35, 232])
    mid = ((road + sidewalk) // 2).astype(np.uint8)
    assert uf.colors_to_ids(mid[None, None])[0, 0] == 255
    # Near one end it is that class.
    near = (0.85 * road + 0.15 * sidewalk).astype(np.uint8)
    assert uf.colors_to_ids(near[None, None])[0, 0] == 0


def test_tf_decoder_matches_numpy():
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.data.tf_pipeline import tf_colors_to_ids

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    img[:5, : len(HAND_CASES)] = np.array([c for c, _ in HAND_CASES], np.uint8)
    # Both TF methods, the NumPy table and the NumPy search: one answer.
    expected = uf.nearest_color_ids(img)
    np.testing.assert_array_equal(uf.colors_to_ids(img), expected)
    for method in ("table", "search"):
        np.testing.assert_array_equal(tf_colors_to_ids(tf.constant(img), method=method).numpy(), expected)


def test_one_hot_void_rows_are_zero():
    ids = np.array([[0, 18], [255, 3]], np.uint8)
    oh = uf.one_hot(ids)
    assert oh.shape == (2, 2, 19) and oh.dtype == np.float32
    assert oh[0, 0, 0] == 1 and oh[0, 1, 18] == 1 and oh[1, 1, 3] == 1
    assert oh[1, 0].sum() == 0
    assert oh.sum() == 3


def test_colorize_round_trip():
    ids = np.arange(19, dtype=np.uint8).reshape(1, 19)
    ids = np.concatenate([ids, np.full((1, 19), 255, np.uint8)])
    rgb = uf.colorize(ids)
    assert rgb.shape == (2, 19, 3) and rgb.dtype == np.uint8
    assert (rgb[1] == 0).all()  # void painted black
    np.testing.assert_array_equal(uf.colors_to_ids(rgb[:1]), ids[:1])


def test_classes_table_json_ready():
    import json

    table = uf.classes_table()
    assert len(table) == 19
    assert table[0] == {"name": "road", "trainId": 0, "color": [128, 64, 128], "category": "flat"}
    json.dumps(table)


def test_color_lut_equals_the_palette_search():
    """The table behind both pipelines gives the search's id (checked once on
    all 2**24 colours; here on 2**21 random ones and every colour near the palette)."""
    from utils_func import color_lut, nearest_color_ids

    lut = color_lut()
    assert lut.shape == (1 << 24,) and lut.dtype == np.uint8
    rng = np.random.default_rng(0)
    colors, _ = uf.decode_palette()
    # Up to 3 away from each palette colour along every axis: ties and edges of the cubes.
    offsets = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    near = np.clip(colors[:, None].astype(int) + offsets[None], 0, 255).reshape(-1, 3)
    rgb = np.concatenate([rng.integers(0, 256, (1 << 21, 3)), near]).astype(np.uint8)
    index = (rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2]
    np.testing.assert_array_equal(lut[index], nearest_color_ids(rgb[None])[0])
    # The threshold and a tie, by hand: road (128, 64, 128) moved by exactly 60
    # (towards no other colour) stays road, by 61 is ignored; bus (0, 60, 100) and train (0, 80, 100)
    # are 20 apart: the midpoint goes to the one listed first (bus, 15).
    at = lambda r, g, b: lut[(r << 16) | (g << 8) | b]  # noqa: E731
    assert at(128, 4, 128) == 0 and at(128, 3, 128) == uf.IGNORE_ID
    assert at(0, 70, 100) == 15
