"""evaluate: hand-worked scores and the command end to end."""

import csv
import json

import numpy as np
import pytest

from cityscapes_unet.infer.metrics import category_confusion, confusion_matrix, markdown_report, scores
from conftest import TINY, main_in_process, write_pairs


def test_scores_hand_worked_with_void():
    true = np.array([0, 0, 0, 1, 1, 2, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 0])
    cm = confusion_matrix(true, pred)
    assert cm.sum() == 6  # the void pixel is left out
    assert cm[0, 0] == 2 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[1, 2] == 1 and cm[2, 2] == 1
    r = scores(cm)
    # IoU: road 2/3, sidewalk 1/3, building 1/2; the 16 absent classes do not count.
    assert r["per_class"]["road"]["iou"] == pytest.approx(2 / 3)
    assert r["per_class"]["sidewalk"]["iou"] == pytest.approx(1 / 3)
    assert r["per_class"]["building"]["iou"] == pytest.approx(1 / 2)
    assert r["per_class"]["car"]["iou"] is None
    assert r["mean_iou"] == pytest.approx(0.5)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert r["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # Categories: road and sidewalk are "flat" (4 right, 1 as construction);
    # building is "construction". IoU flat 4/5, construction 1/2.
    cat = category_confusion(cm)
    assert cat.shape == (7, 7) and cat[0, 0] == 4 and cat[0, 1] == 1 and cat[1, 1] == 1
    assert r["per_category"]["flat"] == pytest.approx(0.8)
    assert r["category_mean_iou"] == pytest.approx(0.65)
    md = markdown_report(r)
    assert "| road | 0.6667 |" in md and "| car | - |" in md


@pytest.mark.slow
def test_evaluate_end_to_end_matches_training_metrics(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = main_in_process(
        "--data-dir",
        tiny_data,
        "--output-dir",
        out,
        "--epochs",
        2,
        *TINY,
        "--num-preds",
        0,
        # The saved model computes in float32: a run in float32 logs the
        # very figures it gives (a bf16 run's differ in the last digits).
        "--precision",
        "float32",
        # No class weights: no logit adjustment, so the saved model scores what validation did.
        "--class-weights",
        "none",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = main_in_process("evaluate", "--model", out / "unet_model.keras")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| mean IoU (19 classes) |" in r.stdout
    for name in ("report.json", "report.md", "confusion_matrix.png"):
        assert (out / "eval" / name).stat().st_size > 0
    report = json.load(open(out / "eval" / "report.json"))
    assert report["files"] == 2  # the run's validation split: 15% of 12 pairs
    rows = list(csv.DictReader(open(out / "history.csv")))
    best = max(rows, key=lambda row: float(row["val_mean_iou"]))
    # Same files, same decoding, same void rule: the figures training logged.
    assert report["mean_iou"] == pytest.approx(float(best["val_mean_iou"]), abs=1e-4)
    assert report["pixel_accuracy"] == pytest.approx(float(best["val_accuracy"]), abs=1e-4)
    # Training ran at 32x32, the labels' own size: both figures agree.
    full = report["label_resolution"]
    assert full["mean_iou"] == pytest.approx(report["mean_iou"], abs=1e-6)
    assert full["pixels"] == report["pixels"]
    md = open(out / "eval" / "report.md").read()
    assert "at the labels' own size" in md and "IoU at label size" in md


@pytest.mark.slow
def test_evaluate_shows_progress_on_a_folder(tmp_path):
    import keras

    import utils_func as uf
    from segmentation_model import build_unet

    keras.utils.set_random_seed(1)
    model = tmp_path / "m.keras"
    build_unet(32, uf.NUM_CLASSES, (4, 8, 16, 32), 64).save(model)
    write_pairs(tmp_path / "pairs", 12)
    r = main_in_process("evaluate", "--model", model, "--data-dir", tmp_path / "pairs", "--batch-size", 5)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12/12" in r.stdout and "| mean IoU (19 classes) |" in r.stdout
    assert json.load(open(tmp_path / "eval" / "report.json"))["files"] == 12


def test_evaluate_bad_model_file(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    r = main_in_process("evaluate", "--model", bad, "--data-dir", tmp_path)
    assert r.returncode == 2 and "--model" in r.stderr and "Traceback" not in r.stderr
    r = main_in_process("evaluate", "--model", tmp_path / "missing.keras")
    assert r.returncode == 2 and "file not found" in r.stderr


def _decode_labels(paths):
    import cv2

    from utils_func import colors_to_ids

    out = []
    for p in paths:
        pair = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        out.append(colors_to_ids(pair[:, pair.shape[1] // 2 :]))
    return np.stack(out)


def test_full_resolution_scores_hand_checked(tmp_path):
    """A model that says "road" everywhere, at half the labels' size: the
    label-size matrix holds every labelled full-size pixel in column 0."""
    import keras

    from cityscapes_unet.infer.evaluate import evaluate_files
    from conftest import write_pairs

    paths = write_pairs(tmp_path / "pairs", 3, size=32)
    inputs = keras.Input((16, 16, 3))
    head = keras.layers.Conv2D(19, 1)
    model = keras.Model(inputs, keras.layers.Activation("softmax")(head(inputs)))
    bias = np.zeros(19, np.float32)
    bias[0] = 5.0
    head.set_weights([np.zeros((1, 1, 3, 19), np.float32), bias])
    cm, cm_full = evaluate_files(model, [str(p) for p in paths], batch_size=2)

    ids = _decode_labels(paths)  # (3, 32, 32), decoded at full size
    counts = np.bincount(ids[ids < 19].ravel(), minlength=19)
    assert cm_full[:, 0].tolist() == counts.tolist()
    assert cm_full[:, 1:].sum() == 0
    assert cm.sum() == cm[:, 0].sum() > 0  # at 16x16: about a quarter of the pixels
    assert abs(cm.sum() * 4 - cm_full.sum()) <= 0.1 * cm_full.sum()


def test_full_resolution_equals_model_size_when_sizes_match(tmp_path):
    import keras

    from cityscapes_unet.infer.evaluate import evaluate_files
    from conftest import write_pairs
    from segmentation_model import build_unet

    paths = write_pairs(tmp_path / "pairs", 5, size=32)
    keras.utils.set_random_seed(1)
    model = build_unet(32, widths=(4, 8, 16, 32))
    cm, cm_full = evaluate_files(model, [str(p) for p in paths], batch_size=2)
    assert cm.sum() > 0 and cm.shape == (19, 19)
    np.testing.assert_array_equal(cm, cm_full)


def test_undecodable_file_is_left_out_with_a_warning(tmp_path):
    import keras

    from cityscapes_unet.infer.evaluate import evaluate_files
    from conftest import write_pairs
    from segmentation_model import build_unet

    paths = [str(p) for p in write_pairs(tmp_path / "pairs", 3, size=32)]
    broken = tmp_path / "pairs" / "broken.jpg"
    broken.write_bytes(open(paths[0], "rb").read()[:200])  # a truncated JPEG
    keras.utils.set_random_seed(2)
    model = build_unet(32, widths=(4, 8))
    with pytest.warns(UserWarning, match="skipped .*broken.jpg"):
        cm, cm_full = evaluate_files(model, [paths[0], str(broken), *paths[1:]], batch_size=2)
    want, want_full = evaluate_files(model, paths, batch_size=2)
    np.testing.assert_array_equal(cm, want)
    np.testing.assert_array_equal(cm_full, want_full)
