#!/usr/bin/env bash
# The GPU measurements of issue 30 in one run of about 6 minutes on one H100/H200:
#   (a) the machine: nvidia-smi, versions                        -> $OUT/gpu_env.json
#   (b) the bare CNN's ceiling (benchmarks/gpu_ceiling.py)         -> $OUT/gpu_ceiling.json
#   (c) the framework's training path, before/after (gpu_framework.py) -> $OUT/gpu_framework.json
#   (e) torch.profiler of training steps, before/after            -> $OUT/gpu_profile.json, gpu_profile_traces.tar
#   (d) experiment=best over seeds on the fast path (gpu_best_seeds.py) -> $OUT/gpu_best_seeds.json
# and the whole log in $OUT/suite.log. (d) runs last: it takes what time is left.
#
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh                  # from the repository root, on the GPU machine
#   OUT=/tmp/out GPU_SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh    # CPU, synthetic data, a few steps: checks the suite
#
# Needs: the training images at .devdata/chest_xray/train (or GPU_SUITE_DATA=<data.root>); Hydra, OmegaConf and
# antlr4 as wheels in .whl/ when the machine lacks them (installed into /tmp/site, no network). Every stage has
# its own timeout and the whole suite a budget (GPU_SUITE_BUDGET seconds, default 420); a stage that fails or
# times out is logged and the next one runs; every script rewrites its JSON after each configuration.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SMOKE=${GPU_SUITE_SMOKE:-0}
BUDGET=${GPU_SUITE_BUDGET:-420}
DATA=${GPU_SUITE_DATA:-.devdata/chest_xray}
DATA=$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")
CACHE=${GPU_SUITE_CACHE:-/tmp/pneumonia_suite_cache}
START=$(date +%s)
STATUS=""

stage() {  # stage NAME MAX_SECONDS COMMAND...: run it with a timeout within what is left of the budget
    local name=$1 max=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
    local limit=$(( max < left ? max : left ))
    if (( limit < 15 )); then
        echo "== stage $name: SKIPPED, ${left}s of the budget left"
        STATUS+="$name skipped; "
        return
    fi
    echo "== stage $name: start $(date -u +%H:%M:%S), limit ${limit}s"
    local t0=$(date +%s)
    timeout -k 5 "$limit" "$@"
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    [[ $rc == 124 || $rc == 137 ]] && echo "== stage $name: TIMED OUT after ${took}s (partial results kept)"
    echo "== stage $name: rc=$rc in ${took}s; files in OUT: $(ls "$OUT" | tr '\n' ' ')"
    STATUS+="$name rc=$rc ${took}s; "
}

main() {
    echo "== gpu_suite: $(date -u) in $PWD, smoke=$SMOKE, budget ${BUDGET}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    # each wheel of .whl/ only where its module is missing (no shadowing of the machine's own)
    local wheel module
    for wheel in .whl/*.whl; do
        [[ -e $wheel ]] || { echo "!! no wheels in .whl/"; break; }
        case $(basename "$wheel") in
            hydra_core-*) module=hydra ;; omegaconf-*) module=omegaconf ;; antlr4_python3_runtime-*) module=antlr4 ;;
            [Pp]y[Yy][Aa][Mm][Ll]-*) module=yaml ;; packaging-*) module=packaging ;; *) module="" ;;
        esac
        if [[ -n $module ]] && PYTHONPATH=/tmp/site "$PY" -c "import $module" 2>/dev/null; then
            continue
        fi
        echo "== installing $wheel into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheel" \
            || "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall('/tmp/site')" "$wheel" \
            || echo "!! could not install $wheel"
    done
    export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -c "import hydra, omegaconf, pneumonia.runners.train as t; print('imports ok:', t.__file__)" \
        || echo "!! the project does not import: stages c, d, e will fail"

    local smoke_flag=()
    if [[ $SMOKE == 1 ]]; then
        smoke_flag=(--smoke)
        export CUDA_VISIBLE_DEVICES=""
    elif [[ ! -d $DATA/train ]]; then
        echo "!! no $DATA/train: stages c, d, e need the training images (GPU_SUITE_DATA=<data.root>)"
    fi

    # (a) the machine
    stage env 60 bash -c '
        nvidia-smi || echo "no nvidia-smi"
        nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv || true
        nproc; free -g || true
        "$0" benchmarks/gpu_env.py --out-dir "$1"' "$PY" "$OUT"

    # (b) the ceiling: 3 variants x 3 batch sizes; eager first, then CUDA graphs, then plain compile
    stage ceiling 120 "$PY" benchmarks/gpu_ceiling.py --out-dir "$OUT" \
        --variants eager reduce-overhead compile --batches 64 256 1024 "${smoke_flag[@]}"

    # (c) the framework path, before and after; compiled last (their compiles take tens of seconds)
    stage framework 140 "$PY" benchmarks/gpu_framework.py --data "$DATA" --cache-dir "$CACHE" --out-dir "$OUT" \
        --seconds 2 --configs before:64 after:64 before:256 after:256 after_bench:64 after_compile:64 after_compile:256 after_ro:64 \
        "${smoke_flag[@]}"

    # (e) the profile of 5 steps, before and after (the compiled one from the inductor cache (c) filled)
    stage profile 60 "$PY" benchmarks/gpu_framework.py --data "$DATA" --cache-dir "$CACHE" --out-dir "$OUT" \
        --profile --profile-steps 5 --configs before:64 after:64 after_compile:64 "${smoke_flag[@]}"

    # (d) experiment=best over 3 seeds on the fast path, then at batch 128, then one seed as before
    stage best_seeds 200 "$PY" benchmarks/gpu_best_seeds.py --data "$DATA" --cache-dir "$CACHE" --out-dir "$OUT" \
        --seeds 1 2 3 --batch-sizes 0 128 --before 1 --run-timeout 120 "${smoke_flag[@]}"

    echo "== gpu_suite: done in $(( $(date +%s) - START ))s: $STATUS"
    ls -la "$OUT"
}

main 2>&1 | tee "$OUT/suite.log"
exit "${PIPESTATUS[0]}"
