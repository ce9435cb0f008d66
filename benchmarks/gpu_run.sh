#!/usr/bin/env bash
# Everything to run on a lent GPU, in one call, each stage under its own time limit (a slow one
# cannot take the others' rows): CUDA tests of the Triton backend (every autotune config forced in
# turn), the per-kernel profile, the benchmarks, and optionally the CUDA C++ build, its tests and
# the self-check. At most 8 files go to $OUT (default /tmp/sgllie-gpu). From the repo root:
#     bash benchmarks/gpu_run.sh                 # Triton: about 7 minutes on an H100
#     FULL=1 bash benchmarks/gpu_run.sh          # also build csrc/cuda, its tests, info --check
set -uo pipefail
OUT=${OUT:-/tmp/sgllie-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SGLLIE_TEST_CUDA_EMU=0 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
PYTEST="$PY -m pytest -p no:cacheprovider"
FULL=${FULL:-0}
stage() { echo "== $1 ($(date -u +%T))"; }
# "$@" for at most $1 seconds in a process group of its own: SIGINT first (pytest still reports what
# ran), then SIGKILL to the whole group 15 s later, so no pytest-xdist worker outlives its stage and
# competes with the next one for the host
limited() {
    local limit=$1; shift
    set -m; "$@" & local pid=$!; set +m  # job control: its own group, and SIGINT not ignored
    ( sleep "$limit"; kill -INT -- -"$pid"; sleep 15; kill -KILL -- -"$pid" ) 2>/dev/null & local watchdog=$!
    wait "$pid"; local rc=$?
    pkill -P "$watchdog" 2>/dev/null; kill "$watchdog" 2>/dev/null; kill -KILL -- -"$pid" 2>/dev/null
    return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

tests="tests/test_triton.py tests/test_graphs.py tests/test_ops.py tests/test_model.py"
select="(triton or graph or Graph) and not cuda_emu"
if [ "$FULL" = 1 ]; then
    stage "build sgllie._C with the CUDA kernels for this GPU only (sm_90a on an H100)"
    arch=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if m == 9 else ''))")
    ( time TORCH_CUDA_ARCH_LIST=$arch SGLLIE_REQUIRE_EXT=1 MAX_JOBS=16 $PY setup.py -q build_ext --inplace ) > "$OUT/build.log" 2>&1
    echo "build: exit $?"; tail -3 "$OUT/build.log"
    select="(triton or graph or Graph or cuda) and not cuda_emu"
fi

stage "tests on CUDA (8 processes where pytest-xdist is there: they compile their kernels side by side)"
workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
limited "${TEST_S:-180}" $PYTEST -q $workers -rfE -m "not aot and not cuda_emu and not cuda_build" $tests \
    -k "$select" > "$OUT/tests.log" 2>&1
echo "tests: exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -15

stage "per-kernel profile"
limited "${PROFILE_S:-120}" $PY -m benchmarks.gpu_profile > "$OUT/profile.md" 2>&1
echo "profile: exit $?"; head -16 "$OUT/profile.md"

if [ "$FULL" = 1 ]; then
    stage "sgllie.info --check"
    timeout 120 $PY -m sgllie.info --check 2>&1 | tail -14
fi

stage "benchmarks"
# torch.compile rows where a comparison target needs them, not reduce-overhead (its inductor builds
# take the time of the rest; the model's ro rows from earlier runs stay in the results). SIGINT at
# the limit: pytest stops and still writes the rows it has.
for spec in "test_dsconv2d.py:not reduce-overhead:60" "test_train_step.py:not reduce-overhead:75" \
            "test_model.py:eager or triton:60" \
            "test_losses.py:not reduce-overhead:45" "test_le_curve.py:not reduce-overhead:45"; do
    IFS=: read -r file filter limit <<< "$spec"
    echo "--- $file ($(date -u +%T))" >> "$OUT/bench.log"
    limited "$limit" $PYTEST -q benchmarks/$file ${filter:+-k "$filter"} --benchmark-columns=median,rounds \
        >> "$OUT/bench.log" 2>&1
    echo "$file: exit $?"
done
grep -E "passed|failed|error" "$OUT/bench.log" | tail -8
cp benchmarks/results/cuda-* "$OUT/" 2>/dev/null
stage "done"
