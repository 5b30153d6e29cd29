"""Draw the model's architecture: a diagram when Graphviz is there, else text."""

from __future__ import annotations

import os

import keras

from cityscapes_unet import io


def get_model_arch(model: keras.Model, output_dir: str) -> str:
    """Write `model_arch.png` with `keras.utils.plot_model`, or a text summary.

    `plot_model` needs the `pydot` package and the Graphviz `dot` program.
    When either is missing, `model_arch.txt` gets the layer summary and a
    first line saying why there is no picture.

    Args:
        model: A built Keras model.
        output_dir: Folder for the file.

    Returns:
        The path of the file written.
    """
    png = os.path.join(output_dir, "model_arch.png")
    try:
        with io.atomic_file(png) as tmp:
            keras.utils.plot_model(model, to_file=tmp, show_shapes=True, show_layer_names=True, dpi=60)
            if not os.path.exists(tmp):
                raise OSError("plot_model wrote no file")
        return png
    except (ImportError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    lines: list[str] = []
    model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=110)
    txt = os.path.join(output_dir, "model_arch.txt")
    head = f"No model_arch.png: {reason} (install pydot and Graphviz for the diagram).\n\n"
    io.atomic_write_text(txt, head + "\n".join(lines) + "\n")
    return txt
