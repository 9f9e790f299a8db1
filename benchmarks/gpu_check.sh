#!/usr/bin/env bash
# One command that runs everything a GPU can tell us about unshuffle's GPU path, in at most ~8 minutes,
# and writes gpu_check.log + gpu_check.json (2 files) under $OUT, or under the folder given as argument.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [--puzzle DIR] [--budget SECONDS] [--cpu-smoke] [--no-install]
#
# Steps (each time-boxed with `timeout`, capped by what is left of the budget; a failed or timed-out step
# is logged and the script goes on):
#   install   pip install --no-deps --no-build-isolation -e . against this machine's torch (C++ extension)
#   env       device, versions, available backends, what auto would choose and why
#   tests     the GPU-marked tests (pytest -m gpu) of the kernel/search test files, if pytest is installed
#   selftest  the same checks without pytest (compiled kernels vs reference; device search vs reference loop)
#   scoring   throughput at R=256/1024, adjacent and swap+insert: triton (cold/warm), torch, reference, cpp;
#             GFLOP/s beside the dense fp32/tf32 matmul rate measured in the same run; a launch-config sweep
#   public    solve the puzzle given with --puzzle on triton (cold, warm) and cpp: sha256, exact, phase times
#   precision fp32 / tf32 / tf32x3 / bf16 scoring: speed, error vs float64, and a search rescored in fp32
#   search    device vs C++ search loop, many searches per launch, and the CPU/GPU crossover (calibration)
#   generated make-puzzle N=16 and N=32 (d=48, h=96, fixed seeds), solved on triton and cpp
#   summarize a compact table on stdout and gpu_check.json
#
# --cpu-smoke: the same steps on tiny shapes, CPU tensors, TRITON_INTERPRET=1 (CI runs this; no speed figure).
set -uo pipefail
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${OUT:-}"
PUZZLE=""
SMOKE=0
INSTALL=1
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --puzzle) PUZZLE="$2"; shift 2 ;;
    --puzzle=*) PUZZLE="${1#*=}"; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) OUTDIR="$1"; shift ;;
  esac
done
if [ -z "$OUTDIR" ]; then echo "give an output folder (argument) or set \$OUT" >&2; exit 2; fi
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
if [ -n "$PUZZLE" ] && [ -d "$PUZZLE" ]; then PUZZLE="$(cd "$PUZZLE" && pwd)"; fi   # the steps run from the repo
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"   # step JSONs, generated puzzles, triton caches
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
: > "$WORK/steps.tsv"
SMOKEARG=()
if [ "$SMOKE" = 1 ]; then
  SMOKEARG=(--smoke)
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  INSTALL=0                       # CI has the package installed already; a rebuild would take minutes
  BUDGET="${BUDGET:-150}"          # a cap for loaded CI machines; typical runs take well under a minute
fi
BUDGET="${BUDGET:-470}"            # 8 minutes minus a margin for the summary
export UNSHUFFLE_CALIBRATION="$WORK/calibration.json"   # the measured crossover lands in gpu_check.json
export TRITON_CACHE_DIR="$WORK/triton-cache"           # fresh: the first compile of each kernel is cold
START=$(date +%s)
cd "$REPO"

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT CMD...: run CMD with a timeout of min(LIMIT, what is left), log it, record the status
step() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -le 5 ]; then
    say "== $name: skipped (budget of ${BUDGET}s spent)"
    printf '%s\t%s\t%s\t%s\n' "$name" -1 0 0 >> "$WORK/steps.tsv"
    return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  say "== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed)"
  local t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  say "== $name: rc=$rc in ${secs}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$WORK/steps.tsv"
}

say "gpu_check: repo $REPO, out $OUTDIR, python $PY, budget ${BUDGET}s, smoke $SMOKE, puzzle '${PUZZLE}'"
say "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) changed files"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$LOG"

if [ "$INSTALL" = 1 ]; then
  step install 240 "$PY" -m pip install --no-deps --no-build-isolation -e .
  if ! "$PY" -c "import unshuffle.kernels.search" >/dev/null 2>&1; then
    # Fallback: build the C++ extension in place and import the package from a folder of links (the
    # package maps kernels/ to unshuffle.kernels, which only an install or this layout provides).
    say "== install did not give an importable package: building in place, importing through links"
    timeout 240 "$PY" setup.py -q build_ext --inplace 2>&1 | tail -5 | tee -a "$LOG"
    mkdir -p "$WORK/site/unshuffle"
    for f in "$REPO"/unshuffle/*; do ln -sf "$f" "$WORK/site/unshuffle/"; done
    ln -sfn "$REPO/kernels" "$WORK/site/unshuffle/kernels"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import unshuffle.kernels.search" 2>&1 | tail -2 | tee -a "$LOG"
  fi
else
  say "== install: skipped ($([ "$SMOKE" = 1 ] && echo cpu-smoke || echo --no-install))"
  printf '%s\t%s\t%s\t%s\n' install -1 0 0 >> "$WORK/steps.tsv"
fi

step env 60 "$PY" benchmarks/gpu_check.py env --json "$WORK/env.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}

if "$PY" -c "import pytest" 2>/dev/null; then
  # only the files with GPU-marked tests: others may need packages this machine lacks (hypothesis, ...)
  step tests 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    tests/test_kernels_scoring.py tests/test_kernels_search.py tests/test_gpu_search.py
  "$PY" - "$LOG" "$WORK/tests.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read().split("== tests (")[-1]
m = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", text, re.M)
json.dump({"summary": m[-1] if m else "no pytest summary line (see the log)"}, open(sys.argv[2], "w"))
EOF
else
  say "== tests: pytest is not installed here; the selftest step runs the same checks"
  printf '%s\t%s\t%s\t%s\n' tests -1 0 0 >> "$WORK/steps.tsv"
  echo '{"summary": "pytest not installed: see selftest"}' > "$WORK/tests.json"
fi

step selftest 90 "$PY" benchmarks/gpu_check.py selftest --json "$WORK/selftest.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}
# its own empty triton cache: the tests and selftest have compiled these kernels already, and the point is
# to time the first, cold compile
step scoring 150 env TRITON_CACHE_DIR="$WORK/triton-cache-cold" "$PY" benchmarks/gpu_check.py scoring --json "$WORK/scoring.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}
step public 90 "$PY" benchmarks/gpu_check.py solve --puzzle "${PUZZLE:-}" --json "$WORK/public.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}
step precision 90 "$PY" benchmarks/gpu_check.py precision --json "$WORK/precision.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}
step search 120 "$PY" benchmarks/gpu_check.py search --json "$WORK/search.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}
step generated 150 "$PY" benchmarks/gpu_check.py generated --workdir "$WORK" --json "$WORK/generated.json" ${SMOKEARG[@]+"${SMOKEARG[@]}"}

# the summary always runs, outside the budget (it only reads JSON)
timeout 60 "$PY" benchmarks/gpu_check.py summarize --workdir "$WORK" --out "$OUTDIR" ${SMOKEARG[@]+"${SMOKEARG[@]}"} 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "gpu_check: done in $(( $(date +%s) - START ))s; wrote $OUTDIR/gpu_check.json and $LOG"
rm -rf "$WORK"
exit "$rc"
