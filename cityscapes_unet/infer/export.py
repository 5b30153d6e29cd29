"""Export a trained model for fast CPU inference, and run it through an engine.

`python main.py export --model output/unet_model.keras` writes an OpenVINO IR
(`unet_model.xml` + `.bin` beside the model) with Keras' `model.export`, then
checks it against the Keras model on a few photos. `predict --engine openvino`
runs it. OpenVINO is an optional dependency (`requirements-optional.txt`).
"""

from __future__ import annotations

import os
import time

import numpy as np

import utils_func as uf
from cityscapes_unet.data.source import resolve_eval_files
from cityscapes_unet.errors import UsageError
from cityscapes_unet.infer.engines import (
    FORMATS,
    _openvino_engine,
    _require_openvino,
    default_export_path,
    load_segmentation_model,
)
from cityscapes_unet.io import read_photo, resize_photo, split_pair


def check_photos(model_path: str, size: int, count: int = 8) -> tuple[np.ndarray, str]:
    """Photos to compare an export with its Keras model.

    The run's validation pairs when its `config.json` and data are still
    there, else smooth random images (a weaker check, said so).

    Returns:
        `(photos, source)`: float32 `(count, size, size, 3)` and a description.
    """

    try:
        files, _, _ = resolve_eval_files(model_path, None)
        photos = [resize_photo(split_pair(read_photo(f))[0], size) for f in files[:count]]
        if photos:
            return np.stack(photos).astype(np.float32), f"{len(photos)} validation photos of the run"
    except Exception:  # noqa: BLE001 - no run data: fall back to synthetic photos
        pass
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    import cv2

    photos = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.clip(photos, 0, 255).astype(
        np.float32
    ), f"{count} synthetic photos (the run's data was not found)"


def run_export(model_path: str, fmt: str = "openvino", out: str | None = None) -> dict:
    """Export a `.keras` model and check the export against it.

    Args:
        model_path: The `.keras` file.
        fmt: One of `FORMATS`.
        out: Destination (`.xml` for OpenVINO, a folder for a SavedModel);
            beside the model by default.

    Returns:
        `{"path", "format", "agreement", "check"}`: agreement is the share of
        pixels whose argmax matches Keras' (OpenVINO only; None otherwise).

    Raises:
        UsageError: For a bad model, format or destination.
    """
    import keras

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    if fmt == "openvino":
        _require_openvino("--format openvino")
    if fmt == "tf_saved_model" and keras.backend.backend() not in ("tensorflow", "jax"):
        raise UsageError("--format tf_saved_model: needs the tensorflow or jax backend")
    model = load_segmentation_model(model_path)
    out = out or default_export_path(model_path, fmt)
    if fmt == "openvino" and not out.endswith(".xml"):
        raise UsageError(f"--out {out}: an OpenVINO model is written to a .xml file")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create {parent} ({e.strerror})") from None

    t0 = time.perf_counter()
    size = int(model.input_shape[1])
    if fmt == "openvino":
        # Written under temporary names, then renamed: a failed export never
        # leaves a half-written model where predict would find it.
        tmp = out[: -len(".xml")] + ".tmp.xml"
        model.export(tmp, format="openvino", verbose=False)
        os.replace(tmp[: -len(".xml")] + ".bin", out[: -len(".xml")] + ".bin")
        os.replace(tmp, out)
    else:
        model.export(out, format="tf_saved_model", verbose=False)
    seconds = time.perf_counter() - t0

    agreement, check = None, ""
    if fmt == "openvino":
        photos, check = check_photos(model_path, size)
        ref = model.predict(photos, verbose=0).argmax(-1)
        got = _openvino_engine(out, "--out").predict(photos).argmax(-1)
        agreement = float((ref == got).mean())
    result = {
        "path": out,
        "format": fmt,
        "seconds": round(seconds, 1),
        "agreement": agreement,
        "check": check,
    }
    line = f"Exported {model_path} ({size}x{size}, {uf.NUM_CLASSES} classes) as {fmt} to {out} in {seconds:.1f} s"
    if agreement is not None:
        line += f"; same class as Keras on {100 * agreement:.2f}% of pixels ({check})"
    print(line)
    if fmt == "openvino":
        print(f"Use it: python main.py predict --model {out} INPUT...")
    return result
