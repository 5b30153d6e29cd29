"""A quiet start on machines without a GPU: TensorFlow's CUDA probe, unprinted.

TensorFlow writes its start-up lines (the CUDA probe, oneDNN and CPU-feature
notes) from C++ before its logging is set up, so `TF_CPP_MIN_LOG_LEVEL`
cannot hide them; one of them is an error line (`failed call to cuInit`)
that means nothing on a CPU machine. `load_backend` holds standard error
while Keras loads and probes for GPUs, then passes on every other line.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

#: Start-up lines that carry no news on a machine without a GPU.
PROBE_LINES = (
    "All log messages before absl::InitializeLog",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "cuda_platform.cc",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)


def has_gpu_device() -> bool:
    """Whether an NVIDIA device node exists (then the probe's lines matter)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def keep_line(line: str) -> bool:
    """Whether a start-up line of standard error is worth showing."""
    return not any(p in line for p in PROBE_LINES)


def load_backend() -> None:
    """Import Keras (and probe TensorFlow's GPUs) with the probe's lines left out.

    On a machine with an NVIDIA device, or with `CITYSCAPES_VERBOSE_START=1`,
    nothing is held back. Every line that is not one of `PROBE_LINES` is
    written to standard error once loading ends, errors included.
    """
    if has_gpu_device() or os.environ.get("CITYSCAPES_VERBOSE_START") == "1":
        import keras  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # the probe, while held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(True) if keep_line(line)))
            sys.stderr.flush()
