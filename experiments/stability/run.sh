#!/usr/bin/env bash
# Stability of learned metrics (issue 20, study 3): sinusoid K-shot x inner step size alpha x presets, 1 inner step in
# training, evaluated with 10 (the config's inner.test_steps), 50 and 1 test steps on 600 tasks; a run whose score is
# NaN/Inf counts as diverged. Run from the repository root:
#   bash experiments/stability/run.sh && python experiments/stability/summarize.py
# Defaults = the first slice that ran here (one seed, 3,000 meta-steps, 5 shots, tuv / tuv_bounded / kfo). The full
# grid of issue 20 (3 seeds, 60,000 meta-steps, K = 5, 10, 20, seven presets; its cost on 2 cores follows from
# experiments/cpu_times/RESULTS.md):
#   SEEDS=0,1,2 STEPS=60000 SHOTS="5 10 20" PRESETS=maml,mtnet,tuv,mtuv,tuv_bounded,kfo,metacurvature \
#     bash experiments/stability/run.sh
set -euo pipefail
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-3000}
SHOTS=${SHOTS:-"5 10 20"}
PRESETS=${PRESETS:-maml,mtnet,tuv,mtuv,tuv_bounded,kfo,metacurvature}
ALPHAS=${ALPHAS:-0.01,0.04,0.1}
MAX_STEP=${MAX_STEP:-1.0}  # model.max_step: the bound on α·λmax(VᵀV ⊗ TTᵀ) of bounded presets (others ignore it)
export OMP_NUM_THREADS=1 METATUV_JOBS=${METATUV_JOBS:-2} WANDB_MODE=${WANDB_MODE:-offline}
for k in $SHOTS; do
  # inner.compile=false: at a few thousand meta-steps compiling costs more than it saves (compile and step times:
  # experiments/benchmark/RESULTS.md)
  metatuv-train -m hydra/launcher=parallel experiment=sinusoid_${k}shot model="$PRESETS" inner.lr="$ALPHAS" \
    model.max_step="$MAX_STEP" seed="$SEEDS" outer.steps="$STEPS" inner.compile=false progress=false eval.baseline=false logger=none \
    monitor.eval_every=0 checkpoint.every=0 hydra.sweep.dir=experiments/stability/runs \
    'hydra.sweep.subdir=steps${outer.steps}/shots${benchmark.shots}/lr${inner.lr}/${model.name}/maxstep${model.max_step}/seed${seed}' || true
done
# every run at 1, 10 and 50 test steps, plain and backtracked (model.backtrack's test-time step), in two processes
python experiments/stability/evaluate_runs.py --shard 0/2 &
python experiments/stability/evaluate_runs.py --shard 1/2
wait
