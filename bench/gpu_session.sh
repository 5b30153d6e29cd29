#!/usr/bin/env bash
# Every GPU measurement of the project, in one call on a machine that has
# JAX (and perhaps PyTorch) but no TensorFlow:
#   1. bench/gpu_throughput.py on real pairs: float32, mixed_float16,
#      mixed_bfloat16 (XLA on), the PyTorch reference, MFU against the
#      GPU's measured matmul peak;
#   2. a short training of the classic UNet at 256x256 under JAX with the
#      NumPy pipeline, validation mean IoU printed per epoch.
# Each step has its own time limit, so the whole run stays inside LIMIT_S.
#
# Prepare here:   python bench/gpu_pack.py --data-dir CITY_SPLIT --wheels
# Run there:      bash bench/gpu_session.sh [PACK] [OUT]      (PACK: .gpu)
# Smoke run here: TINY=1 bash bench/gpu_session.sh PACK OUT
set -uo pipefail

PACK=${1:-.gpu}
OUT=${2:-${OUT:-gpu_out}}
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-15}
THROUGHPUT_S=${THROUGHPUT_S:-210}
TRAIN_S=${TRAIN_S:-240}
POLICIES=${POLICIES:-float32,mixed_float16,mixed_bfloat16}
mkdir -p "$OUT"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU's memory by default; the PyTorch reference runs
# in the same process after it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}

# Keras travels as wheels where the machine has none.
if ! "$PYTHON" -c "import keras" 2>/dev/null; then
  if ! ls "$PACK"/whl/*.whl >/dev/null 2>&1; then
    echo "error: no keras here and no wheels in $PACK/whl (bench/gpu_pack.py --wheels)"
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site "$PACK"/whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -n "${TINY:-}" ]; then
  bench_args=(--tiny)
  train_args=(--image-size 32 --base-filters 4 --batch-size 4 --limit 8 --loss ce)
  EPOCHS=${TINY_EPOCHS:-2}
else
  bench_args=(--batch-size 32 --steps 20)
  train_args=(--image-size 256 --base-filters 64 --batch-size 16)
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import jax, keras; print('jax', jax.__version__, jax.devices()); print('keras', keras.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

echo "== throughput"
timeout "$THROUGHPUT_S" "$PYTHON" bench/gpu_throughput.py --data-dir "$PACK/pairs/train" --policies "$POLICIES" "${bench_args[@]}" \
  2>&1 | tee "$OUT/throughput.txt"
bench_rc=${PIPESTATUS[0]}

echo "== training: classic UNet, JAX, NumPy pipeline, $EPOCHS epochs"
timeout "$TRAIN_S" "$PYTHON" main.py --data-dir "$PACK/pairs" --output-dir "$OUT/train" --overwrite \
  --pipeline numpy --epochs "$EPOCHS" --num-preds 1 --progress-every 0 "${train_args[@]}" \
  2>&1 | tee "$OUT/train.log"
train_rc=${PIPESTATUS[0]}

echo "== validation mean IoU per epoch ($OUT/train/history.csv)"
cat "$OUT/train/history.csv" 2>/dev/null || echo "no history written"
echo "throughput exit $bench_rc, training exit $train_rc (124: stopped at its time limit)"
[ "$bench_rc" -eq 0 ] && [ "$train_rc" -eq 0 ]
