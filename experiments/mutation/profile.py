"""Mutation-test one part of the core with the tests written for it (a narrower selection than pyproject's).

    python experiments/mutation/profile.py nn            # nn/tuv, weightview, convert, models, fast_names
    python experiments/mutation/profile.py inner         # inner/backends, backtrack
    python experiments/mutation/profile.py meta          # meta/learner, loop, evaluate
    python experiments/mutation/profile.py nn --names "metatuv.nn.tuv.x_tuvify__mutmut_3" ...   # re-check some

The functions of these modules sit under nearly every forward and meta-step, so pyproject's selection runs most of
the suite for each of their mutants (hours on 2 cores). A profile checks them with the test files that target them.
It works in a git worktree (``--dir``; made at HEAD if missing, else moved to HEAD) whose pyproject gets the profile's
selection (mutmut reads only ``[tool.mutmut]``, and a changed selection resets its database: one worktree per
profile), runs ``mutmut run`` on the profile's functions (or ``--names``, then every mutant of the profile still not
checked: those of functions changed since the last run) and writes each mutant's status to
``experiments/mutation/run4/<profile>.txt``. Survivors are then killed by new tests or listed in equivalent.txt;
``summarize.py --file run4/<profile>.txt`` scores them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

PROFILES: dict[str, tuple[list[str], list[str]]] = {
    "nn": (
        [
            "metatuv.nn.tuv*",
            "metatuv.nn.weightview*",
            "metatuv.nn.convert*",
            "metatuv.nn.models*",
            "metatuv.nn.params.x_fast_names*",
        ],
        [
            "tests/test_tuv.py",
            "tests/test_derivation.py",
            "tests/test_bounded.py",
            "tests/test_core_details.py",
            "tests/test_reference.py",
        ],
    ),
    "inner": (
        ["metatuv.inner.backends*", "metatuv.inner.backtrack*"],
        [
            "tests/test_backends.py",
            "tests/test_reference.py",
            "tests/test_inner.py",
            "tests/test_backtrack.py",
            "tests/test_core_details.py",
        ],
    ),
    "meta": (
        ["metatuv.meta.learner*", "metatuv.meta.loop*", "metatuv.meta.evaluation.x_evaluate*"],
        [
            "tests/test_meta.py",
            "tests/test_presets.py",
            "tests/test_protocol.py",
            "tests/test_core_details.py",
            "tests/test_config_overrides.py",
            "tests/test_inner.py",
            "tests/test_backends.py",
            "tests/test_config_keys.py",
            "tests/test_failures.py",
            "tests/test_sinusoid.py",
            "--deselect",
            "tests/test_sinusoid.py::test_short_meta_training_beats_uninitialized_baseline",  # 600 meta-steps
        ],
    ),
}


def narrow_pyproject(text: str, tests: list[str]) -> str:
    """pyproject text with ``pytest_add_cli_args_test_selection`` replaced by ``tests`` (fast tests only)."""
    items = [*tests, "-m", "not slow and not data"]  # "--deselect X" pairs may follow the test files
    block = "pytest_add_cli_args_test_selection = [\n" + "".join(f'    "{t}",\n' for t in items) + "]\n"
    new, n = re.subn(r"^pytest_add_cli_args_test_selection = \[\n(?:.*\n)*?\]\n", block, text, flags=re.M)
    if n != 1:
        sys.exit("pyproject.toml has no pytest_add_cli_args_test_selection list under [tool.mutmut]")
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--dir", type=Path, help="worktree to run in (default: ../mutmut-<profile> beside the repo)")
    parser.add_argument("--names", nargs="+", help="mutants (or globs) to check instead of the profile's functions")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    functions, tests = PROFILES[args.profile]
    work = args.dir or ROOT.parent / f"mutmut-{args.profile}"
    if not work.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(work), "HEAD"], check=True)
    else:  # move it to this commit: mutmut re-checks the changed functions and keeps the other results
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        subprocess.run(["git", "-C", str(work), "checkout", "-q", "--", "pyproject.toml"], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "-q", "--detach", head.strip()], check=True)
    pyproject = work / "pyproject.toml"
    pyproject.write_text(narrow_pyproject(pyproject.read_text(), tests))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/ first on sys.path
    env.setdefault("OMP_NUM_THREADS", "1")
    prefixes = tuple(f.rstrip("*") for f in functions)

    def run(names: list[str]) -> None:
        mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        subprocess.run([*mutmut, *names], cwd=work, env=env)

    def statuses() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip().startswith(prefixes))

    run(args.names or functions)
    rest = [line.split(": ")[0] for line in statuses() if line.endswith(": not checked")]
    if rest:  # functions changed since the worktree's last run (mutmut reset them), or an interrupted run
        run(rest)
    lines = statuses()
    dest = HERE / "run4" / f"{args.profile}.txt"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text("".join(f"{line}\n" for line in lines))
    print(f"{len(lines)} mutants -> {dest.relative_to(ROOT)}")
    unchecked = sum(line.endswith(": not checked") for line in lines)
    if unchecked:  # e.g. mutmut's clean run of the selection failed (a flaky or broken test): no score from this
        sys.exit(f"{unchecked} mutants are still not checked (see mutmut's output above); fix the cause and rerun.")


if __name__ == "__main__":
    main()
