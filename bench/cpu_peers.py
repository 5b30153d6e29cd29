"""The project's CPU training step against its peers, and against the CPU's matmul peak.

In one run, each row in a process of its own (Keras picks its backend at
import), in alternating rounds so the host's drift touches every row:

- the project's step as `main.py` trains it on this machine (the photos at
  the pairs' 256x256, area-resized inside; its loss, class weights,
  per-pixel sample weights, accuracy and mean IoU metrics, the precision and
  XLA setting `--precision auto` and `--xla auto` pick), under Keras on
  TensorFlow, JAX and PyTorch;
- the same network with cross-entropy alone (with and without the metrics),
  the cost of the project's additions;
- a native PyTorch UNet of identical widths and blocks (`peer_models`):
  channels_last, bf16 autocast where the CPU has bf16 units, eager and
  under `torch.compile`;
- the machine's matmul peak in float32 and bfloat16 (PyTorch, 2048^3).

Every row trains on the same random batches (the step's cost does not
depend on the pixels). FLOPs are counted from the convolutions, training
as 3x the forward pass.

    python bench/cpu_peers.py                   # this machine's defaults
    python bench/cpu_peers.py --rows tf-project,native-compiled --rounds 3
    python bench/cpu_peers.py --tiny            # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from cityscapes_unet.startup import load_backend  # noqa: E402

#: name -> (Keras backend or None for native PyTorch, what is timed)
ROWS = {
    "tf-project": ("tensorflow", "project"),
    "tf-ce-metrics": ("tensorflow", "ce_metrics"),
    "tf-ce": ("tensorflow", "ce"),
    "jax-project": ("jax", "project"),
    "jax-ce": ("jax", "ce"),
    "torch-project": ("torch", "project"),
    "torch-ce": ("torch", "ce"),
    "native-eager": (None, "native"),
    "native-compiled": (None, "native_compiled"),
}
WHAT = {
    "project": "the project's step (loss, weights, metrics)",
    "ce_metrics": "cross-entropy and the metrics",
    "ce": "cross-entropy only",
    "native": "native PyTorch UNet, eager",
    "native_compiled": "native PyTorch UNet, torch.compile",
}


def random_batches(n: int, size: int, seed: int = 0, source: int | None = None):
    """Random uint8 photos `(n, source, source, 3)` and trainIds `(n, size, size)`, a few ignored."""
    rng = np.random.default_rng(seed)
    photos = rng.integers(0, 256, (n, source or size, source or size, 3), np.uint8)
    ids = rng.integers(0, 19, (n, size, size), np.uint8)
    ids[:, :4] = 255
    return photos, ids


def model_inputs(photos, ids):
    """`(x, y, w)` as the pipelines hand them: uint8 photos, one-hot masks, weights."""
    from cityscapes_unet.data.decode import targets

    y, w = targets(ids)
    return photos, y.astype(np.uint8), w.astype(np.uint8)


def keras_rate(kind: str, spec: dict) -> dict:
    """Training images/s of the project's network in Keras on the current backend.

    Args:
        kind: `project` (`train.run.compile_for_size`: the photos at the
            data's size, resized inside), `ce_metrics` or `ce` (at the
            network's size).
        spec: Settings from `settings` (sizes, policy, steps).

    Returns:
        `{"rate": images/s (best timed epoch), "precision": policy, "xla": ...}`.
    """
    import keras

    from cityscapes_unet.settings import TrainConfig
    from cityscapes_unet.train.config import Machine, resolve_xla
    from cityscapes_unet.train.losses import class_weights
    from cityscapes_unet.train.run import build_network, compile_for_size, make_optimizer

    keras.mixed_precision.set_global_policy(spec["policy"])
    keras.utils.set_random_seed(0)
    cfg = TrainConfig(
        image_size=spec["size"], base_filters=spec["filters"], batch_size=spec["batch"], block=spec["block"]
    )
    jit = resolve_xla(spec.get("xla", "auto"), Machine(False, spec["bf16_units"]), spec["policy"])
    source = spec["size"]
    if kind == "project":
        weights = class_weights(np.linspace(1.0, 50.0, 19))
        source = spec["source"]
        optimizer = make_optimizer(cfg, spec["steps"])
        model = compile_for_size(build_network(cfg), optimizer, cfg, weights, source, spec["size"], jit)
    else:
        model = build_network(cfg)
        metrics = None
        if kind == "ce_metrics":
            metrics = [keras.metrics.CategoricalAccuracy(), keras.metrics.OneHotMeanIoU(num_classes=19)]
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.CategoricalCrossentropy(),
            weighted_metrics=metrics,
            jit_compile=jit,
        )
    n = spec["batch"] * spec["steps"]
    x, y, w = model_inputs(*random_batches(n, spec["size"], source=source))
    from peer_models import timed_fit

    times = timed_fit(model, x, y, w, spec["batch"], 1 + spec["timed"])
    return {"rate": n / min(times[1:]), "precision": spec["policy"], "xla": str(jit)}


def native_rate(compiled: bool, spec: dict) -> dict:
    """Training images/s of the native PyTorch UNet (Adam, cross-entropy ignoring void).

    Args:
        compiled: Wrap the model in `torch.compile`.
        spec: Settings from `settings`.

    Returns:
        `{"rate": images/s (best timed epoch), "precision": ...}`.
    """
    import torch
    from peer_models import torch_unet

    torch.manual_seed(0)
    widths = tuple(spec["filters"] * 2**i for i in range(4))
    model = torch_unet(widths, residual=spec["block"] == "residual").to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    photos, ids = random_batches(spec["batch"] * spec["steps"], spec["size"])
    x_all = torch.from_numpy(photos).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
    y_all = torch.from_numpy(ids.astype(np.int64))
    net = torch.compile(model) if compiled else model
    bf16 = spec["bf16_units"]

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    b = spec["batch"]
    times = []
    for _ in range(1 + spec["timed"]):
        t0 = time.perf_counter()
        for i in range(spec["steps"]):
            step(x_all[i * b : (i + 1) * b], y_all[i * b : (i + 1) * b])
        times.append(time.perf_counter() - t0)
    return {"rate": b * spec["steps"] / min(times[1:]), "precision": "bf16 autocast" if bf16 else "float32"}


def child(row: str, spec: dict) -> None:
    """Run one row in this process and print its result as a `RESULT {json}` line."""
    backend, kind = ROWS[row] if row in ROWS else (None, row)
    if kind == "matmul":
        from peer_models import torch_matmul_peak

        n = spec["matmul_n"]
        out = {name: torch_matmul_peak(name, n) for name in ("float32", "bfloat16")}
    elif backend is None:
        out = native_rate(kind == "native_compiled", spec)
    else:
        out = keras_rate(kind, spec)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(row: str, spec: dict, timeout: float) -> dict | None:
    """`child(row)` in a fresh process (under its Keras backend); None when it fails."""
    backend = ROWS.get(row, (None, None))[0] or "tensorflow"
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", row, "--spec", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {row}: over {timeout:.0f} s, left out", flush=True)
        return None
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    last = (r.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"  {row}: failed ({last[:200]})", flush=True)
    return None


def settings(args) -> dict:
    """This machine's CPU defaults (as `main.py` resolves them), with the flags' overrides."""
    from cityscapes_unet.settings import TrainConfig
    from cityscapes_unet.train.config import Machine, cpu_has_bf16_matmul, resolve_config

    cfg, policy, _ = resolve_config(TrainConfig(), Machine(False, cpu_has_bf16_matmul()))
    spec = {
        "size": args.image_size or cfg.image_size,
        "source": args.source_size,
        "filters": args.base_filters or cfg.base_filters,
        "block": args.block or cfg.block,
        "batch": args.batch_size or cfg.batch_size,
        "policy": policy,
        "bf16_units": cpu_has_bf16_matmul(),
        "steps": args.steps,
        "timed": 2,
        "matmul_n": 2048,
        "xla": args.xla,
    }
    if args.tiny:
        spec.update(size=32, source=64, filters=4, batch=2, steps=2, timed=1, matmul_n=128)
    return spec


def train_flops(spec: dict) -> float:
    """Training FLOPs per image of the network of `spec` (3x its convolutions' forward pass)."""
    from peer_models import conv_flops

    from segmentation_model import build_unet, widths_from_base

    model = build_unet(
        spec["size"], 19, widths_from_base(spec["filters"]), residual=spec["block"] == "residual"
    )
    return 3 * conv_flops(model)


def peak_share(precision: str, rate: float, flops: float, peaks: dict) -> float | None:
    """Share of the matmul peak of the row's compute type that `rate` images/s reach.

    Args:
        precision: The row's precision (`mixed_bfloat16`, `bf16 autocast`, `float32`).
        rate: Training images/s.
        flops: Training FLOPs per image.
        peaks: `{"float32": FLOP/s, "bfloat16": FLOP/s}` (either may be missing).

    Returns:
        The share (1.0 is the peak), or None without that peak.
    """
    kind = "bfloat16" if "bf16" in precision or "bfloat16" in precision else "float32"
    peak = peaks.get(kind)
    return flops * rate / peak if peak else None


def print_table(rows: list[str], results: dict, peaks: dict, flops: float) -> None:
    """One line per row: rate of each round, the best, against the native peer, share of the peak."""
    best = {r: max(x["rate"] for x in results[r]) for r in rows if results[r]}
    native = max((best[r] for r in best if r.startswith("native")), default=None)
    print(
        f"\n{'row':16s} {'what':44s} {'precision':16s} {'img/s by round':>18s} {'best':>7s} {'vs native':>9s} {'peak':>6s}"
    )
    for r in rows:
        if not results[r]:
            print(f"{r:16s} {WHAT[ROWS[r][1]]:44s} (failed)")
            continue
        prec = results[r][0]["precision"]
        rounds = " / ".join(f"{x['rate']:.1f}" for x in results[r])
        vs = f"{best[r] / native:.2f}x" if native else "-"
        share = peak_share(prec, best[r], flops, peaks)
        share = f"{100 * share:.0f}%" if share is not None else "-"
        print(f"{r:16s} {WHAT[ROWS[r][1]]:44s} {prec:16s} {rounds:>18s} {best[r]:7.1f} {vs:>9s} {share:>6s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of every row")
    p.add_argument("--steps", type=int, default=12, help="training steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: this machine's)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: this machine's)")
    p.add_argument("--source-size", type=int, default=256, help="side of the photos the project's rows take")
    p.add_argument("--base-filters", type=int, default=None, help="UNet base width (default: this machine's)")
    p.add_argument(
        "--block", choices=("plain", "residual"), default=None, help="conv blocks (default: this machine's)"
    )
    p.add_argument("--xla", choices=("auto", "on", "off"), default="auto", help="XLA for the Keras rows")
    p.add_argument("--timeout", type=float, default=600, help="seconds one row may take")
    p.add_argument("--tiny", action="store_true", help="smoke run: 32x32, 4 filters, one round")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, json.loads(args.spec))
    load_backend()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: --rows: unknown {', '.join(unknown)} (known: {', '.join(ROWS)})")
    spec = settings(args)
    rounds = 1 if args.tiny else args.rounds
    flops = train_flops(spec)
    print(
        f"UNet {spec['size']}x{spec['size']}, base {spec['filters']} filters, {spec['block']} blocks, "
        f"batch {spec['batch']}; project precision {spec['policy']}, --xla {spec['xla']}; "
        f"bf16 units: {spec['bf16_units']}; "
        f"{flops / 1e9:.2f} GFLOP per training image; {os.cpu_count()} CPUs"
    )
    peaks = run_child("matmul", spec, args.timeout) or {}
    for name, v in peaks.items():
        print(f"matmul peak {name:9s} {v / 1e9:8.1f} GFLOP/s (PyTorch, side up to {spec['matmul_n']})")
    results = {r: [] for r in rows}
    for k in range(rounds):
        for r in rows:
            out = run_child(r, spec, args.timeout)
            if out:
                results[r].append(out)
                print(f"  round {k + 1} {r:16s} {out['rate']:7.1f} img/s", flush=True)
    print_table(rows, results, peaks, flops)


if __name__ == "__main__":
    main()
