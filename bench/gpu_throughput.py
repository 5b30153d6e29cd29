"""GPU training throughput of the classic UNet by precision, with MFU and a PyTorch reference.

Runs the project's own Keras model (any backend; on a machine without
TensorFlow use KERAS_BACKEND=jax) on real pairs decoded by the NumPy
pipeline (`numpy_pipeline`, which imports no TensorFlow): float32,
mixed_float16 and mixed_bfloat16, XLA on. FLOPs are counted from
the model's convolutions; the peak is the GPU's own measured matmul rate.
In the same run, a PyTorch UNet of identical widths (AMP, channels_last,
torch.compile) when PyTorch and a GPU are there.

    KERAS_BACKEND=jax python bench/gpu_throughput.py --data-dir pairs/ --batch-size 32
    python bench/gpu_throughput.py --tiny          # smoke run on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from peer_models import conv_flops, timed_fit, torch_unet  # noqa: E402

import utils_func as uf  # noqa: E402

CLASSIC = (64, 128, 256, 512)


def load_pairs(data_dir: str | None, count: int, size: int, seed: int = 0):
    """Pairs for the timed runs: real ones from a folder, else random pixels.

    Args:
        data_dir: Folder of pair JPEGs, decoded by the NumPy pipeline (no
            TensorFlow); None for random pixels.
        count: Number of samples (the files are repeated when fewer).
        size: Side of the square model input.
        seed: Seed of the random pixels.

    Returns:
        `(photos, ids)`: uint8 `(count, size, size, 3)` and uint8
        `(count, size, size)` trainIds or IGNORE_ID.
    """
    if not data_dir:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (count, size, size, 3), np.uint8), rng.integers(
            0, 19, (count, size, size), np.uint8
        )
    from cityscapes_unet.data.files import list_images, pair_height
    from cityscapes_unet.data.numpy_pipeline import decode_files
    from cityscapes_unet.resize import area_resize, nearest_resize

    files = list_images(data_dir)[:count]
    if not files:
        sys.exit(f"error: --data-dir {data_dir}: no .jpg files")
    decoded = decode_files(files, pair_height(files[0]))
    photos = np.stack([area_resize(p, size, size) for p in decoded.photos]).round().astype(np.uint8)
    ids = nearest_resize(decoded.ids, size, size, axis=1)
    reps = -(-count // len(photos))
    return np.concatenate([photos] * reps)[:count], np.concatenate([ids] * reps)[:count]


def matmul_peak(dtype: str, n: int, reps: int = 10) -> float:
    """Measured FLOP/s of an n x n x n matrix product in `dtype` (keras.ops).

    Args:
        dtype: `float32`, `float16` or `bfloat16`.
        n: Side of the square matrices.
        reps: Products timed after one warm-up.

    Returns:
        FLOP/s.
    """
    from keras import ops

    a = ops.cast(ops.ones((n, n)), dtype) * 0.01
    b = ops.cast(ops.ones((n, n)), dtype) * 0.01

    def sync(t):
        return float(ops.convert_to_numpy(ops.cast(t[0, 0], "float32")))

    sync(ops.matmul(a, b))
    t0 = time.perf_counter()
    for _ in range(reps):
        c = ops.matmul(a, b)
    sync(c)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def keras_rate(photos, ids, size, widths, batch, policy, steps) -> float:
    """Training images/s of the project's UNet under `policy`, XLA on.

    Args:
        photos: uint8 `(N, S, S, 3)`, N at least `batch * steps`.
        ids: uint8 `(N, S, S)` trainIds or IGNORE_ID.
        size: `S`.
        widths: UNet widths per level.
        batch: Batch size.
        policy: Keras mixed-precision policy.
        steps: Steps per timed epoch.

    Returns:
        Images per second of the best epoch after the first (which compiles).
    """
    import keras

    from cityscapes_unet.data.decode import targets
    from segmentation_model import build_unet

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_unet(size, uf.NUM_CLASSES, widths)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(reduction="mean_with_sample_weight"),
        jit_compile=True,
    )
    n = batch * steps
    y, w = (t.astype(np.uint8) for t in targets(ids[:n]))
    times = timed_fit(model, photos[:n], y, w, batch, 3)
    keras.mixed_precision.set_global_policy("float32")
    return n / min(times[1:])  # the first epoch compiles


def torch_rate(photos, ids, size, widths, batch, steps, amp_dtype) -> float | None:
    """Training images/s of a PyTorch UNet of the same widths (AMP, channels_last, compiled).

    Args:
        photos: uint8 `(N, S, S, 3)`.
        ids: uint8 `(N, S, S)` trainIds or IGNORE_ID (255, ignored).
        size: `S`.
        widths: UNet widths per level.
        batch: Batch size.
        steps: Steps per timed epoch.
        amp_dtype: `torch.bfloat16` or `torch.float16`.

    Returns:
        Images per second of the best of two epochs after a warm-up, or
        None without PyTorch or a CUDA GPU.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    dev = torch.device("cuda")
    model = torch_unet(widths).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    x_all = (
        torch.from_numpy(photos)
        .to(dev)
        .permute(0, 3, 1, 2)
        .float()
        .contiguous(memory_format=torch.channels_last)
    )
    y_all = torch.from_numpy(ids.astype(np.int64)).to(dev)
    step_model = torch.compile(model)

    def step(x, y):
        with torch.autocast("cuda", dtype=amp_dtype):
            loss = nn.functional.cross_entropy(step_model(x).float(), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def epoch():
        for i in range(steps):
            step(x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch])
        torch.cuda.synchronize()

    epoch()
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        epoch()
        best = min(best, time.perf_counter() - t0)
    return steps * batch / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", default=None, help="folder of pair JPEGs (default: random pixels, for smoke runs)"
    )
    p.add_argument("--size", type=int, default=256, help="image side")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument(
        "--policies", default="float32,mixed_float16,mixed_bfloat16", help="comma-separated policies"
    )
    p.add_argument("--tiny", action="store_true", help="smoke run: 32x32, widths 4..32, batch 4, 3 steps")
    args = p.parse_args()

    import keras

    widths, size, batch, steps, n_mm = CLASSIC, args.size, args.batch_size, args.steps, 8192
    if args.tiny:
        widths, size, batch, steps, n_mm = (4, 8, 16, 32), 32, 4, 3, 256
    photos, ids = load_pairs(args.data_dir, batch * steps, size)
    from segmentation_model import build_unet

    flops = conv_flops(build_unet(size, 19, widths))
    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}; UNet widths {widths}, {size}x{size}, batch {batch}"
    )
    print(f"forward FLOPs per image (convolutions): {flops / 1e9:.2f} G; training counted as 3x")
    print(f"data: {'real pairs from ' + args.data_dir if args.data_dir else 'random pixels (smoke run)'}\n")

    peaks = {}
    for dtype in ("float32", "float16", "bfloat16"):
        peaks[dtype] = matmul_peak(dtype, n_mm)
        print(f"matmul peak {dtype:9s} {peaks[dtype] / 1e12:8.2f} TFLOP/s ({n_mm}^3)")
    print()
    rows = []
    for policy in args.policies.split(","):
        rate = keras_rate(photos, ids, size, widths, batch, policy, steps)
        peak = peaks["float32" if policy == "float32" else policy.split("_")[1]]
        rows.append((f"keras {policy}", rate, 3 * flops * rate / peak))
    try:
        import torch

        for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            rate = torch_rate(photos, ids, size, widths, batch, steps, dt)
            if rate is not None:
                rows.append((f"pytorch AMP {name} (compiled)", rate, 3 * flops * rate / peaks[name]))
    except ImportError:
        pass
    print(f"{'run':34s} {'img/s':>9s} {'MFU':>7s}")
    for name, rate, mfu in rows:
        print(f"{name:34s} {rate:9.1f} {100 * mfu:6.1f}%")
    rates = {name: rate for name, rate, _ in rows}
    print("\nratios")
    f32 = rates.get("keras float32")
    for name, rate in rates.items():
        if f32 and name != "keras float32" and name.startswith("keras"):
            print(f"  {name} / keras float32   {rate / f32:5.2f}x")
    best_keras = max((r for n, r in rates.items() if n.startswith("keras")), default=None)
    best_torch = max((r for n, r in rates.items() if n.startswith("pytorch")), default=None)
    if best_keras and best_torch:
        print(f"  best keras / best pytorch       {best_keras / best_torch:5.2f}x")


if __name__ == "__main__":
    main()
