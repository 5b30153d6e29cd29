"""Input pipeline speed: the project's tf.data pipeline against a common baseline.

Measures, on the same files in one run:
  * the tf.data pipeline's first pass (read, JPEG decode, label colours ->
    class ids, labels picked at the network's size, one-hot masks), then
    its cached passes (photos stay at their own size: the model resizes them);
  * label decoding alone: the colour table against the palette search;
  * a baseline in the style of common Kaggle loaders: a Python generator,
    cv2 decode, nearest palette colour per pixel in NumPy, one-hot with
    np.eye, float32;
and the bytes per sample handed to the model.

    python bench/pipeline.py --data-dir ../shared/data/cityscapes_pairs/train
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import utils_func as uf  # noqa: E402


def baseline_batches(files: list[str], size: int, batch: int, palette: np.ndarray, train_ids: np.ndarray):
    """The common style: generator, cv2, per-pixel nearest colour in NumPy.

    Args:
        files: Pair files.
        size: Image side handed to the model.
        batch: Batch size.
        palette: float32 `(K, 3)` palette colours.
        train_ids: uint8 `(K,)` trainId of each palette colour.

    Yields:
        `(x, y)`: float32 photos `(B, size, size, 3)` and float32 one-hot
        masks `(B, size, size, 19)`.
    """
    import cv2

    xs, ys = [], []
    for f in files:
        img = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
        w = img.shape[1] // 2
        photo = cv2.resize(img[:, :w], (size, size)).astype(np.float32)
        label = cv2.resize(img[:, w:], (size, size), interpolation=cv2.INTER_NEAREST)
        pixels = label.reshape(-1, 1, 3).astype(np.float32)
        nearest = np.linalg.norm(pixels - palette[None], axis=2).argmin(1)
        ids = train_ids[nearest].reshape(size, size)
        onehot = np.eye(20, dtype=np.float32)[np.minimum(ids, 19)][..., :19]
        xs.append(photo)
        ys.append(onehot)
        if len(xs) == batch:
            yield np.stack(xs), np.stack(ys)
            xs, ys = [], []
    if xs:
        yield np.stack(xs), np.stack(ys)


def timed(iterable) -> tuple[int, float, int]:
    """Images, seconds and bytes per sample of one pass over batches.

    Args:
        iterable: Batches, each a tuple of arrays or tensors sharing their
            first (batch) dimension.

    Returns:
        `(images, seconds, bytes per sample)`.
    """
    t0 = time.perf_counter()
    n, per_sample = 0, 0
    for batch in iterable:
        arrays = [np.asarray(t) for t in batch]
        b = arrays[0].shape[0]
        n += b
        per_sample = sum(a.nbytes for a in arrays) // b
    return n, time.perf_counter() - t0, per_sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/cityscapes_pairs/train", help="folder of pair JPEGs")
    p.add_argument(
        "--size", type=int, default=256, help="side of the labels handed to the model (the network's)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="batch size")
    p.add_argument("--limit", type=int, default=None, help="use the first N files (default: all)")
    p.add_argument("--baseline-files", type=int, default=300, help="files the (slow) baseline decodes")
    p.add_argument("--cached-passes", type=int, default=3, help="passes over the cache")
    p.add_argument(
        "--label-files", type=int, default=200, help="labels timed for the label-decoding comparison"
    )
    args = p.parse_args()

    from cityscapes_unet.startup import load_backend

    load_backend()  # without TensorFlow's CUDA-probe lines on a CPU machine
    import tensorflow as tf

    from cityscapes_unet.data.files import list_images, pair_height
    from cityscapes_unet.data.tf_pipeline import decoded_dataset, make_dataset

    files = list_images(args.data_dir)[: args.limit]
    if not files:
        sys.exit(f"error: --data-dir {args.data_dir}: no .jpg files")
    cores = os.cpu_count() or 1
    print(
        f"{len(files)} files from {args.data_dir}, {args.size}x{args.size}, batch {args.batch_size}, {cores} cores"
    )
    print(f"TensorFlow {tf.__version__}\n")

    rows = []
    # First pass: everything from the JPEG files (the cache fills as it goes).
    source = pair_height(files[0])
    decoded = decoded_dataset(files, source)
    n, s, nbytes = timed(make_dataset(decoded, args.size, args.batch_size, training=False))
    rows.append(("tf.data first pass (decode, ids, one-hot)", n, s, nbytes))
    # Cached passes: the training pipeline as run_training builds it
    # (shuffle, flip, batch, one-hot, prefetch).
    train = make_dataset(decoded, args.size, args.batch_size, training=True, seed=0)
    best = None
    for _ in range(args.cached_passes):
        n, s, nbytes = timed(train)
        best = (n, s, nbytes) if best is None or s < best[1] else best
    rows.append((f"tf.data cached pass (best of {args.cached_passes})", *best))

    # Label decoding alone, both methods on the same label halves (already
    # in memory), alternating: the table against the palette search.
    from cityscapes_unet.data.tf_pipeline import tf_colors_to_ids

    pairs = [
        tf.io.decode_jpeg(tf.io.read_file(f), channels=3, dct_method="INTEGER_ACCURATE")
        for f in files[: args.label_files]
    ]
    labels = [pair[:, pair.shape[1] // 2 :] for pair in pairs]
    decoders = {m: tf.function(lambda x, m=m: tf_colors_to_ids(x, method=m)) for m in ("table", "search")}
    label_ms = {}
    for fn in decoders.values():
        fn(labels[0])  # trace
    for _ in range(2):
        for method, fn in decoders.items():
            t0 = time.perf_counter()
            for label in labels:
                fn(label)
            ms = (time.perf_counter() - t0) / len(labels) * 1e3
            label_ms[method] = min(ms, label_ms.get(method, ms))

    palette, ids = uf.decode_palette()
    base_files = files[: args.baseline_files]
    n, s, nbytes = timed(
        baseline_batches(base_files, args.size, args.batch_size, palette.astype(np.float32), ids)
    )
    rows.append((f"baseline: generator + cv2 + NumPy nearest colour ({len(base_files)} files)", n, s, nbytes))

    print(
        f"{'pipeline':62s} {'images':>7s} {'seconds':>8s} {'img/s':>8s} {'img/s/core':>10s} {'MB/sample':>9s}"
    )
    for name, n, s, nbytes in rows:
        print(f"{name:62s} {n:7d} {s:8.2f} {n / s:8.1f} {n / s / cores:10.1f} {nbytes / 1e6:9.3f}")
    first_rate = rows[0][1] / rows[0][2]
    cached_rate = rows[1][1] / rows[1][2]
    base_rate = rows[2][1] / rows[2][2]
    cache_mb = len(files) * (source * source * 4) / 1e6
    print(f"\ncache: {cache_mb:.0f} MB for {len(files)} pairs (uint8 photo + uint8 ids, {source}x{source})")
    print(f"one-hot float32 would be {args.size * args.size * 19 * 4 / 1e6:.2f} MB per sample")
    print("\nratios")
    print(f"  first pass / baseline   {first_rate / base_rate:6.1f}x")
    print(f"  cached pass / baseline  {cached_rate / base_rate:6.1f}x")
    print(f"  cached / first pass     {cached_rate / first_rate:6.1f}x")
    print(
        f"\nlabel decoding, one {labels[0].shape[0]}x{labels[0].shape[1]} label, best of 2 over {len(labels)} labels: "
        f"table {label_ms['table']:.2f} ms, palette search {label_ms['search']:.2f} ms "
        f"({label_ms['search'] / label_ms['table']:.1f}x)"
    )


if __name__ == "__main__":
    main()
