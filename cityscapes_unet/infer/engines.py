"""Models behind `predict`, `evaluate` and `export`: loading, checking, engines.

A `.keras` model runs through Keras on any backend; its OpenVINO export
(`export.run_export`) through the OpenVINO runtime, an optional dependency.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from types import ModuleType

import keras
import numpy as np

import utils_func as uf
from cityscapes_unet.errors import UsageError
from cityscapes_unet.infer.saved_model import with_tta
from cityscapes_unet.settings import ENGINES, FORMATS


def load_segmentation_model(path: str) -> keras.Model:
    """Load a `.keras` model for scoring, with a one-line error if unusable.

    Args:
        path: The `.keras` file.

    Returns:
        An uncompiled `keras.Model` `(batch, S, S, 3)` -> `(batch, H, W, 19)`.

    Raises:
        UsageError: For a missing, truncated or unsafe file, or a model of
            another shape.
    """
    if os.path.isdir(path):
        raise UsageError(f"--model {path}: is a folder; pass the .keras file in it")
    if not os.path.isfile(path):
        raise UsageError(f"--model {path}: file not found")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise UsageError(f"--model {path}: not a whole .keras file (truncated, or not a zip archive)")
    try:
        # safe_mode stays on: a Lambda layer's Python code never runs on load.
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - any load failure is the file's fault
        msg = str(e).strip()
        if "Lambda" in msg and "safe_mode" in msg:
            raise UsageError(
                f"--model {path}: refused: it holds a Lambda layer, Python code that would run on loading "
                "(Keras' safe mode stays on; a model trained here has none)"
            ) from None
        first = msg.splitlines()[0] if msg else type(e).__name__
        raise UsageError(f"--model {path}: not a loadable Keras model ({first[:200]})") from None
    if not isinstance(model.inputs, list) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(
            f"--model {path}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs, expected 1 and 1"
        )
    in_shape = model.input_shape
    if len(in_shape) != 4 or in_shape[-1] != 3 or in_shape[1] is None or in_shape[1] != in_shape[2]:
        raise UsageError(f"--model {path}: input {in_shape}, expected a square RGB input (batch, S, S, 3)")
    shape = model.output_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != uf.NUM_CLASSES:
        raise UsageError(f"--model {path}: outputs {shape}, expected (batch, H, W, {uf.NUM_CLASSES})")
    return model


def default_export_path(model_path: str, fmt: str, tta: str = "none") -> str:
    """Where `export` writes by default: beside the model, same stem.

    Args:
        model_path: The `.keras` file.
        fmt: One of `settings.FORMATS`.
        tta: The export's test-time averaging (`settings.TTAS`); any but
            `none` is added to the stem.

    Returns:
        `DIR/STEM.xml` for OpenVINO, `DIR/STEM_saved_model` for a
        SavedModel, `DIR/STEM_flip.keras` (say) for Keras.
    """
    stem = os.path.splitext(model_path)[0] + ("" if tta == "none" else f"_{tta}")
    return stem + "_saved_model" if fmt == "tf_saved_model" else stem + FORMATS[fmt]


def require_openvino(flag: str) -> ModuleType:
    """The `openvino` module, or a one-line error naming the flag that needs it.

    Args:
        flag: The command-line option that asked for OpenVINO.

    Returns:
        The imported `openvino` package.

    Raises:
        UsageError: If OpenVINO is not installed.
    """
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
        precision: What it computes in: `f32`, or `bf16` for an OpenVINO
            model compiled so.
    """

    def __init__(
        self,
        name: str,
        path: str,
        input_size: int,
        fn: Callable[[np.ndarray], np.ndarray],
        precision: str = "f32",
    ):
        self.name = name
        self.precision = precision
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


# Where `main.py export` records the inference precision it checked for the
# model (in the IR's rt_info): bf16 only where it matched Keras closely enough.
PRECISION_KEY = ["cityscapes_unet", "inference_precision"]
PRECISIONS = ("f32", "bf16")


def cpu_runs_bf16() -> bool:
    """Whether OpenVINO computes in bf16 on this CPU (AMX or AVX-512 BF16)."""
    ov = require_openvino("--engine openvino")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precisions_here() -> tuple[str, ...]:
    """The precisions OpenVINO computes in on this CPU: f32, and bf16 where it has the units."""
    return PRECISIONS if cpu_runs_bf16() else PRECISIONS[:1]


def recorded_precision(ov_model) -> str:
    """The precision `export` recorded in an IR's rt_info; f32 where none."""
    if ov_model.has_rt_info(PRECISION_KEY):
        value = ov_model.get_rt_info(PRECISION_KEY).astype(str)
        if value in PRECISIONS:
            return value
    return "f32"


def openvino_engine(xml: str, flag: str, precision: str | None = None) -> Engine:
    """Compile an OpenVINO IR for the CPU.

    Args:
        xml: The `.xml` file (its `.bin` beside it).
        flag: The option that named it, for error messages.
        precision: `f32` or `bf16` (OpenVINO falls back to f32 on a CPU
            without bf16 units); None: the one `export` recorded in the IR,
            else f32.

    Returns:
        An `Engine` named `openvino`.

    Raises:
        UsageError: If OpenVINO is missing or the file is not a usable model
            with a square RGB input.
    """
    ov = require_openvino(flag)
    try:
        core = ov.Core()
        ov_model = core.read_model(xml)
        # Explicit: on CPUs with bf16 units OpenVINO would pick bf16 by itself,
        # for every model, whether or not its classes survive it.
        hint = precision or recorded_precision(ov_model)
        compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{flag} {xml}: not a usable OpenVINO model ({first[:200]})") from None
    shape = compiled.input(0).get_partial_shape()
    size = shape[1].get_length() if shape[1].is_static else None
    if size is None or len(shape) != 4 or shape[3].get_length() != 3:
        raise UsageError(f"{xml}: input {shape}, expected a square RGB input (batch, S, S, 3)")
    out = compiled.output(0)
    return Engine("openvino", xml, size, lambda x: compiled(x)[out], hint)


def load_engine(model_path: str, engine: str = "auto", tta: str = "none") -> Engine:
    """Open a model for prediction.

    Args:
        model_path: A `.keras` file, or an exported `.xml` (OpenVINO IR).
        engine: `auto` (from the file's suffix), `keras` or `openvino`. With
            `openvino` and a `.keras` path, the IR exported beside it is used;
            it must be newer than the `.keras` file.
        tta: Test-time averaging for a Keras model (`saved_model.with_tta`);
            an export carries its own (`export --tta`).

    Returns:
        An `Engine`.

    Raises:
        UsageError: For a missing, stale or unusable model, or a missing
            runtime.
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: must be one of {', '.join(ENGINES)}")
    is_xml = model_path.endswith(".xml")
    if engine == "auto":
        engine = "openvino" if is_xml else "keras"
    if engine != "keras" and tta != "none":
        raise UsageError(
            f"--tta {tta}: an exported model runs what it was exported with; use 'export --tta {tta}'"
        )
    if engine == "keras":
        if is_xml:
            raise UsageError(f"--model {model_path}: an OpenVINO model; use --engine openvino (or auto)")
        model = with_tta(load_segmentation_model(model_path), tta)
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
    return openvino_engine(xml, "--engine openvino")
