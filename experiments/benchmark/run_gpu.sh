#!/usr/bin/env bash
# The one prepared device check, run ON the lent GPU machine with its own python (torch 2.11, no network).
# Prepare first, here: `bash experiments/benchmark/prepare_gpu.sh` (it prints the exact device call).
#
#   bash experiments/benchmark/run_gpu.sh           # on the lent machine: everything below on CUDA (how long it
#                                                   # took: experiments/benchmark/gpu-20261130/README.md)
#   bash experiments/benchmark/run_gpu.sh --smoke   # here, on CPU: the same script end to end, tiny workloads,
#                                                   # in a fresh environment holding only torch & co + the wheels
#
# Steps, each with its own timeout and all inside BUDGET_S (default 530 s; a step that would pass it is cut or
# skipped with a line), each kept going when another fails:
#   env        install the carried wheels (.gpu/wheels) to a target dir; PYTHONPATH = the tree + that dir
#   gpu-tests  tests/test_gpu.py: CUDA meta-gradients equal the CPU float64 ones, every preset (pytest -m gpu)
#   bench      bench.py, the three image workloads, every eager contender whose package imports, --check,
#              the chunk-size sweep on the 20-way row
#   train      metatuv-train end to end: Omniglot 5-way 1-shot on CUDA from the carried zips (--smoke: sinusoid)
#   compiled   bench.py, metatuv beside metatuv-compiled on the same rows, in a run of its own (compiling is slow:
#              experiments/benchmark/gpu-20261130/README.md)
#   maxpool    bench.py on peerbench's own Omniglot net (stride-1 convs + max-pool), beside the reference
#   peer       .gpu/peerbench.py (../shared/tools/peerbench.py) on the same rows
# Everything lands in $OUT (the device tool's folder; else experiments/benchmark/gpu-<date>/, or a temp dir for
# --smoke) as at most 4 files: results.json (every bench row + the training run's results), run_gpu.log (all
# output), peerbench.jsonl, machine.txt. Exit status: 0 when every step ran and passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SMOKE=0
case ${1:-} in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "run_gpu.sh: unknown argument $1 (use --smoke or nothing)" >&2; exit 2 ;;
esac
GPU_DIR=$(cd "${GPU_DIR:-.gpu}" 2>/dev/null && pwd || echo "$ROOT/.gpu")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ -z ${OUT:-} ]]; then
  if ((SMOKE)); then OUT=$WORK/out; else OUT=$ROOT/experiments/benchmark/gpu-$(date +%Y%m%d-%H%M%S); fi
fi
mkdir -p "$OUT"
LOG=$OUT/run_gpu.log
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled METATUV_CACHE_DIR=$WORK/cache
log() { echo "[run_gpu $(date +%T) +$((SECONDS))s] $*" | tee -a "$LOG"; }

# ---------------------------------------------------------------- environment
if ((SMOKE)) && [[ -z ${PYTHON:-} ]]; then
  # As on the lent machine: torch and the few packages its image has, nothing else from this venv.
  python3 experiments/benchmark/torch_only_env.py "$WORK/env" >>"$LOG" 2>&1 || { log "could not build the smoke env"; exit 1; }
  PYTHON=$WORK/env/bin/python
fi
PYTHON=${PYTHON:-python3}
SITE=$WORK/site
BUDGET_S=${BUDGET_S:-$( ((SMOKE)) && echo 900 || echo 530)}  # --smoke: a busy 2-core machine
log "python: $(command -v "$PYTHON"); wheels from $GPU_DIR/wheels; installing to $SITE"
if compgen -G "$GPU_DIR/wheels/*.whl" >/dev/null; then
  for whl in "$GPU_DIR"/wheels/*.whl; do  # one at a time: a wheel for another python is skipped, not fatal
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$whl" >>"$LOG" 2>&1 \
      || log "wheel $(basename "$whl") does not install on this python: skipped"
  done
else
  log "no wheels in $GPU_DIR/wheels (run experiments/benchmark/prepare_gpu.sh here first): rows needing them are skipped"
fi
export PYTHONPATH=$ROOT:$SITE
"$PYTHON" - >>"$LOG" 2>&1 <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "numpy", "matplotlib", "tqdm", "yaml", "pytest", "higher", "learn2learn", "hydra", "omegaconf", "wandb"):
    try:
        m = importlib.import_module(name)
        print(f"  {name:12s} {getattr(m, '__version__', '?'):12s} {getattr(m, '__file__', '')}")
    except Exception as e:  # learn2learn can fail on import for reasons other than absence: say which
        print(f"  {name:12s} absent ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
import metatuv.meta, metatuv.nn  # the library itself must import on this torch
print("metatuv imports from", metatuv.__path__[0])
EOF
[[ $? -eq 0 ]] || { log "metatuv does not import on this python (see above): stop"; cat "$LOG"; exit 1; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  nproc; git rev-parse HEAD 2>/dev/null; git status --porcelain 2>/dev/null | head -20
} >"$OUT/machine.txt" 2>&1
tee -a "$LOG" <"$OUT/machine.txt"
if ((SMOKE)); then
  DEV=cpu
else
  DEV=cuda
  "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { log "CUDA is not available: stop (use --smoke on CPU)"; exit 1; }
fi

# ---------------------------------------------------------------- steps
FAILED=0
step() {  # step NAME SECONDS command...: run with a timeout inside the budget; output appended to the log
  local name=$1 secs=$(($2 * SCALE)) left=$((BUDGET_S - SECONDS))
  shift 2
  if ((left < 15)); then log "$name: skipped, budget of ${BUDGET_S}s spent"; FAILED=1; return; fi
  ((secs > left - 5)) && secs=$((left - 5))
  log "$name (timeout ${secs}s): $*"
  timeout --kill-after=10 "$secs" "$@" >"$WORK/$name.txt" 2>&1
  local rc=$?
  sed "s/^/  [$name] /" "$WORK/$name.txt" >>"$LOG"
  ((rc == 0)) || { FAILED=1; log "$name exited $rc$( ((rc == 124)) && echo ' (timed out)')"; }
  tail -n 25 "$WORK/$name.txt"
}

BENCH=experiments/benchmark/bench.py
ALL=higher,learn2learn,func-loop,func-vmap,metatuv,metatuv-loop,metatuv-vmap
if ((SMOKE)); then
  ROWS=omniglot-5w1s,omniglot-20w1s  # tuv only: every contender, the check, the chunk sweep, the JSON
  SIZE=(--smoke --presets tuv --repeats 1 --warmup 1)
  SCALE=3  # step timeouts ×3: a busy 2-core machine; the budget below still bounds the whole run
  CROWS=""  # compiling on the CPU is slow (experiments/benchmark/RESULTS.md; tests/test_compile.py covers the path)
  PEER_SIZE=(--device cpu --tasks 2 --queries 1 --warmup 1 --repeats 1 --ch 8 --hw 28)
  TRAIN=(benchmark=sinusoid debug=default device=cpu)  # Omniglot decodes slowly (gpu-20261130/README.md): GPU only
  export METATUV_TEST_DEVICE=cpu
  GPU_TESTS=(-k "mlp and (tuv or maml)")
else
  ROWS=omniglot-5w1s,omniglot-20w1s,miniimagenet-5w1s
  SIZE=(--repeats 4 --warmup 1)
  CROWS=$ROWS
  PEER_SIZE=(--warmup 1 --repeats 3)
  TRAIN=(benchmark=omniglot device=cuda outer.steps=300 eval.tasks=200)
  GPU_TESTS=()
  SCALE=1
fi

step gpu-tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py -m gpu "${GPU_TESTS[@]}"
step bench 170 "$PYTHON" $BENCH --device $DEV --workloads $ROWS --contenders $ALL --skip-missing --check --chunk-sweep \
  "${SIZE[@]}" --out "$WORK/bench.json"
if { ((SMOKE)) || [[ -f $GPU_DIR/data/omniglot/images_background.zip ]]; } && "$PYTHON" -c "import hydra" 2>/dev/null; then
  step train 100 "$PYTHON" -m metatuv.train "${TRAIN[@]}" logger=none progress=false \
    paths.data_root="$GPU_DIR/data" hydra.run.dir="$WORK/train"
else
  log "train: needs $GPU_DIR/data/omniglot and hydra-core/omegaconf wheels (prepare_gpu.sh): skipped"; FAILED=1
fi
if [[ -n $CROWS ]]; then
  step compiled 120 "$PYTHON" $BENCH --device $DEV --workloads $CROWS --contenders metatuv,metatuv-compiled --check \
    "${SIZE[@]}" --out "$WORK/compiled.json"
else
  log "compiled: not in --smoke (compiling on the CPU is slow, experiments/benchmark/RESULTS.md; tests/test_compile.py covers the path)"
fi
step maxpool 25 "$PYTHON" $BENCH --device $DEV --workloads omniglot-5w1s --omniglot-pool max \
  --contenders func-vmap,metatuv --check "${SIZE[@]}" --out "$WORK/maxpool.json"

if [[ -f $GPU_DIR/peerbench.py ]]; then
  PEER_VARIANTS=func_loop,func_vmap
  "$PYTHON" -c "import higher" 2>/dev/null && PEER_VARIANTS=higher,$PEER_VARIANTS || log "peer: higher absent, its variant skipped"
  "$PYTHON" -c "import learn2learn" 2>/dev/null && PEER_VARIANTS=$PEER_VARIANTS,l2l || log "peer: learn2learn absent, its variant skipped"
  PEER=("$PYTHON" "$GPU_DIR/peerbench.py" --manual-bn --variants "$PEER_VARIANTS" "${PEER_SIZE[@]}")
  step peer-omniglot-5w1s 45 "${PEER[@]}" --label omniglot-5w1s --ways 5 --inner-steps 1 --lr 0.4 \
    $( ((SMOKE)) && echo "--tuv 1" || echo "--tasks 32")
  ((SMOKE)) || step peer-omniglot-20w1s 45 "${PEER[@]}" --label omniglot-20w1s --tuv 1 --ways 20 --inner-steps 5 --lr 0.1 \
    $( ((SMOKE)) || echo "--tasks 16")
  ((SMOKE)) || step peer-miniimagenet-5w1s 30 "${PEER[@]}" --label miniimagenet-5w1s --tuv 1 --ways 5 --inner-steps 5 --lr 0.01 \
    --in-ch 3 $( ((SMOKE)) || echo "--tasks 4 --ch 32 --hw 84")
  cat "$WORK"/peer-*.txt 2>/dev/null | grep '^{' >"$OUT/peerbench.jsonl"
else
  log "peer: $GPU_DIR/peerbench.py not found (prepare_gpu.sh copies it from ../shared/tools): skipped"
fi


# ---------------------------------------------------------------- one results file
"$PYTHON" - "$WORK" "$OUT/results.json" >>"$LOG" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
merged = {}
for name in ("bench", "compiled", "maxpool"):
    p = work / f"{name}.json"
    merged[name] = json.loads(p.read_text()) if p.exists() else None
p = work / "train" / "results.json"
merged["train"] = json.loads(p.read_text()) if p.exists() else None
out.write_text(json.dumps(merged, indent=1))
print("wrote", out, {k: (v is not None) for k, v in merged.items()})
EOF
log "done in ${SECONDS}s (any step failed: $FAILED); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $FAILED
