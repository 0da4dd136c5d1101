"""Score and survivors of the last `mutmut run` (run from the repository root, after or during a run).

    python experiments/mutation/summarize.py            # per-module counts and the score
    python experiments/mutation/summarize.py --diffs    # ... and every surviving mutant's diff
    python experiments/mutation/summarize.py --file run4/nn.txt   # the statuses profile.py wrote

Score = killed (incl. timeouts) / (checked − equivalent), with the equivalent mutants named in
experiments/mutation/equivalent.txt (one mutant name per line, then ``#`` and the reason).
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KILLED = {"killed", "timeout"}
ALIVE = {"survived", "no tests", "suspicious"}


def results() -> dict[str, str]:
    """name -> status: from ``--file F`` (lines "name: status", as profile.py writes them) or ``mutmut results``."""
    if "--file" in sys.argv:
        out = (HERE / sys.argv[sys.argv.index("--file") + 1]).read_text()
    else:
        out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        if "__mutmut_" in line and ": " in line:
            name, state = line.strip().rsplit(": ", 1)
            status[name] = state
    return status


def equivalent() -> dict[str, str]:
    path = HERE / "equivalent.txt"
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition("#")
            out[name.strip()] = reason.strip()
    return out


def module(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def main() -> None:
    status, eq = results(), equivalent()
    per = collections.defaultdict(collections.Counter)
    for name, state in status.items():
        per[module(name)]["equivalent" if name in eq and state in ALIVE else state] += 1
    cols = ["killed", "timeout", "survived", "equivalent", "no tests", "suspicious", "not checked"]
    print("| module | " + " | ".join(cols) + " | score |")
    print("|---" * (len(cols) + 2) + "|")
    total = collections.Counter()
    for mod in sorted(per):
        c = per[mod]
        total.update(c)
        print(f"| {mod} | " + " | ".join(str(c[k]) for k in cols) + f" | {score(c)} |")
    print("| **all** | " + " | ".join(str(total[k]) for k in cols) + f" | {score(total)} |")
    alive = sorted(n for n, s in status.items() if s in ALIVE and n not in eq)
    print(f"\nsurvivors not marked equivalent: {len(alive)}")
    for name in alive:
        print(f"- {name} ({status[name]})")
        if "--diffs" in sys.argv:
            diff = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
            print("".join(f"    {line}\n" for line in diff.splitlines() if line[:2] in ("- ", "+ ")), end="")


def score(c: collections.Counter) -> str:
    killed = c["killed"] + c["timeout"]
    counted = killed + c["survived"] + c["no tests"] + c["suspicious"]
    return f"{100 * killed / counted:.1f}%" if counted else "-"


if __name__ == "__main__":
    main()
