"""How the benchmark measures: the gradient check, round-robin timing, peak memory and the profile of one contender.

A meta-step is zero_grad, the inner loop, the query loss, backward and an Adam step. Per workload the contenders run
round-robin, one meta-step each per round, so machine noise hits all of them alike and the ratios hold on a busy
machine. Time is the median over ``--repeats`` rounds after ``--warmup`` (CUDA synchronized around each step). Peak
memory is measured on the last warm-up step: CUDA ``max_memory_allocated`` above what was allocated before the step;
CPU the process RSS high-water mark (VmHWM, reset through /proc/self/clear_refs after ``malloc_trim``) above the RSS
before the step.
"""

from __future__ import annotations

import contextlib
import cProfile
import ctypes
import gc
import io
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from contenders import contender_factory
from workloads import Batch, Workload, build_model, cast_batch, loss_fn


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
    """Peak memory of one step above the memory live before it, in MiB (see the module docstring for the method)."""

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
    contender_factory(name)(model, wl, preset, loss_fn(wl))(cast_batch(batch, dtype))
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
        self.fn = contender_factory(self.name)(self.model, wl, preset, loss_fn(wl))
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
