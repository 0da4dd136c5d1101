"""Config keys that moved, old spelling → new (plain data: read by the schema, the entry points, resume and the
report, which must not import Hydra). A command line or ``+key`` using an old spelling fails naming the new key;
configs stored by older runs (checkpoints, results.json, .hydra/overrides.yaml) are read with the new spelling."""

from __future__ import annotations

MOVED = {f"logger.{k}": f"monitor.{k}" for k in ("every", "eval_every", "eval_tasks", "images_every")}
