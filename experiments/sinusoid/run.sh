#!/usr/bin/env bash
# Sinusoid table (issue 10, study 1): K = 5, 10, 20 x presets maml, metasgd, tnet, mtnet, tuv, mtuv; Lee & Choi's
# setup (conf/experiment/sinusoid_*shot.yaml: 60,000 meta-steps, meta-batch 4, alpha 0.01, 1 inner step at train,
# 10 at test, 600 test tasks). Run from the repository root:
#   bash experiments/sinusoid/run.sh                 # seed 0
#   SEEDS=0,1,2 bash experiments/sinusoid/run.sh     # the three seeds (finished runs are skipped)
#   python experiments/sinusoid/summarize.py         # table.md and plots from experiments/sinusoid/runs/
# Each run writes experiments/sinusoid/runs/<K>shot/<preset>/seed<s>/ (results.json = 10 test steps); afterwards
# every run is also evaluated with 1 test step (eval-test-1steps-600tasks.json), the Meta-SGD paper's protocol.
# Two runs at a time on one thread each (hydra/launcher=parallel, METATUV_JOBS=2) with inner.compile=true (the compiled
# and eager meta-gradients agree to 1e-10, tests/test_compile.py); each run's time: train_seconds in records.json.
set -euo pipefail
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=1 METATUV_JOBS=${METATUV_JOBS:-2}
metatuv-train -m hydra/launcher=parallel \
  experiment=sinusoid_5shot,sinusoid_10shot,sinusoid_20shot model=maml,metasgd,tnet,mtnet,tuv,mtuv seed="$SEEDS" \
  inner.compile=true progress=false eval.baseline=false monitor.eval_every=0 \
  hydra.sweep.dir=experiments/sinusoid/runs 'hydra.sweep.subdir=${benchmark.shots}shot/${model.name}/seed${seed}'
for d in experiments/sinusoid/runs/*shot/*/seed*/; do
  [ -f "$d/eval-test-1steps-600tasks.json" ] || metatuv-eval "$d" --steps 1 --tasks 600
done
