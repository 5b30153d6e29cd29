"""Draw the model's architecture: Keras' diagram where Graphviz is there, else a block diagram."""

from __future__ import annotations

import os

import keras

from cityscapes_unet import io


def unet_levels(model: keras.Model) -> list[tuple[str, int, int]]:
    """The UNet's levels as `(name, channels, side)`, read from its layer names.

    Levels are the blocks `build_unet` names `enc1..encN`, `bottleneck` and
    `decN..dec1` (their first convolution, `<prefix>_conv1`).

    Args:
        model: A model from `segmentation_model.build_unet`.

    Returns:
        `[(prefix, filters, spatial side), ...]` from `enc1` down to the
        bottleneck and back up to `dec1`.

    Raises:
        ValueError: When the model has no such levels (e.g. a pretrained encoder).
    """
    names = {layer.name: layer for layer in model.layers}
    depth = sum(1 for n in names if n.startswith("enc") and n.endswith("_conv1"))
    prefixes = [f"enc{i}" for i in range(1, depth + 1)] + ["bottleneck"]
    prefixes += [f"dec{i}" for i in range(depth, 0, -1)]
    if not depth or any(f"{p}_conv1" not in names for p in prefixes):
        raise ValueError("not a UNet of enc/bottleneck/dec blocks")
    return [(p, names[f"{p}_conv1"].filters, names[f"{p}_conv1"].output.shape[1]) for p in prefixes]


def draw_unet(model: keras.Model, path: str) -> None:
    """Draw the UNet's levels, widths and skips as a PNG with matplotlib.

    Encoder levels go down the left, the bottleneck sits at the bottom and
    decoder levels come up the right; dashed arrows are the skip connections.

    Args:
        model: A model from `segmentation_model.build_unet`.
        path: The PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = unet_levels(model)
    depth = (len(levels) - 1) // 2
    fig, ax = plt.subplots(figsize=(8, 1.1 * (depth + 2)))
    boxes = {}
    for i, (name, filters, side) in enumerate(levels):
        col = 0 if i < depth else (1 if i == depth else 2)
        row = i if i <= depth else 2 * depth - i
        x, y = col * 3.0, -row * 1.2
        boxes[name] = (x, y)
        ax.add_patch(plt.Rectangle((x - 1, y - 0.4), 2, 0.8, fc="#dbe8f5", ec="#2c5d8a"))
        ax.text(x, y, f"{name}\n{filters} ch, {side}x{side}", ha="center", va="center", fontsize=9)
    arrow = {"arrowstyle": "->", "color": "#444"}
    order = [n for n, _, _ in levels]
    for a, b in zip(order, order[1:], strict=False):
        (xa, ya), (xb, yb) = boxes[a], boxes[b]
        down = yb < ya
        ax.annotate(
            "", (xb, yb + (0.4 if down else -0.4)), (xa, ya + (-0.4 if down else 0.4)), arrowprops=arrow
        )
    for i in range(1, depth + 1):
        (xa, ya), (xb, yb) = boxes[f"enc{i}"], boxes[f"dec{i}"]
        ax.annotate("", (xb - 1, yb), (xa + 1, ya), arrowprops={**arrow, "linestyle": "--"})
    ax.text(0, 0.75, f"input {model.input_shape[1]}x{model.input_shape[2]}", ha="center")
    ax.text(6, 0.75, f"head: {model.output_shape[-1]} classes", ha="center")
    ax.set_xlim(-1.5, 7.5)
    ax.set_ylim(-1.2 * depth - 0.8, 1.1)
    ax.axis("off")
    ax.set_title(f"{model.name}: down (max-pool) left, up (transposed conv) right, dashed: skips")
    try:
        with io.atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)


def get_model_arch(model: keras.Model, output_dir: str) -> str:
    """Write `model_arch.png`, and `model_arch.txt` when Graphviz is missing.

    `keras.utils.plot_model` draws every layer where the `pydot` package
    and the Graphviz `dot` program are installed. Without them the PNG is a
    block diagram of the UNet's levels (`draw_unet`) and `model_arch.txt`
    gets the layer summary; a model without such levels gets the text only.

    Args:
        model: A built Keras model.
        output_dir: Folder for the files.

    Returns:
        The path of the picture, or of the text when there is none.
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
    head = f"Layer summary ({reason}; install pydot and Graphviz for Keras' full diagram).\n\n"
    io.atomic_write_text(txt, head + "\n".join(lines) + "\n")
    try:
        draw_unet(model, png)
    except ValueError:
        return txt
    return png
