"""Build a Python environment like the lent GPU machine's: torch and the few packages its image has, nothing else.

    python experiments/benchmark/torch_only_env.py /tmp/env   # then /tmp/env/bin/python

A fresh venv (with pip, offline) whose site-packages gets a ``.pth`` pointing at a folder of symlinks to exactly
the distributions below and their requirements, taken from the running interpreter's environment. Nothing is
downloaded or copied. hydra-core, omegaconf, higher, learn2learn and wandb are absent unless a listed package
requires them (none does), so ``run_gpu.sh --smoke`` tests that the carried wheels alone make the GPU run work.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

# The lent machine's image holds these (see the device tool's KINDS.md); the rest of its list is not needed here.
AVAILABLE_THERE = (
    "torch",
    "torchvision",
    "numpy",
    "matplotlib",
    "tqdm",
    "pyyaml",
    "pytest",
    "pillow",
    "scipy",
    "requests",
    "cython",
)
ABSENT_THERE = {"hydra-core", "omegaconf", "antlr4-python3-runtime", "higher", "learn2learn", "wandb", "metatuv"}


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(roots: tuple[str, ...]) -> dict[str, md.Distribution]:
    """The named distributions and, recursively, what they require (markers evaluated, extras ignored)."""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = norm(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # optional on this platform, or not installed here: the environment goes without it
        found[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    bad = ABSENT_THERE & found.keys()
    if bad:
        raise SystemExit(f"torch_only_env: {sorted(bad)} would come in through {roots}; the lent machine lacks them")
    return found


def link_all(dists: dict[str, md.Distribution], into: Path) -> int:
    """Symlink every top-level file or folder of each distribution (its modules and its .dist-info) into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    n = 0
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, into / top
            if src.exists() and not dst.exists() and top not in ("bin", "__pycache__"):
                dst.symlink_to(src)
                n += 1
    return n


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python torch_only_env.py DEST (a new folder)")
    dest = Path(sys.argv[1]).resolve()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(dest)], check=True)
    py = dest / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    dists = closure(AVAILABLE_THERE)
    n = link_all(dists, dest / "available")
    (site / "available.pth").write_text(str(dest / "available") + "\n")
    print(f"{dest}: {len(dists)} distributions ({n} links): {' '.join(sorted(dists))}")
    check = "import torch, importlib.util as u; print('torch', torch.__version__); "
    check += "assert not any(u.find_spec(m) for m in ('hydra', 'omegaconf', 'higher', 'learn2learn', 'wandb'))"
    subprocess.run([py, "-c", check], check=True, cwd="/")


if __name__ == "__main__":
    main()
