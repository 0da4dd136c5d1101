#!/usr/bin/env bash
# Learning-rate sensitivity (issue 10, study 2; Lee & Choi's claim that T-net / MT-net are less sensitive to alpha):
# sinusoid 10-shot (the authors' experiments/sine.sh), presets maml, metasgd, tnet, mtnet, tuv, mtuv, inner step
# size alpha in {0.04, 0.1}; alpha = 0.01 is the 10-shot column of the sinusoid table (experiments/sinusoid/runs).
# For metasgd alpha is the initial value of the learned rates. Run from the repository root:
#   bash experiments/lr_sensitivity/run.sh && python experiments/lr_sensitivity/summarize.py
#   SEEDS=0,1,2 bash experiments/lr_sensitivity/run.sh       # more seeds (also run them for the sinusoid table)
set -euo pipefail
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=1 METATUV_JOBS=${METATUV_JOBS:-2}
metatuv-train -m hydra/launcher=parallel experiment=sinusoid_10shot model=maml,metasgd,tnet,mtnet,tuv,mtuv \
  inner.lr=0.04,0.1 seed="$SEEDS" inner.compile=true progress=false eval.baseline=false monitor.eval_every=0 \
  hydra.sweep.dir=experiments/lr_sensitivity/runs 'hydra.sweep.subdir=lr${inner.lr}/${model.name}/seed${seed}'
for d in experiments/lr_sensitivity/runs/lr*/*/seed*/; do  # also 1 test step (the training condition)
  [ -f "$d/eval-test-1steps-600tasks.json" ] || metatuv-eval "$d" --steps 1 --tasks 600 --no-progress
done
