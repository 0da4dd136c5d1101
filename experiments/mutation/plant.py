"""Plant each of issue 22's eight bugs in turn, run the relevant test files, record the failing tests, restore the file.

python experiments/mutation/plant.py        # all eight;  ... plant.py 3 5: only bugs 3 and 5
"""

import pathlib
import re
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[2]  # the repository root
BUGS = [
    (
        "1 evaluate adapts on the query set",
        "metatuv/meta/evaluation.py",
        "adapted = learner.adapt_task(params, xs, ys, steps, extra, backtrack)",
        "adapted = learner.adapt_task(params, xq, yq, steps, extra, backtrack)",
    ),
    (
        "2 CI with n instead of n-1",
        "metatuv/meta/evaluation.py",
        "values.std(unbiased=True)",
        "values.std(unbiased=False)",
    ),
    (
        "3 inner.first_order ignored (preset's flag used)",
        "metatuv/meta/learner.py",
        'kw["first_order"] = kw.get("first_order", False) or preset.first_order',
        'kw["first_order"] = preset.first_order',
    ),
    ("4 outer.clip ignored", "metatuv/meta/loop.py", "clip if clip is not None else math.inf", "math.inf"),
    (
        "5 rotate=train rotates every split",
        "metatuv/data/fewshot.py",
        'rotate == "all" or (rotate == "train" and split == "train")',
        'rotate in ("all", "train")',
    ),
    (
        "6 BatchNorm unbiased variance",
        "metatuv/nn/norm.py",
        "var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)",
        "var = x.var(dim=dims, keepdim=True, unbiased=True)",
    ),
    (
        "7 Meta-Curvature conv uses M_f, not M_f^T",
        "metatuv/inner/transforms.py",
        "(g.flatten(2) @ params[factors[n][2]].T)",
        "(g.flatten(2) @ params[factors[n][2]])",
    ),
    (
        "8 inner rule ignores mask_temperature",
        "metatuv/meta/rule.py",
        "steps.append(tf.mask(gates, self.temperature))",
        "steps.append(tf.mask(gates, 1.0))",
    ),
]
FILES = [
    "tests/test_protocol.py",
    "tests/test_config_keys.py",
    "tests/test_meta.py",
    "tests/test_presets.py",
    "tests/test_backends.py",
    "tests/test_tuv.py",
    "tests/test_inner.py",
    "tests/test_data_formats.py",
    "tests/test_sinusoid.py",
]
which = [int(a) for a in sys.argv[1:]] or range(1, 9)
for i in which:
    name, path, old, new = BUGS[i - 1]
    f = root / path
    text = f.read_text()
    assert text.count(old) == 1, (name, old)
    f.write_text(text.replace(old, new))
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *FILES,
                "-m",
                "not slow and not data",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rf",
                "--no-header",
                "--tb=no",
            ],
            cwd=root,
            capture_output=True,
            text=True,
        )
        failed = re.findall(r"^FAILED (\S+)", out.stdout, re.M)
        summary = out.stdout.strip().splitlines()[-1]
    finally:
        f.write_text(text)
    print(f"## bug {name}\n- {path}: `{old}` -> `{new}`\n- {summary}")
    for t in failed:
        print(f"  - {t}")
    sys.stdout.flush()
