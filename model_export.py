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

#: `--format` choices: what `model.export` writes, and the file suffix.
FORMATS = {"openvino": ".xml", "tf_saved_model": ""}
#: `--engine` choices of `predict`.
ENGINES = ("auto", "keras", "openvino")


def default_export_path(model_path: str, fmt: str) -> str:
    """Where `export` writes by default: beside the model, same stem.

    Args:
        model_path: The `.keras` file.
        fmt: One of `FORMATS`.

    Returns:
        `DIR/STEM.xml` for OpenVINO, `DIR/STEM_saved_model` for a SavedModel.
    """
    stem = os.path.splitext(model_path)[0]
    return stem + ".xml" if fmt == "openvino" else stem + "_saved_model"


def _require_openvino(flag: str):
    from training import UsageError

    try:
        import openvino
    except ImportError:
        raise UsageError(
            f"{flag}: OpenVINO is not installed (pip install -r requirements-optional.txt)"
        ) from None
    return openvino


class Engine:
    """A model behind one `predict` call: Keras or a compiled OpenVINO model.

    Attributes:
        name: `keras` or `openvino`.
        input_size: Side of the square input.
        path: The file it was loaded from.
    """

    def __init__(self, name: str, path: str, input_size: int, fn):
        self.name = name
        self.path = path
        self.input_size = input_size
        self._fn = fn

    def predict(self, photos: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of photos.

        Args:
            photos: float32 `(N, S, S, 3)` RGB in 0..255 at `input_size`.

        Returns:
            float32 `(N, S, S, 19)`.
        """
        return np.asarray(self._fn(np.ascontiguousarray(photos, np.float32)), np.float32)


def _openvino_engine(xml: str, flag: str) -> Engine:
    from training import UsageError

    ov = _require_openvino(flag)
    try:
        # f32: on CPUs with bf16 units (AMX) OpenVINO would compute in bf16
        # by default, and the export would no longer give the model's
        # classes (3% of the pixels of a small test model differed).
        compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{flag} {xml}: not a usable OpenVINO model ({first[:200]})") from None
    shape = compiled.input(0).get_partial_shape()
    size = shape[1].get_length() if shape[1].is_static else None
    if size is None or len(shape) != 4 or shape[3].get_length() != 3:
        raise UsageError(f"{xml}: input {shape}, expected a square RGB input (batch, S, S, 3)")
    out = compiled.output(0)
    return Engine("openvino", xml, size, lambda x: compiled(x)[out])


def load_engine(model_path: str, engine: str = "auto") -> Engine:
    """Open a model for prediction.

    Args:
        model_path: A `.keras` file, or an exported `.xml` (OpenVINO IR).
        engine: `auto` (from the file's suffix), `keras` or `openvino`. With
            `openvino` and a `.keras` path, the IR exported beside it is used;
            it must be newer than the `.keras` file.

    Returns:
        An `Engine`.

    Raises:
        UsageError: For a missing, stale or unusable model, or a missing
            runtime.
    """
    from evaluation import load_segmentation_model
    from training import UsageError

    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: must be one of {', '.join(ENGINES)}")
    is_xml = model_path.endswith(".xml")
    if engine == "auto":
        engine = "openvino" if is_xml else "keras"
    if engine == "keras":
        if is_xml:
            raise UsageError(f"--model {model_path}: an OpenVINO model; use --engine openvino (or auto)")
        model = load_segmentation_model(model_path)
        return Engine(
            "keras",
            model_path,
            int(model.input_shape[1]),
            lambda x: model.predict(x, batch_size=max(1, len(x)), verbose=0),
        )
    xml = model_path if is_xml else default_export_path(model_path, "openvino")
    if not os.path.isfile(xml):
        if is_xml:
            raise UsageError(f"--model {model_path}: file not found")
        raise UsageError(
            f"--engine openvino: no {xml}; run 'python main.py export --model {model_path}' first"
        )
    if not is_xml and os.path.isfile(model_path) and os.path.getmtime(xml) < os.path.getmtime(model_path):
        raise UsageError(
            f"--engine openvino: {xml} is older than {model_path}; "
            f"run 'python main.py export --model {model_path}' again"
        )
    return _openvino_engine(xml, "--engine openvino")


def check_photos(model_path: str, size: int, count: int = 8) -> tuple[np.ndarray, str]:
    """Photos to compare an export with its Keras model.

    The run's validation pairs when its `config.json` and data are still
    there, else smooth random images (a weaker check, said so).

    Returns:
        `(photos, source)`: float32 `(count, size, size, 3)` and a description.
    """
    from prediction import read_photo, resize_photo, split_pair

    try:
        from evaluation import resolve_eval_files

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

    from evaluation import load_segmentation_model
    from training import UsageError

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
