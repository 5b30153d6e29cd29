"""What the throughput benchmarks share: FLOP counts, a native PyTorch UNet, a matmul peak.

`torch_unet` builds, in plain PyTorch, the network of
`segmentation_model.build_unet`: the same widths, the same conv blocks
(plain or residual, batch norm without conv bias), 2x2 max pooling, 2x2
transposed convolutions and concatenated skips, a 1x1 head. It is the peer
a user could train instead of this project's Keras model.
"""

from __future__ import annotations

import time


def conv_flops(model) -> float:
    """Forward FLOPs per image of a Keras model's convolutions (2 per multiply-add).

    Args:
        model: A built Keras model.

    Returns:
        FLOPs of one image's forward pass through its `Conv2D` and
        `Conv2DTranspose` layers.
    """
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "Conv2DTranspose"):
            continue
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        # A transposed convolution does its multiply-adds per *input* pixel.
        h, w = layer.input.shape[1:3] if kind == "Conv2DTranspose" else layer.output.shape[1:3]
        total += 2.0 * h * w * kh * kw * cin * layer.filters
    return total


def torch_unet(widths, num_classes: int = 19, residual: bool = False):
    """A PyTorch UNet with the layers of `build_unet(widths=..., residual=...)`.

    Args:
        widths: Encoder widths, one per level; the bottleneck is twice the last.
        num_classes: Output channels of the head.
        residual: ResNet basic blocks (a 1x1 projection where widths differ).

    Returns:
        A `torch.nn.Module` mapping float `(B, 3, H, W)` in 0..255 to logits
        `(B, num_classes, H, W)`.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.c1, self.b1 = (
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, momentum=0.1),
            )
            self.c2, self.b2 = (
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, momentum=0.1),
            )
            self.proj = None
            if residual and cin != cout:
                self.proj = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=0.1)
                )
            self.residual = residual

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            if self.residual:
                y = y + (x if self.proj is None else self.proj(x))
            return torch.relu(y)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [3, *widths]
            self.down = nn.ModuleList(Block(chans[i], chans[i + 1]) for i in range(len(widths)))
            self.mid = Block(widths[-1], 2 * widths[-1])
            ups = [2 * widths[-1], *widths[::-1]]
            self.up = nn.ModuleList(nn.ConvTranspose2d(ups[i], ups[i + 1], 2, 2) for i in range(len(widths)))
            self.dec = nn.ModuleList(Block(2 * ups[i + 1], ups[i + 1]) for i in range(len(widths)))
            self.head = nn.Conv2d(widths[0], num_classes, 1)

        def forward(self, x):
            x = x / 127.5 - 1
            skips = []
            for d in self.down:
                x = d(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.mid(x)
            for up, dec, s in zip(self.up, self.dec, skips[::-1], strict=True):
                x = dec(torch.cat([up(x), s], 1))
            return self.head(x)

    return UNet()


def torch_matmul_peak(dtype_name: str, n: int, device: str = "cpu", reps: int = 10) -> float:
    """Measured FLOP/s of an n x n x n matrix product in PyTorch.

    The side grows from 256 up to `n` while a product stays short, and
    fewer products are timed where they are slow (bf16 on a CPU without
    bf16 units runs far below its float32 rate), so the measurement takes
    seconds.

    Args:
        dtype_name: `float32`, `float16` or `bfloat16`.
        n: Largest side of the square matrices.
        device: `cpu` or `cuda`.
        reps: Most products per timing; the best of three timings.

    Returns:
        FLOP/s.
    """
    import torch

    dtype = getattr(torch, dtype_name)

    def timed(a, b, count):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(count):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    size = min(n, 256)
    while True:
        a = torch.full((size, size), 0.01, dtype=dtype, device=device)
        b = torch.full((size, size), 0.01, dtype=dtype, device=device)
        timed(a, b, 1)  # warm-up
        one = timed(a, b, 1)
        if size * 2 > n or 8 * one > 0.5:  # doubling the side costs 8x
            break
        size *= 2
    count = max(1, min(reps, int(0.5 / max(one, 1e-9))))
    best = min(timed(a, b, count) for _ in range(3))
    return 2.0 * size**3 * count / best


def timed_fit(model, x, y, w, batch: int, epochs: int) -> list[float]:
    """Seconds of each epoch of `model.fit` (the first includes compilation).

    Args:
        model: A compiled Keras model.
        x: Inputs; y: one-hot targets; w: per-pixel sample weights.
        batch: Batch size.
        epochs: Epochs to run, unshuffled.

    Returns:
        One wall time per epoch.
    """
    import keras

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    model.fit(
        x, y, sample_weight=w, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[Timer()]
    )
    return times
