# metatuv on a CUDA machine. The install is the README's recipe (one `pip install -r requirements-dev.txt` into a
# venv); the pinned torch==2.14.1 wheel from PyPI is a CUDA build that carries its own CUDA runtime (nvidia-* wheels),
# so the base needs Python 3.11 only and the host only the NVIDIA driver + container toolkit.
#   docker build -t metatuv .
#   docker run --gpus all -v /path/to/data:/data:ro -v "$PWD/outputs:/app/outputs" metatuv benchmark=omniglot device=cuda
FROM python:3.11.11-slim-bookworm

# gcc: learn2learn 0.2.0 regenerates and compiles its C sources on Python 3.11 (see requirements-dev.txt)
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 metatuv
WORKDIR /app
RUN chown 1000:1000 /app
USER 1000:1000

ENV VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    METATUV_DATA_ROOT=/data \
    METATUV_CACHE_DIR=/app/.cache/metatuv \
    WANDB_MODE=offline \
    PYTHONUNBUFFERED=1

# dependencies first (cached layer): requirements-dev.txt ends with `-e .`, so the package files must be present
COPY --chown=1000:1000 pyproject.toml README.md requirements-dev.txt ./
COPY --chown=1000:1000 metatuv ./metatuv
COPY --chown=1000:1000 conf ./conf
RUN python3 -m venv .venv && pip install --no-cache-dir -r requirements-dev.txt

COPY --chown=1000:1000 tests ./tests
COPY --chown=1000:1000 experiments ./experiments

ENTRYPOINT ["metatuv-train"]
CMD []
