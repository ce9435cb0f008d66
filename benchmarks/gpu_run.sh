#!/usr/bin/env bash
# Everything to run on a lent GPU, in one call: build sgllie._C with its CUDA kernels for this GPU,
# CUDA tests of the Triton and CUDA backends, the self-check (with compute-sanitizer),
# and the benchmarks (file by file, each under its own time limit, so a slow one cannot take the
# rows of the others). Results and logs go to $OUT (default /tmp/sgllie-gpu). From the repo root:
#     bash benchmarks/gpu_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/sgllie-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SGLLIE_TEST_CUDA_EMU=0 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
PYTEST="$PY -m pytest -p no:cacheprovider"

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

echo "== build sgllie._C with the CUDA kernels for this GPU only (sm_90a on an H100)"
arch=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if m == 9 else ''))")
( time TORCH_CUDA_ARCH_LIST=$arch SGLLIE_REQUIRE_EXT=1 MAX_JOBS=16 $PY setup.py -q build_ext --inplace ) > "$OUT/build.log" 2>&1
echo "build: exit $?"; tail -3 "$OUT/build.log"

echo "== tests on CUDA"
timeout -s INT -k 15 "${TEST_S:-150}" $PYTEST -q -m "not aot and not cuda_emu and not cuda_build" tests/test_triton.py tests/test_graphs.py tests/test_ops.py tests/test_model.py \
    -k "(triton or graph or Graph or cuda) and not cuda_emu" 2>&1 | tee "$OUT/tests.log" | tail -25
echo "== sgllie.info --check"
timeout 120 $PY -m sgllie.info --check > "$OUT/info_check.txt" 2>&1; tail -14 "$OUT/info_check.txt"

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
