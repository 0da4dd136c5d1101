"""The Dockerfile installs exactly as the README's Quickstart does (no Docker engine here to build it)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_uses_the_readme_install_recipe():
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"^python3 -m venv \.venv && source \.venv/bin/activate && (pip install -r \S+)$", readme, re.M)
    assert setup, "README Quickstart setup line not found"
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(
        r"^RUN python3 -m venv \.venv && pip install --no-cache-dir -r requirements-dev\.txt$", docker, re.M
    )
    assert setup.group(1) == "pip install -r requirements-dev.txt"
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm$", docker, re.M)  # pinned, Python 3.11 as tested
    assert re.search(r"^USER 1000:1000$", docker, re.M)  # non-root
    assert 'ENTRYPOINT ["metatuv-train"]' in docker
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data/", "outputs/"} <= set(ignored)
