#!/usr/bin/env bash
# Everything to run on a lent GPU, in one call: CUDA tests of the Triton backend, the self-check,
# and the benchmarks (file by file, each under its own time limit, so a slow one cannot take the
# rows of the others). Results and logs go to $OUT (default /tmp/sgllie-gpu). From the repo root:
#     bash benchmarks/gpu_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/sgllie-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
PYTEST="$PY -m pytest -p no:cacheprovider"

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

echo "== tests on CUDA"
timeout -s INT -k 15 "${TEST_S:-150}" $PYTEST -q -m "not aot" tests/test_triton.py tests/test_graphs.py tests/test_ops.py tests/test_model.py \
    -k "triton or graph or Graph" 2>&1 | tee "$OUT/tests.log" | tail -25
echo "== sgllie.info --check"
timeout 40 $PY -m sgllie.info --check > "$OUT/info_check.txt" 2>&1; tail -14 "$OUT/info_check.txt"

echo "== benchmarks"
# compile-reduce-overhead only where launches dominate (whole-model inference). SIGINT at the limit:
# pytest stops and still writes the rows it has.
for spec in "test_le_curve.py:not reduce-overhead:60" "test_losses.py:not reduce-overhead:50" \
            "test_dsconv2d.py:not reduce-overhead:60" "test_model.py::90" "test_train_step.py:not reduce-overhead:60"; do
    IFS=: read -r file filter limit <<< "$spec"
    timeout -s INT -k 15 "$limit" $PYTEST -q benchmarks/$file ${filter:+-k "$filter"} --benchmark-columns=median,rounds \
        > "$OUT/bench_${file%.py}.log" 2>&1
    echo "$file: exit $?"; grep -E "passed|failed|error" "$OUT/bench_${file%.py}.log" | tail -2
done
cp benchmarks/results/cuda-* "$OUT/" 2>/dev/null
cat benchmarks/results/cuda-*.md 2>/dev/null | tail -45
