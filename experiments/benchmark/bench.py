"""Time one full second-order meta-step and its peak memory for every inner-loop library, side by side.

The contenders (all on the same metatuv network, same parameters, same batch): see contenders.py. A meta-step is
zero_grad, the inner loop, the query loss, backward and an Adam step. Per workload the contenders run round-robin,
one meta-step each per round, so machine noise hits all of them alike and the ratios hold on a busy machine. Time is
the median over ``--repeats`` rounds after ``--warmup`` (CUDA synchronized around each step). Peak memory is
measured on the last warm-up step: CUDA ``max_memory_allocated`` above what was allocated before the step; CPU the
process RSS high-water mark (VmHWM, reset through /proc/self/clear_refs after ``malloc_trim``) above the RSS before
the step.

Inputs are random tensors of the workload's shapes (no dataset needed): timing does not depend on the pixels.
(It supersedes experiments/backends/time_meta_step.py: metatuv's backends are the metatuv-* contenders.)
The harness: workloads.py (networks, shapes, batches), contenders.py (one meta-gradient each), measure.py (check,
round-robin timing, peak memory, profile), report.py (table, machine, ratios); this file is the command line.

    python experiments/benchmark/bench.py --workloads sinusoid,omniglot-5w1s --quick --check
    python experiments/benchmark/bench.py --device cuda --check --chunk-sweep
    python experiments/benchmark/bench.py --workloads sinusoid --contenders metatuv --profile 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness's modules, however this file is run
from contenders import CHUNKS, DEFAULT_CONTENDERS, METATUV, NAIVE, NEEDS, import_error, known  # noqa: E402
from measure import PeakMemory, check_row, profile_row, time_row  # noqa: E402
from report import machine, overhead_ratios, table  # noqa: E402
from workloads import WORKLOADS, make_batch, variant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workloads", default="all", help=f"comma list of {', '.join(WORKLOADS)} (or all)")
    ap.add_argument("--presets", default=None, help="comma list: only these presets of each workload (e.g. tuv)")
    ap.add_argument(
        "--contenders",
        default=DEFAULT_CONTENDERS,
        help=f"comma list of {', '.join(NAIVE)}, {', '.join(METATUV)}, metatuv-chunkN",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2, help="warm-up meta-steps per contender (>= 1; memory: the last)")
    ap.add_argument("--quick", action="store_true", help="repeats 3, warm-up 1 (the workloads are unchanged)")
    ap.add_argument("--check", action="store_true", help="compare every meta-gradient with metatuv's first")
    ap.add_argument("--check-dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--chunk-sweep", action="store_true", help="omniglot-20w1s: also metatuv with chunk_size 8,4,2,1")
    ap.add_argument("--omniglot-pool", choices=("stride", "max"), default="stride", help="max: peerbench's net")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default: results-<device>.json beside this file)")
    ap.add_argument("--profile", type=int, default=0, help="after timing, cProfile N meta-steps of --profile-contender")
    ap.add_argument("--profile-contender", default="metatuv")
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--profile-torch", action="store_true", help="also a torch.profiler table of the same N steps")
    ap.add_argument("--skip-missing", action="store_true", help="drop (with a line) contenders whose package is absent")
    ap.add_argument("--smoke", action="store_true", help="2 tasks, 1 query/class, 8 channels, 28×28: plumbing only")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), min(args.warmup, 1)
    args.warmup = max(args.warmup, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    names = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    contenders = args.contenders.split(",")
    bad = [c for c in contenders if not known(c)]
    if unknown or bad:
        ap.error(f"unknown workloads {unknown} / contenders {bad}")
    if args.presets is not None:  # a preset no chosen workload runs would leave an empty benchmark without a word
        offered = {p for n in names for p in WORKLOADS[n].presets}
        if not set(args.presets.split(",")) & offered:
            ap.error(f"--presets {args.presets}: the chosen workloads run only {sorted(offered)}")
    if args.skip_missing:
        missing = {pkg: why for pkg in set(NEEDS.values()) if (why := import_error(pkg))}
        for c in [c for c in contenders if NEEDS.get(c) in missing]:
            print(f"skipped contender {c}: {NEEDS[c]} does not import ({missing[NEEDS[c]]})", flush=True)
        contenders = [c for c in contenders if NEEDS.get(c) not in missing]
    out = Path(args.out or Path(__file__).with_name(f"results-{args.device}.json"))
    info = machine(args.device)
    mem_method = PeakMemory(args.device).method
    report = {"machine": info, "args": vars(args), "peak_memory": mem_method, "rows": []}
    print(f"# meta-step benchmark — {info['device_name']}, torch {info['torch']}, {info['date']}")
    print(f"median ms over {args.repeats} rounds after {args.warmup} warm-up; peak memory: {mem_method}\n")

    for wname in names:
        wl = WORKLOADS[wname]
        wl = variant(wl, args.smoke, args.omniglot_pool)
        batch = make_batch(wl, args.device)
        row_contenders = list(contenders)
        if args.chunk_sweep and wname == "omniglot-20w1s":
            row_contenders += [f"metatuv-chunk{c}" for c in CHUNKS if f"metatuv-chunk{c}" not in row_contenders]
        presets = [p for p in wl.presets if args.presets is None or p in args.presets.split(",")]
        for preset in presets:
            checks = None
            if args.check:
                dtype = getattr(torch, args.check_dtype)
                checks = check_row(row_contenders, wl, preset, batch, args.device, dtype)
            res = time_row(row_contenders, wl, preset, batch, args)
            print(table(wl, preset, res, checks) + "\n", flush=True)
            row = {"workload": asdict(wl), "preset": preset, "results": res, "check": checks}
            row["check_dtype"] = args.check_dtype if checks is not None else None
            report["rows"].append(row)
            if args.profile:
                text = profile_row(args.profile_contender, wl, preset, batch, args)
                print(text, flush=True)
                row["profile"] = text
            info["loadavg_end"] = os.getloadavg()
            out.write_text(json.dumps(report, indent=2))  # after every row: a timeout keeps what was measured

    ratios = overhead_ratios(report["rows"])
    if ratios:
        print("TUV / MAML time (same workload, same run):")
        for line in ratios:
            print(f"  {line}")
    report["tuv_over_maml"] = ratios
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
