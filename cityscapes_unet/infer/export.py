"""Export a trained model for fast CPU inference, and run it through an engine.

`python main.py export --model output/unet_model.keras` writes an OpenVINO IR
(`unet_model.xml` + `.bin` beside the model) with Keras' `model.export`, then
checks it against the Keras model on a few photos, in float32 and, on a CPU
with bf16 units, in bf16; bf16 is recorded in the IR for `predict --engine
openvino` to use where its classes match Keras' closely enough. OpenVINO is
an optional dependency (`requirements-optional.txt`). `--tta flip` or
`scales` builds test-time averaging into the export (`saved_model.with_tta`);
`--format keras` writes that as a `.keras` file.
"""

from __future__ import annotations

import os
import tempfile
import time

import cv2
import keras
import numpy as np

import utils_func as uf
from cityscapes_unet import io
from cityscapes_unet.data.source import resolve_eval_files, tensorflow_installed
from cityscapes_unet.errors import UsageError
from cityscapes_unet.infer.engines import (
    PRECISION_KEY,
    default_export_path,
    load_segmentation_model,
    openvino_engine,
    precisions_here,
    require_openvino,
)
from cityscapes_unet.infer.saved_model import with_tta
from cityscapes_unet.resize import area_resize
from cityscapes_unet.settings import FORMATS, TTAS


def check_photos(model_path: str, size: int, count: int = 8) -> tuple[np.ndarray, str]:
    """Photos to compare an export with its Keras model.

    The run's validation pairs when its `config.json` and data are still
    there, else smooth random images (a weaker check, said so).

    Args:
        model_path: The `.keras` file of a run.
        size: Side of the model's square input.
        count: How many photos at most.

    Returns:
        `(photos, source)`: float32 `(count, size, size, 3)` in 0..255 and a
        description.
    """
    try:
        files, _, _ = resolve_eval_files(model_path, None)
        photos = [area_resize(io.split_pair(io.read_photo(f))[0], size, size) for f in files[:count]]
        if photos:
            return np.stack(photos).astype(np.float32), f"{len(photos)} validation photos of the run"
    except Exception:  # noqa: BLE001 - no run data: fall back to synthetic photos
        pass
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    photos = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.clip(photos, 0, 255).astype(
        np.float32
    ), f"{count} synthetic photos (the run's data was not found)"


def _check_format(fmt: str, tta: str) -> None:
    """Refuse a format or averaging that is unknown or cannot be written here."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    if tta not in TTAS:
        raise UsageError(f"--tta {tta}: must be one of {', '.join(TTAS)}")
    if fmt == "keras":
        if tta == "none":
            raise UsageError("--format keras: the model is a .keras file already; give --tta flip or scales")
        return  # Keras' own save: any backend, no TensorFlow needed
    if fmt == "openvino":
        require_openvino("--format openvino")
    backend = keras.backend.backend()
    if fmt == "tf_saved_model" and backend not in ("tensorflow", "jax"):
        raise UsageError("--format tf_saved_model: needs the tensorflow or jax backend")
    # Keras exports a JAX model through jax2tf, TensorFlow's, whatever the format.
    if (fmt == "tf_saved_model" or backend == "jax") and not tensorflow_installed():
        raise UsageError(
            f"--format {fmt}: needs TensorFlow under the {backend} backend (Keras exports through it); "
            "install tensorflow, or export under another KERAS_BACKEND"
        )


def _destination(model_path: str, fmt: str, out: str | None, tta: str) -> str:
    """Check the destination of an export and create its folder; return it."""
    out = out or default_export_path(model_path, fmt, tta)
    if FORMATS[fmt] and not out.endswith(FORMATS[fmt]):
        raise UsageError(f"--out {out}: --format {fmt} writes a {FORMATS[fmt]} file")
    if os.path.abspath(out) == os.path.abspath(model_path):
        raise UsageError(f"--out {out}: is the model itself; choose another file")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create {parent} ({e.strerror})") from None
    return out


# The least share of pixels whose class must match Keras' for the export to
# be recorded as bf16 where the CPU has bf16 units.
BF16_AGREEMENT = 0.995


def _agreements(model: keras.Model, model_path: str, xml: str) -> tuple[dict[str, float], str]:
    """Share of pixels whose class an OpenVINO IR and Keras agree on, per precision this CPU runs."""
    photos, check = check_photos(model_path, int(model.input_shape[1]))
    ref = model.predict(photos, verbose=0).argmax(-1)
    return {
        p: float((ref == openvino_engine(xml, "--out", p).predict(photos).argmax(-1)).mean())
        for p in precisions_here()
    }, check


def _export_openvino(model: keras.Model, model_path: str, out: str) -> tuple[dict[str, float], str, str]:
    """Write the IR, recording bf16 where it matches Keras well enough; return agreements, check, precision."""
    ov = require_openvino("--format openvino")
    with tempfile.TemporaryDirectory() as tmp_dir:
        first = os.path.join(tmp_dir, "model.xml")
        model.export(first, format="openvino", verbose=False)
        agreements, check = _agreements(model, model_path, first)
        precision = "bf16" if agreements.get("bf16", 0.0) >= BF16_AGREEMENT else "f32"
        ov_model = ov.Core().read_model(first)
        ov_model.set_rt_info(precision, PRECISION_KEY)
        # Under temporary names, the .bin moved first: a failed export never
        # leaves a half-written model where predict would find it.
        with io.atomic_file(out, companions=(".bin",)) as tmp:
            ov.save_model(ov_model, tmp, compress_to_fp16=False)
    return agreements, check, precision


def run_export(
    model: str = "output/unet_model.keras",
    format: str = "openvino",
    tta: str = "none",
    out: str | None = None,
) -> dict:
    """Export a `.keras` model and check the export against it.

    Args:
        model: The `.keras` file.
        format: One of `settings.FORMATS`.
        tta: Test-time averaging built into the export (`settings.TTAS`, `with_tta`).
        out: Destination (`.xml` for OpenVINO, a folder for a SavedModel,
            `.keras` for Keras); beside the model by default.

    Returns:
        `{"path", "format", "seconds", "agreement", "agreements", "precision",
        "check"}`: agreements maps each precision checked (f32, and bf16 on a
        CPU with bf16 units) to the share of pixels whose argmax matches
        Keras', precision is the one recorded in the IR (bf16 where its
        agreement is at least `BF16_AGREEMENT`), agreement that one's share,
        and check the photos it was measured on (OpenVINO only; None, {},
        None and "" otherwise).

    Raises:
        UsageError: For a bad model, format or destination.
    """
    model_path, fmt = model, format
    _check_format(fmt, tta)
    model = with_tta(load_segmentation_model(model_path), tta)
    out = _destination(model_path, fmt, out, tta)
    t0 = time.perf_counter()
    agreements, check, precision = {}, "", None
    if fmt == "openvino":
        agreements, check, precision = _export_openvino(model, model_path, out)
    elif fmt == "keras":
        with io.atomic_file(out) as tmp:
            model.save(tmp)
    else:
        model.export(out, format="tf_saved_model", verbose=False)
    seconds = time.perf_counter() - t0
    size = int(model.input_shape[1])
    averaging = "" if tta == "none" else f", test-time averaging: {tta}"
    line = f"Exported {model_path} ({size}x{size}, {uf.NUM_CLASSES} classes{averaging}) as {fmt} to {out} in {seconds:.1f} s"
    if agreements:
        shares = ", ".join(f"{p} {100 * v:.2f}% of pixels" for p, v in agreements.items())
        line += f"; same class as Keras: {shares} ({check}); runs in {precision}"
    print(
        line + (f"\nUse it: python main.py predict --model {out} INPUT..." if fmt != "tf_saved_model" else "")
    )
    return {
        "path": out,
        "format": fmt,
        "seconds": round(seconds, 1),
        "agreement": agreements.get(precision) if agreements else None,
        "agreements": agreements,
        "precision": precision,
        "check": check,
    }
