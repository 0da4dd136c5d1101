#!/usr/bin/env bash
# The one prepared device check: every contender on every workload on a lent GPU, plus the peer benchmark
# (../shared/tools/peerbench.py) beside it in the same session. Run from anywhere in the repository:
#
#   bash experiments/benchmark/run_gpu.sh              # results in $OUT, else experiments/benchmark/gpu-<date>/
#
# Expected ~5 min on an H200 once the environment exists; every step has a timeout, the caps add up to ~9 min.
# bench.py writes its JSON after every row, so a step cut by its timeout keeps what it measured.
# Environment: $PYTHON if set; else .venv (created with `pip install -r requirements-dev.txt` only if missing);
# if that install fails (no network), a python3 that already imports torch, higher and learn2learn.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/experiments/benchmark/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[run_gpu $(date +%T)] $*" | tee -a "$OUT/run_gpu.log"; }

have_deps() { "$1" -c "import torch, higher, learn2learn, metatuv" >/dev/null 2>&1; }
if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv (pip install -r requirements-dev.txt)"
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt >"$OUT/pip.log" 2>&1 \
      || log "venv install failed (see pip.log)"
  fi
  PYTHON=$ROOT/.venv/bin/python
  if ! have_deps "$PYTHON" && have_deps python3; then
    log "falling back to $(command -v python3), which already has the dependencies"
    PYTHON=python3
  fi
fi
have_deps "$PYTHON" || { log "no python with torch, higher, learn2learn and metatuv: stop"; exit 2; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  git rev-parse HEAD 2>/dev/null && git status --porcelain 2>/dev/null
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tee -a "$OUT/run_gpu.log"

FAILED=0
step() {  # step NAME SECONDS command...: run with a timeout, log into $OUT/NAME.txt, keep going on failure
  local name=$1 secs=$2
  shift 2
  log "$name (timeout ${secs}s): $*"
  timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  [[ $rc -eq 0 ]] || { FAILED=1; log "$name exited $rc"; }
  tail -n 60 "$OUT/$name.txt"
}

BENCH=experiments/benchmark/bench.py
ALL=higher,learn2learn,func-loop,func-vmap,metatuv,metatuv-loop,metatuv-vmap
GPU_ROWS=omniglot-5w1s,omniglot-20w1s,miniimagenet-5w1s
# 1. the issue's three GPU workloads, every eager contender, gradients checked, chunk-size sweep on the 20-way row
step bench-cuda 200 "$PYTHON" $BENCH --device cuda --workloads $GPU_ROWS \
  --contenders $ALL --check --chunk-sweep --repeats 5 --warmup 2 --out "$OUT/results-cuda.json"
# 2. the compiled meta-step beside the eager one (each row compiles once, tens of seconds; its own run so that a
#    slow compile cannot cost the rows above). The CPU sinusoid rows are measured on the 2-core machine instead.
step bench-cuda-compiled 150 "$PYTHON" $BENCH --device cuda --workloads $GPU_ROWS \
  --contenders metatuv,metatuv-compiled --check --repeats 5 --warmup 2 --out "$OUT/results-cuda-compiled.json"
# 3. peerbench's exact Omniglot net (stride-1 convs + max-pool, where the reference figures came from)
step bench-cuda-omniglot-maxpool 30 "$PYTHON" $BENCH --device cuda --workloads omniglot-5w1s --omniglot-pool max \
  --contenders func-vmap,metatuv --check --repeats 5 --warmup 2 --out "$OUT/results-cuda-omniglot-maxpool.json"

# 4. the peer benchmark, same rows, primitive batch norm (as metatuv's nets), if it is beside the repository
PEER=""
for p in "${PEERBENCH:-}" ../shared/tools/peerbench.py shared/tools/peerbench.py; do
  [[ -n "$p" && -f "$p" ]] && { PEER=$p; break; }
done
if [[ -n "$PEER" ]]; then
  step peer-omniglot-5w1s 60 "$PYTHON" "$PEER" --manual-bn --label omniglot-5w1s --tasks 32 --ways 5 --inner-steps 1 \
    --lr 0.4 --warmup 2 --repeats 5
  step peer-omniglot-5w1s-fusedbn 20 "$PYTHON" "$PEER" --label omniglot-5w1s-fusedbn --variants func_vmap --tasks 32 \
    --ways 5 --inner-steps 1 --lr 0.4 --warmup 2 --repeats 5
  step peer-omniglot-20w1s 70 "$PYTHON" "$PEER" --manual-bn --label omniglot-20w1s --tuv 1 --tasks 16 --ways 20 \
    --inner-steps 5 --lr 0.1 --warmup 2 --repeats 5
  step peer-miniimagenet-5w1s 30 "$PYTHON" "$PEER" --manual-bn --label miniimagenet-5w1s --tuv 1 --tasks 4 --ways 5 \
    --inner-steps 5 --lr 0.01 --ch 32 --in-ch 3 --hw 84 --warmup 2 --repeats 5
  cat "$OUT"/peer-*.txt | grep '^{' >"$OUT/peerbench.jsonl"
else
  log "peerbench.py not found (../shared/tools/ or shared/tools/): skipped"
fi
log "done (any step failed: $FAILED); results in $OUT"
exit $FAILED
