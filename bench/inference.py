"""CPU inference: Keras against the OpenVINO export, latency and throughput.

For each model: milliseconds per 256x256 (or the model's size) photo at
batch 1 (median of repeated calls) and images per second at batch 16,
through `keras.Model.predict_on_batch` and through the OpenVINO IR that
`python main.py export` writes, compiled in f32 and, on a CPU with bf16
units, in bf16; then the share of pixels whose argmax agrees with Keras', on
real validation photos. Ratios last.

    python bench/inference.py --model output/unet_model.keras \
        --data-dir ../shared/data/cityscapes_pairs/train

`--model` is a trained model (its agreement is the meaningful one); the
classic 64-filter UNet is added untrained (speed only) unless `--no-classic`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from peer_models import conv_flops  # noqa: E402

import utils_func as uf  # noqa: E402
from cityscapes_unet.startup import load_backend  # noqa: E402


def latency_ms(fn, x: np.ndarray, repeats: int) -> float:
    """Median milliseconds of `fn(x)` after two warm-up calls."""
    fn(x)
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def throughput(fn, x: np.ndarray, repeats: int) -> float:
    """Images per second of `fn(x)` (best of `repeats` after a warm-up)."""
    fn(x)
    best = min(_time(fn, x) for _ in range(repeats))
    return len(x) / best


def _time(fn, x):
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def photo_flops(model) -> tuple[float, list[int]]:
    """Forward FLOPs of one photo through a model's convolutions, and the sizes its network runs at.

    A saved model runs its network (a nested functional model) once per
    test-time view; the input shape of each call is in the model's config.

    Args:
        model: A Keras model, plain or wrapped around a nested network.

    Returns:
        `(flops, sizes)`: FLOPs per photo (2 per multiply-add) and the side
        of every call of a nested network (empty for a plain model).
    """
    import keras

    from cityscapes_unet.infer.saved_model import fixed_size_copy

    total, sizes = conv_flops(model), []
    for layer in model.get_config()["layers"]:
        inner = model.get_layer(layer["name"])
        if isinstance(inner, keras.Model):
            calls = [node["args"][0]["config"]["shape"][1] for node in layer["inbound_nodes"]]
            total += sum(conv_flops(fixed_size_copy(inner, s)) * calls.count(s) for s in set(calls))
            sizes += calls
    return total, sizes


def matmul_peaks() -> dict:
    """The CPU's measured matmul FLOP/s by precision (`f32`, `bf16`); empty without PyTorch."""
    if importlib.util.find_spec("torch") is None:
        return {}
    from peer_models import torch_matmul_peak

    return {"f32": torch_matmul_peak("float32", 2048), "bf16": torch_matmul_peak("bfloat16", 2048)}


def real_photos(data_dir: str, size: int, count: int) -> np.ndarray:
    """The left halves of the last `count` pairs in `data_dir`, resized."""
    from cityscapes_unet.data.files import list_images
    from cityscapes_unet.io import read_photo, split_pair
    from cityscapes_unet.resize import area_resize

    files = list_images(data_dir)[-count:]
    return np.stack([area_resize(split_pair(read_photo(f))[0], size, size) for f in files])


def measure(name: str, model, photos: np.ndarray, repeats: int, workdir: str) -> dict:
    """Time one Keras model and its OpenVINO export (f32, and bf16 where the CPU has it); compare argmax."""
    from cityscapes_unet.infer.engines import openvino_engine, precisions_here

    xml = os.path.join(workdir, f"{name.split()[0]}.xml")
    model.export(xml, format="openvino", verbose=False)
    engines = {"keras": lambda x: np.asarray(model.predict_on_batch(x))}
    for precision in precisions_here():
        engines[f"openvino {precision}"] = openvino_engine(xml, "bench", precision).predict
    row = {"name": name, "engines": list(engines)}
    for engine, fn in engines.items():
        row[f"{engine}_ms"] = latency_ms(fn, photos[:1], repeats)
        row[f"{engine}_ips"] = throughput(fn, photos[:16], max(2, repeats // 5))
    ref = _classes(engines["keras"], photos)
    for engine in row["engines"][1:]:
        row[f"{engine}_agreement"] = float((ref == _classes(engines[engine], photos)).mean())
    return row


def _classes(fn, photos: np.ndarray) -> np.ndarray:
    """Argmax classes of `fn` over `photos`, 16 at a time."""
    return np.concatenate([fn(photos[i : i + 16]).argmax(-1) for i in range(0, len(photos), 16)])


def predict_run(model: str, files: list[str], engine: str, out: str) -> tuple[float, float]:
    """Wall seconds and peak resident MB of `main.py predict --pairs` in a fresh process."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import runpy, sys\n"
        f"sys.argv = {['main.py', 'predict', '--pairs', '--engine', engine, '--model', model, '--out', out, *files]!r}\n"
        "try:\n"
        f"    runpy.run_path({os.path.join(root, 'main.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
        # across fork and exec, so it would report this (larger) process.
        "print('PEAK_KB', [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])\n"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    kb = int(r.stdout.split("PEAK_KB")[1].split()[0])
    return seconds, kb / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="output/unet_model.keras", help="trained .keras model")
    p.add_argument(
        "--data-dir", default="../shared/data/cityscapes_pairs/train", help="pair JPEGs for photos"
    )
    p.add_argument("--photos", type=int, default=64, help="real photos for the agreement check")
    p.add_argument("--repeats", type=int, default=20, help="timed calls at batch 1")
    p.add_argument("--no-classic", action="store_true", help="skip the untrained classic 64-filter UNet")
    p.add_argument(
        "--predict-files",
        type=int,
        default=100,
        help="pairs for the whole predict command (time, memory); 0: skip",
    )
    args = p.parse_args()

    load_backend()  # without TensorFlow's CUDA-probe lines on a CPU machine
    import keras

    from cityscapes_unet.train.config import cpu_has_bf16_matmul
    from segmentation_model import build_unet

    models = []
    trained = keras.models.load_model(args.model, compile=False)
    models.append((f"{os.path.basename(args.model)} ({trained.input_shape[1]}, trained)", trained))
    if not args.no_classic:
        keras.utils.set_random_seed(0)
        models.append(("classic UNet (256, 64 filters, untrained)", build_unet(256, uf.NUM_CLASSES)))

    print(f"CPU: {os.cpu_count()} cores, bf16 matrix units: {cpu_has_bf16_matmul()}")
    peaks = matmul_peaks()
    for precision, flops_s in peaks.items():
        print(f"matmul peak {precision:4s} {flops_s / 1e9:8.1f} GFLOP/s (PyTorch, 2048^3)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models:
            flops, sizes = photo_flops(model)
            runs = f"; its network runs at {', '.join(map(str, sizes))}" if sizes else ""
            print(f"\n{name}: {flops / 1e9:.2f} GFLOP per photo in its convolutions{runs}")
            print(f"{'engine':13s} {'ms/img b1':>10s} {'img/s b16':>10s} {'GFLOP/s b1':>11s} {'of peak':>8s}")
            size = int(model.input_shape[1])
            photos = real_photos(args.data_dir, size, max(16, args.photos))
            row = measure(name, model, photos, args.repeats, tmp)
            rows.append(row)
            for engine in row["engines"]:
                rate = flops / (row[f"{engine}_ms"] / 1000)
                peak = peaks.get(engine.split()[-1] if " " in engine else "f32")
                share = f"{100 * rate / peak:7.0f}%" if peak else f"{'-':>8s}"
                print(
                    f"{engine:13s} {row[f'{engine}_ms']:10.1f} {row[f'{engine}_ips']:10.1f} "
                    f"{rate / 1e9:11.1f} {share}"
                )
    if args.predict_files:
        from cityscapes_unet.data.files import list_images
        from cityscapes_unet.infer.export import run_export

        files = list_images(args.data_dir)[-args.predict_files :]
        print(
            f"\n'main.py predict --pairs' on {len(files)} real pairs (fresh process each, writing all outputs)"
        )
        print(f"{'engine':9s} {'seconds':>8s} {'pairs/s':>8s} {'peak MB':>8s}")
        with tempfile.TemporaryDirectory() as tmp:
            xml = os.path.join(tmp, "model.xml")
            run_export(args.model, out=xml)  # records bf16 where it agrees well enough
            for engine, model in (("keras", args.model), ("openvino", xml)):
                sec, mb = predict_run(model, files, engine, os.path.join(tmp, engine))
                print(f"{engine:9s} {sec:8.1f} {len(files) / sec:8.1f} {mb:8.0f}")
    print()
    for row in rows:
        for engine in row["engines"][1:]:
            print(
                f"{row['name']}: {engine} {row['keras_ms'] / row[f'{engine}_ms']:.2f}x Keras at batch 1, "
                f"{row[f'{engine}_ips'] / row['keras_ips']:.2f}x at batch 16; "
                f"same argmax on {100 * row[f'{engine}_agreement']:.2f}% of pixels ({len(photos)} real photos)"
            )


if __name__ == "__main__":
    main()
