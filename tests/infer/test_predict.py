"""predict: photos of any size and kind, pairs, bad inputs; the helpers."""

import os

import cv2
import keras
import numpy as np
import pytest

import utils_func as uf
from cityscapes_unet import plots
from cityscapes_unet.infer import predict
from cityscapes_unet.infer.engines import Engine
from cityscapes_unet.infer.metrics import probabilities_to_ids
from cityscapes_unet.io import read_photo, split_pair
from cityscapes_unet.plots import overlay
from cityscapes_unet.resize import area_resize
from conftest import main_in_process, make_pair, write_pairs
from segmentation_model import build_unet


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 32x32 UNet saved as .keras (predict does not care)."""
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("model") / "unet_model.keras"
    build_unet(32, uf.NUM_CLASSES, (4, 8, 16, 32), 64).save(path)
    return path


def _palette_colours():
    return {tuple(c.color) for c in uf.CLASSES}


def test_probabilities_to_ids_resizes_scores_not_ids():
    # Two classes split left/right at the model's 4x4; at 8x6 the boundary
    # stays in the middle and only the two ids appear.
    probs = np.zeros((4, 4, 19), np.float32)
    probs[:, :2, 3] = 1
    probs[:, 2:, 7] = 1
    ids = probabilities_to_ids(probs, 6, 8)
    assert ids.shape == (6, 8) and ids.dtype == np.uint8
    assert set(np.unique(ids)) == {3, 7}
    assert (ids[:, :4] == 3).all() and (ids[:, 4:] == 7).all()


def test_read_photo_gray_alpha_and_bad(tmp_path):
    gray = np.arange(30 * 20, dtype=np.uint8).reshape(20, 30)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = read_photo(str(tmp_path / "g.png"))
    assert rgb.shape == (20, 30, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()
    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGR order
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgb = read_photo(str(tmp_path / "a.png"))
    assert rgb.shape == (5, 7, 3) and (rgb[..., 0] == 200).all() and (rgb[..., 1:] == 0).all()
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a decodable"):
        read_photo(str(tmp_path / "x.jpg"))


def test_split_pair_and_overlay():
    pair, ids = make_pair(16, seed=1)
    photo, truth = split_pair(pair)
    assert photo.shape == (16, 16, 3)
    np.testing.assert_array_equal(truth, ids)  # exact colours: exact ids, void included
    with pytest.raises(ValueError, match="odd width"):
        split_pair(pair[:, :31])
    mixed = overlay(np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 13))  # car (0, 0, 142)
    assert (mixed == [0, 0, 71]).all()


def test_atomic_file_moves_companions_first_and_cleans_up(tmp_path):
    from cityscapes_unet.io import atomic_file

    dest = tmp_path / "m.xml"
    with atomic_file(str(dest), companions=(".bin",)) as tmp:
        assert tmp.endswith(".xml") and not dest.exists()
        open(tmp, "w").write("xml")
        open(tmp[: -len(".xml")] + ".bin", "w").write("bin")
    assert dest.read_text() == "xml" and (tmp_path / "m.bin").read_text() == "bin"
    # A failed write leaves the old files and no temporary.
    with pytest.raises(RuntimeError), atomic_file(str(dest), companions=(".bin",)) as tmp:
        open(tmp, "w").write("new")
        open(tmp[: -len(".xml")] + ".bin", "w").write("new")
        raise RuntimeError
    assert dest.read_text() == "xml" and (tmp_path / "m.bin").read_text() == "bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_predict_feeds_pairs_as_training_decodes_them(tmp_path, monkeypatch):
    """The model sees the photo of a pair exactly as the training pipeline decodes it."""
    from cityscapes_unet.data.numpy_pipeline import decode_pair_np
    from cityscapes_unet.infer import predict
    from cityscapes_unet.infer.engines import Engine

    paths = write_pairs(tmp_path / "pairs", 2, size=48)
    seen = []

    def fake(x):
        seen.append(x.copy())
        return np.full((len(x), 32, 32, uf.NUM_CLASSES), 1 / uf.NUM_CLASSES, np.float32)

    monkeypatch.setattr(predict, "load_engine", lambda path, engine, tta: Engine("keras", path, 32, fake))
    summary = predict.run_predict([str(tmp_path / "pairs")], "m.keras", out=str(tmp_path / "out"), pairs=True)
    assert summary["predicted"] == 2
    # The decoded photo, area-resized as the models' own layer resizes.
    want = np.stack([area_resize(decode_pair_np(p)[0], 32, 32) for p in paths])
    np.testing.assert_allclose(np.concatenate(seen), want, atol=1e-4)


def test_predict_command_photos(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "gray.jpg"), rng.integers(0, 255, (45, 70), dtype=np.uint8))
    cv2.imwrite(str(src / "alpha.png"), rng.integers(0, 255, (33, 21, 4), dtype=np.uint8))
    (src / "readme.txt").write_text("not a photo: ignored in a folder")
    (src / "broken.png").write_bytes(b"not a png")
    single = tmp_path / "big.jpg"
    cv2.imwrite(str(single), rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))
    out = tmp_path / "out"
    r = main_in_process("predict", "--model", tiny_model, "--out", out, src, single)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Predicted 3 photos" in r.stdout and "skipped 1" in r.stdout and "broken.png" in r.stdout
    palette = _palette_colours()
    for name, (h, w) in {"gray": (45, 70), "alpha": (33, 21), "big": (120, 200)}.items():
        ids = cv2.imread(str(out / f"{name}_ids.png"), cv2.IMREAD_UNCHANGED)
        assert ids.shape == (h, w) and ids.dtype == np.uint8 and ids.max() < uf.NUM_CLASSES
        mask = cv2.cvtColor(cv2.imread(str(out / f"{name}_mask.png")), cv2.COLOR_BGR2RGB)
        assert mask.shape == (h, w, 3)
        assert {tuple(c) for c in mask.reshape(-1, 3)} <= palette
        np.testing.assert_array_equal(mask, uf.colorize(ids))  # the mask is the ids, coloured
        assert cv2.imread(str(out / f"{name}_overlay.png")).shape == (h, w, 3)
    assert not (out / "broken_ids.png").exists()


def test_predict_command_pairs(tiny_model, tmp_path):
    write_pairs(tmp_path / "pairs", 11)
    out = tmp_path / "out"
    r = main_in_process("predict", "--pairs", "--model", tiny_model, "--out", out, tmp_path / "pairs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Predicted 11 pairs" in r.stdout and "mean IoU" in r.stdout
    assert "11/11" in r.stdout  # the progress bar
    assert cv2.imread(str(out / "1_ids.png"), cv2.IMREAD_UNCHANGED).shape == (32, 32)
    assert (out / "1_panel.png").stat().st_size > 10000


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "{tmp}/missing.keras", "{tmp}"], "--model {tmp}/missing.keras: file not found"),
        (["--model", "{model}", "{tmp}/nothing.jpg"], "{tmp}/nothing.jpg: no such file or folder"),
        (["--model", "{model}", "{tmp}/empty"], "no .jpg, .jpeg, .png or video files"),
        (["--model", "{model}", "{tmp}/junk.jpg"], "no usable photo among 1 input files"),
        (["--model", "{model}", "--batch-size", "0", "{tmp}"], "--batch-size 0"),
    ],
)
def test_predict_bad_input_one_line(args, needle, tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    fill = {"tmp": str(tmp_path), "model": str(tiny_model)}
    r = main_in_process("predict", "--out", tmp_path / "o", *[a.format(**fill) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle.format(**fill) in r.stderr
    assert "Traceback" not in r.stderr


def test_predict_refuses_model_with_wrong_outputs(tmp_path):
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs)).save(tmp_path / "five.keras")
    cv2.imwrite(str(tmp_path / "p.jpg"), np.zeros((8, 8, 3), np.uint8))
    r = main_in_process(
        "predict", "--model", tmp_path / "five.keras", "--out", tmp_path / "o", tmp_path / "p.jpg"
    )
    assert r.returncode == 2 and f"--model {tmp_path / 'five.keras'}" in r.stderr
    assert not os.path.exists(tmp_path / "o" / "p_ids.png")


def _write_video(path, frames, fps=12.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def _read_video(path):
    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return fps, frames


@pytest.mark.slow
def test_predict_video_matches_frames_one_by_one(tiny_model, tmp_path):
    # The photo halves of tiny pairs, scaled to an odd frame size, as a clip.
    photos = [cv2.resize(make_pair(32, s)[0][:, :32], (40, 24)) for s in range(7)]
    clip = tmp_path / "clip.avi"
    _write_video(clip, photos)
    out = tmp_path / "out"
    r = main_in_process(
        "predict", "--model", tiny_model, "--frame-ids", "--batch-size", 3, "--out", out, clip
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Predicted 7 frames of 1 video" in r.stdout and "7/7" in r.stdout
    fps, written = _read_video(out / "clip_overlay.mp4")
    assert len(written) == 7 and written[0].shape == (24, 40, 3) and fps == pytest.approx(12.0)
    ids = [cv2.imread(str(out / "clip_ids" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(1, 8)]
    assert all(i.shape == (24, 40) for i in ids)
    # The frames as the video holds them, predicted one by one as photos.
    _, frames = _read_video(clip)
    single = tmp_path / "frames"
    single.mkdir()
    for i, f in enumerate(frames, 1):
        cv2.imwrite(str(single / f"{i:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    r = main_in_process(
        "predict", "--model", tiny_model, "--batch-size", 1, "--out", tmp_path / "one", single
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for i in range(1, 8):
        one = cv2.imread(str(tmp_path / "one" / f"{i:06d}_ids.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(one, ids[i - 1])


def test_predict_unreadable_video_is_skipped(tiny_model, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((20, 30, 3), 90, np.uint8))
    r = main_in_process("predict", "--model", tiny_model, "--out", tmp_path / "out", bad, photo)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipped {bad}: not a video OpenCV can read" in r.stdout
    assert "Traceback" not in r.stderr and (tmp_path / "out" / "p_ids.png").exists()


def test_panel_image_columns_hold_the_pictures():
    photo = np.full((20, 30, 3), 7, np.uint8)
    truth = np.full((20, 30), 13, np.uint8)
    truth[0, 0] = uf.IGNORE_ID
    pred = np.full((20, 30), 0, np.uint8)
    panel = plots.panel_image(photo, truth, pred, "t")
    top = 50  # title bar and column names
    np.testing.assert_array_equal(panel[top : top + 20, 2:32], photo)
    np.testing.assert_array_equal(panel[top : top + 20, 36:66], uf.colorize(truth))
    np.testing.assert_array_equal(panel[top : top + 20, 70:100], uf.colorize(pred))
    assert tuple(panel[top, 36]) == (0, 0, 0)  # ignored: black
    assert panel.shape[0] >= top + 14 * uf.NUM_CLASSES  # the legend fits
    no_truth = plots.panel_image(photo, None, pred)
    assert no_truth.shape[1] == panel.shape[1] - 34


def test_predict_photos_in_threads_equals_one_at_a_time(tmp_path):
    # The pipelined loop gives each file its own prediction, in order, and
    # skips unreadable files wherever they fall in a batch.
    paths = write_pairs(tmp_path / "pairs", 9)
    (tmp_path / "pairs" / "5.jpg").write_bytes(b"broken")

    def fake(x):
        # Class = the photo's mean brightness bucket: a function of the input alone.
        k = (x.mean(axis=(1, 2, 3)) // 16).astype(int) % uf.NUM_CLASSES
        return np.eye(uf.NUM_CLASSES, dtype=np.float32)[k][:, None, None, :] * np.ones(
            (1, 32, 32, 1), np.float32
        )

    runner = Engine("keras", "m.keras", 32, fake)
    (tmp_path / "out").mkdir()
    tally = predict._Tally()
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    predict._predict_photos(runner, paths, stems, str(tmp_path / "out"), True, 4, tally)
    assert tally.written == 8 and [os.path.basename(p) for p, _ in tally.skipped] == ["5.jpg"]
    for p, stem in zip(paths, stems, strict=True):
        if stem == "5":
            continue
        photo = split_pair(read_photo(p))[0]
        want = fake(area_resize(photo, 32, 32)[None])[0].argmax(-1)[0, 0]
        got = cv2.imread(str(tmp_path / "out" / f"{stem}_ids.png"), cv2.IMREAD_UNCHANGED)
        assert (got == want).all()
