"""How the benchmark reports: the markdown table of one row, the machine it ran on, the TUV / MAML time ratios."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch
from workloads import Workload


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
