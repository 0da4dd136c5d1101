"""Time one full second-order meta-step and its peak memory for every inner-loop library, side by side.

Contenders (all on the same metatuv network, same parameters, same batch):

- ``higher``: ``higher.innerloop_ctx`` with SGD over the fast parameters, one task after another;
- ``learn2learn``: ``clone_module`` / ``update_module`` on the fast parameters, one task after another;
- ``func-loop``: naive torch.func, per task ``functional_call`` + ``autograd.grad(create_graph=True)``;
- ``func-vmap``: naive torch.func, the task function (``functional_call`` + ``torch.func.grad``) under ``vmap``;
- ``metatuv``: ``MetaLearner.backward`` with ``vectorize="auto"`` (the library's own path);
  ``metatuv-loop`` / ``metatuv-vmap`` force the vectorization, ``metatuv-higher`` / ``metatuv-learn2learn`` are
  metatuv's wrappers of those libraries, ``metatuv-chunkN`` sets ``chunk_size=N``.

The naive contenders are written here, as in ../shared/tools/peerbench.py. A meta-step is zero_grad, the inner
loop, the query loss, backward and an Adam step. Per workload the contenders run round-robin, one meta-step each
per round, so machine noise hits all of them alike and the ratios hold on a busy machine. Time is the median
over ``--repeats`` rounds after ``--warmup`` (CUDA synchronized around each step). Peak memory is measured on the
last warm-up step: CUDA ``max_memory_allocated`` above what was allocated before the step; CPU the process RSS
high-water mark (VmHWM, reset through /proc/self/clear_refs after ``malloc_trim``) above the RSS before the step.

Inputs are random tensors of the workload's shapes (no dataset needed): timing does not depend on the pixels.
This extends experiments/backends/time_meta_step.py (metatuv's backends on one workload) to the other libraries
and the issue's workloads.

    python experiments/benchmark/bench.py --workloads sinusoid,omniglot-5w1s --quick --check
    python experiments/benchmark/bench.py --device cuda --check --chunk-sweep
    python experiments/benchmark/bench.py --workloads sinusoid --contenders metatuv --profile 200
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import datetime
import gc
import io
import json
import math
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metatuv.inner.backends import _import_learn2learn as import_learn2learn  # silences gym's notice
from metatuv.meta import MetaLearner, cross_entropy, get_preset, mse
from metatuv.nn import TUVLayer, conv4, fast_names, mlp, split_params

Batch = tuple[Tensor, Tensor, Tensor, Tensor]  # x_support (t, S, ...), y_support, x_query (t, Q, ...), y_query
StepFn = Callable[[Batch], None]  # accumulates the meta-gradient of the mean query loss into .grad


@dataclass
class Workload:
    """One row of the issue: the network, the episode shapes, the inner loop and the presets to time."""

    name: str
    presets: tuple[str, ...]
    tasks: int  # meta-batch
    steps: int  # inner steps
    lr: float  # inner α
    shots: int
    queries: int
    ways: int = 1  # classes (1 for regression)
    in_channels: int = 0  # 0: sinusoid MLP
    hidden: int = 64
    image_size: int = 28
    pool: str = "stride"

    @property
    def classification(self) -> bool:
        return self.in_channels > 0

    def describe(self) -> str:
        if not self.classification:
            return (
                f"MLP 1-40-40-1, {self.shots} shots / {self.queries} queries, meta-batch {self.tasks}, "
                f"{self.steps} inner step(s), α={self.lr}"
            )
        return (
            f"conv4-{self.hidden} ({self.image_size}×{self.image_size}×{self.in_channels}, {self.pool} pooling, "
            f"primitive batch norm), {self.ways}-way {self.shots}-shot, {self.queries} queries/class, "
            f"meta-batch {self.tasks}, {self.steps} inner step(s), α={self.lr}"
        )


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "omniglot-5w1s", ("tuv", "maml"), tasks=32, steps=1, lr=0.4, shots=1, queries=15, ways=5, in_channels=1
        ),
        Workload("omniglot-20w1s", ("tuv",), tasks=16, steps=5, lr=0.1, shots=1, queries=15, ways=20, in_channels=1),
        Workload(
            "miniimagenet-5w1s",
            ("tuv",),
            tasks=4,
            steps=5,
            lr=0.01,
            shots=1,
            queries=15,
            ways=5,
            in_channels=3,
            hidden=32,
            image_size=84,
            pool="max",
        ),
        Workload("sinusoid", ("maml", "tuv"), tasks=4, steps=1, lr=0.01, shots=10, queries=10),
    )
}
NAIVE = ("higher", "learn2learn", "func-loop", "func-vmap")
METATUV = {  # name -> (backend, vectorize, compile)
    "metatuv": ("func", "auto", False),
    "metatuv-compiled": ("func", "auto", True),
    "metatuv-loop": ("func", "loop", False),
    "metatuv-vmap": ("func", "vmap", False),
    "metatuv-higher": ("higher", "loop", False),
    "metatuv-learn2learn": ("learn2learn", "loop", False),
}
DEFAULT_CONTENDERS = "higher,learn2learn,func-loop,func-vmap,metatuv"
NEEDS = {
    "higher": "higher",
    "metatuv-higher": "higher",
    "learn2learn": "learn2learn",
    "metatuv-learn2learn": "learn2learn",
}
CHUNKS = (8, 4, 2, 1)  # --chunk-sweep: metatuv-chunkN beside metatuv (chunk_size=None)


# ---------------------------------------------------------------- model and batch


def build_model(wl: Workload, preset: str, device: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The preset's metatuv network; T and V moved off the identity (seeded) so the check exercises them."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    if wl.classification:
        model = conv4(wl.ways, wl.in_channels, wl.hidden, wl.image_size, wl.pool, p.use_T, p.use_V, p.use_mask)
    else:
        model = mlp([1, 40, 40, 1], p.use_T, p.use_V, p.use_mask)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TUVLayer):
                for f in (m.T, m.V):
                    if f is not None:  # I + 0.05·N(0, 1/m): well conditioned, not the identity
                        f.add_(0.05 * torch.randn_like(f) / math.sqrt(f.shape[0]))
    return model.to(device=device, dtype=dtype)


def make_batch(wl: Workload, device: str, seed: int = 0) -> Batch:
    """Random inputs of the workload's shapes; labels 0..ways−1 in order (classification) or targets (regression)."""
    g = torch.Generator().manual_seed(seed)
    t, n_s, n_q = wl.tasks, wl.ways * wl.shots, wl.ways * wl.queries
    if not wl.classification:
        xs, xq = (10 * torch.rand(t, n, 1, generator=g) - 5 for n in (n_s, n_q))  # x ~ U[-5, 5]
        ys, yq = (torch.randn(t, n, 1, generator=g) for n in (n_s, n_q))
    else:
        c, hw = wl.in_channels, wl.image_size
        xs, xq = (torch.randn(t, n, c, hw, hw, generator=g) for n in (n_s, n_q))
        ys, yq = (torch.arange(wl.ways).repeat_interleave(k).expand(t, -1).contiguous() for k in (wl.shots, wl.queries))
    return tuple(b.to(device) for b in (xs, ys, xq, yq))  # type: ignore[return-value]


def cast_batch(batch: Batch, dtype: torch.dtype) -> Batch:
    return tuple(b.to(dtype) if b.is_floating_point() else b for b in batch)  # type: ignore[return-value]


# ---------------------------------------------------------------- contenders: one meta-gradient on a batch


def naive_higher(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    import higher

    params = dict(model.named_parameters())
    inner_opt = torch.optim.SGD([params[n] for n in fast_names(model)], lr=wl.lr)

    def run(batch: Batch) -> None:
        xs, ys, xq, yq = batch
        for i in range(len(xs)):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(wl.steps):
                    diffopt.step(loss(fnet(xs[i]), ys[i]))
                (loss(fnet(xq[i]), yq[i]) / len(xs)).backward()

    return run


def naive_learn2learn(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    l2l = import_learn2learn()
    names = fast_names(model)

    def run(batch: Batch) -> None:
        xs, ys, xq, yq = batch
        for i in range(len(xs)):
            clone = l2l.clone_module(model)
            for _ in range(wl.steps):
                ps = dict(clone.named_parameters())
                g = torch.autograd.grad(loss(clone(xs[i]), ys[i]), [ps[n] for n in names], create_graph=True)
                updates = {n: -wl.lr * gi for n, gi in zip(names, g, strict=True)}
                l2l.update_module(clone, updates=[updates.get(n) for n in ps])
            (loss(clone(xq[i]), yq[i]) / len(xs)).backward()

    return run


def naive_func_loop(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    def run(batch: Batch) -> None:
        fast0, static = split_params(model)
        xs, ys, xq, yq = batch
        total = 0.0
        for i in range(len(xs)):
            fast = dict(fast0)
            for _ in range(wl.steps):
                support = loss(functional_call(model, {**static, **fast}, (xs[i],)), ys[i])
                g = torch.autograd.grad(support, list(fast.values()), create_graph=True)
                fast = {n: p - wl.lr * gi for (n, p), gi in zip(fast.items(), g, strict=True)}
            total = total + loss(functional_call(model, {**static, **fast}, (xq[i],)), yq[i])
        (total / len(xs)).backward()

    return run


def naive_func_vmap(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
    def run(batch: Batch) -> None:
        fast0, static = split_params(model)

        def inner_loss(fast, x, y):
            return loss(functional_call(model, {**static, **fast}, (x,)), y)

        def task(fast, xs, ys, xq, yq):
            for _ in range(wl.steps):
                g = grad(inner_loss)(fast, xs, ys)
                fast = {n: fast[n] - wl.lr * g[n] for n in fast}
            return inner_loss(fast, xq, yq)

        vmap(task, in_dims=(None, 0, 0, 0, 0))(fast0, *batch).mean().backward()

    return run


def metatuv_step(backend: str, vectorize: str, compile: bool = False, chunk_size: int | None = None):
    def make(model: nn.Module, wl: Workload, preset: str, loss: Callable) -> StepFn:
        learner = MetaLearner.from_preset(
            model,
            get_preset(preset),
            loss,
            wl.lr,
            wl.steps,
            backend=backend,
            vectorize=vectorize,
            chunk_size=chunk_size,
            compile=compile,
        )
        return learner.backward  # the generator only draws MT-net masks; none here

    return make


def contender_factory(name: str):
    if name in METATUV:
        return metatuv_step(*METATUV[name])
    if name.startswith("metatuv-chunk"):
        return metatuv_step("func", "auto", chunk_size=int(name.removeprefix("metatuv-chunk")))
    return {
        "higher": naive_higher,
        "learn2learn": naive_learn2learn,
        "func-loop": naive_func_loop,
        "func-vmap": naive_func_vmap,
    }[name]


# ---------------------------------------------------------------- measurement


def import_error(package: str) -> str | None:
    """Why ``package`` does not import (None when it does): the line that says why a contender is skipped."""
    try:
        import_learn2learn() if package == "learn2learn" else __import__(package)
    except Exception as err:  # learn2learn can fail for other reasons than absence (its gym import)
        return f"{type(err).__name__}: {err}"
    return None


def progress(msg: str) -> None:
    """One line per phase on stderr (the table goes to stdout): shows where a long or cut-off run was."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one step above the memory live before it, in MiB (see module docstring for the method)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.libc = None
        with contextlib.suppress(OSError):
            self.libc = ctypes.CDLL("libc.so.6")
        self.method = "cuda max_memory_allocated − memory_allocated before the step"
        if not device.startswith("cuda"):
            self.method = "process RSS high-water (VmHWM) − RSS before the step"
            if not self._reset_hwm():
                self.method = "ru_maxrss growth during the step (lower bound: the high-water mark cannot be reset)"

    def _reset_hwm(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := VmRSS
            return _proc_status_kib("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            sync(self.device)
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        if self.libc is not None:
            self.libc.malloc_trim(0)  # hand freed heap back, so RSS before is the live memory
        self.hwm = self._reset_hwm()
        self.base = self._cpu_peak() if not self.hwm else _proc_status_kib("VmRSS") * 1024

    def _cpu_peak(self) -> int:
        if self.hwm:
            return _proc_status_kib("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def stop(self) -> float:
        if self.device.startswith("cuda"):
            sync(self.device)
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return max(self._cpu_peak() - self.base, 0) / 2**20


def meta_grads(name: str, wl: Workload, preset: str, batch: Batch, device: str, dtype: torch.dtype) -> dict:
    """The meta-gradient of one contender on ``batch`` from the initial parameters (no optimizer step)."""
    model = build_model(wl, preset, device, dtype)
    loss = cross_entropy if wl.classification else mse
    contender_factory(name)(model, wl, preset, loss)(cast_batch(batch, dtype))
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() for n, p in model.named_parameters()}


def check_row(names: list[str], wl: Workload, preset: str, batch: Batch, device: str, dtype: torch.dtype) -> dict:
    """Max |meta-gradient − metatuv's| per contender (and the reference's max |g|, for scale)."""
    ref = meta_grads("metatuv", wl, preset, batch, device, dtype)
    scale = max(g.abs().max().item() for g in ref.values())
    out = {}
    for name in names:
        progress(f"{wl.name}/{preset}: check {name}")
        try:
            g = ref if name == "metatuv" else meta_grads(name, wl, preset, batch, device, dtype)
            out[name] = {"max_abs_diff": max((g[n] - ref[n]).abs().max().item() for n in ref), "ref_max_abs": scale}
        except Exception as e:  # reported in the table, the timing still runs (or reports the same error)
            out[name] = {"error": repr(e)[:300]}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


class Runner:
    """One contender's model, optimizer and meta-step."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.times: list[float] = []
        self.error: str | None = None
        self.peak_mib: float | None = None

    def build(self, wl: Workload, preset: str, device: str) -> Runner:
        self.model = build_model(wl, preset, device, torch.float32)
        loss = cross_entropy if wl.classification else mse
        self.fn = contender_factory(self.name)(self.model, wl, preset, loss)
        # the same fused Adam for every contender (metatuv's default; the inner loop is what is compared)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        return self

    def step(self, batch: Batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.fn(batch)
        self.opt.step()


def time_row(names: list[str], wl: Workload, preset: str, batch: Batch, args) -> dict[str, dict]:
    """Warm up every contender (peak memory on the last warm-up step), then time them round-robin."""
    dev, mem = args.device, PeakMemory(args.device)
    runners: list[Runner] = []
    for name in names:
        r = Runner(name)
        progress(f"{wl.name}/{preset}: warm up {name}")
        try:
            r.build(wl, preset, dev)
            for k in range(args.warmup):
                if k == args.warmup - 1:
                    mem.start()
                r.step(batch)
            r.peak_mib = mem.stop()
        except Exception as e:  # a contender that cannot run here is reported, not hidden
            r.error = repr(e)[:300]
            r.model = r.fn = r.opt = None  # free what it holds (CUDA OOM)
        runners.append(r)
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    live = [r for r in runners if r.error is None]
    for rnd in range(args.repeats):
        progress(f"{wl.name}/{preset}: round {rnd + 1}/{args.repeats}")
        order = live[rnd % len(live) :] + live[: rnd % len(live)] if live else []  # rotate: no fixed position
        for r in order:
            if r.error is not None:
                continue
            try:
                sync(dev)
                start = time.perf_counter()
                r.step(batch)
                sync(dev)
                r.times.append(time.perf_counter() - start)
            except Exception as e:
                r.error = repr(e)[:300]
    out = {}
    for r in runners:
        ms = [1000 * t for t in r.times]
        out[r.name] = {
            "ms": round(statistics.median(ms), 3) if ms else None,
            "ms_all": [round(t, 3) for t in ms],
            "peak_mib": None if r.peak_mib is None else round(r.peak_mib, 1),
            "error": r.error,
        }
    return out


def profile_row(name: str, wl: Workload, preset: str, batch: Batch, args) -> str:
    """cProfile (and optionally torch.profiler) of ``args.profile`` meta-steps of one contender."""
    r = Runner(name).build(wl, preset, args.device)
    for _ in range(max(args.warmup, 1)):
        r.step(batch)
    sync(args.device)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(args.profile):
        r.step(batch)
    sync(args.device)
    prof.disable()
    wall = time.perf_counter() - start
    s = io.StringIO()
    s.write(f"{args.profile} meta-steps of {name} on {wl.name}/{preset}: {wall:.2f} s under cProfile ")
    s.write(f"({args.profile / wall:.1f} steps/s with the profiler's overhead)\n")
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.profile_top)
    if args.profile_torch:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=acts) as tp:
            for _ in range(args.profile):
                r.step(batch)
            sync(args.device)
        key = "cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
        s.write(f"\ntorch.profiler, {args.profile} meta-steps, top {args.profile_top} ops by {key}:\n")
        s.write(tp.key_averages().table(sort_by=key, row_limit=args.profile_top))
    return s.getvalue()


# ---------------------------------------------------------------- report


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(wl: Workload, preset: str, res: dict[str, dict], checks: dict[str, dict] | None) -> str:
    base = res.get("higher", {}).get("ms")
    head = "| contender | ms/step | speedup vs higher | peak MiB |"
    sep = "|---|---:|---:|---:|"
    if not wl.classification:
        head, sep = head + " steps/s |", sep + "---:|"
    if checks is not None:
        head, sep = head + " max abs Δ meta-grad vs metatuv |", sep + "---:|"
    lines = [f"**{wl.name} / {preset}**: {wl.describe()}", "", head, sep]
    for name, r in res.items():
        if r["error"] is not None:
            lines.append(f"| {name} | failed: {r['error'][:90]} | | |" + (" |" if not wl.classification else ""))
            continue
        ms = r["ms"]
        cells = [name, fmt(ms, ".1f"), (f"{base / ms:.2f}×" if base and ms else "—"), fmt(r["peak_mib"], ".1f")]
        if not wl.classification:
            cells.append(fmt(1000 / ms if ms else None, ".0f"))
        if checks is not None:
            c = checks.get(name, {})
            cells.append(c["error"][:60] if "error" in c else fmt(c.get("max_abs_diff"), ".2e"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    else:
        info["device_name"] = f"{info['cpu']} ({torch.get_num_threads()} torch threads of {os.cpu_count()} CPUs)"
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parents[2]
        git = ["git", "-C", str(root)]
        info["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout)
    return info


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
    bad = [c for c in contenders if c not in NAIVE and c not in METATUV and not c.startswith("metatuv-chunk")]
    if unknown or bad:
        ap.error(f"unknown workloads {unknown} / contenders {bad}")
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
        if args.smoke:
            wl = Workload(**{**asdict(wl), "tasks": 2, "queries": 1, "hidden": 8, "image_size": 28})
        if wl.classification and wl.image_size == 28:
            wl = Workload(**{**asdict(wl), "pool": args.omniglot_pool})
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


def overhead_ratios(rows: list[dict]) -> list[str]:
    by = {(r["workload"]["name"], r["preset"]): r["results"] for r in rows}
    lines = []
    for (w, p), res in by.items():
        if p != "tuv" or (w, "maml") not in by:
            continue
        for name, r in res.items():
            m = by[(w, "maml")].get(name, {})
            if r.get("ms") and m.get("ms"):
                lines.append(f"{w} {name}: {r['ms']:.1f} / {m['ms']:.1f} ms = {r['ms'] / m['ms']:.2f}×")
    return lines


if __name__ == "__main__":
    main()
