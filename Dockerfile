# syntax=docker/dockerfile:1
# Choose the image with the build argument TORCH:
#   docker build .                          CPU torch (the default; no CUDA runtime)
#   docker build --build-arg TORCH=cuda .   PyPI's CUDA torch and its CUDA runtime (several
#                                           GB; run it with docker-compose.gpu.yml)
# The image installs exactly what requirements.lock pins, hash-checked (.ci/lock regenerates it;
# CI audits it with pip-audit). The final stage has no compiler (python:3.11-slim ships none),
# no pip cache and no pip; it runs as an unprivileged user and works on a read-only root
# filesystem: everything it writes goes to /data (a volume) or /tmp (a tmpfs in compose).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY strategies ./strategies
COPY models ./models
COPY risk ./risk
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG TORCH=cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    STACKBOT_DATA_DIR=/data STACKBOT_LOG_FORMAT=json \
    MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/cache
RUN useradd --create-home --uid 10001 stackbot && mkdir /data && chown stackbot /data
# LightGBM's wheel links the system OpenMP runtime (torch brings its own): the library alone,
# from the build stage, so this stage installs no package at all
COPY --from=build /usr/lib/x86_64-linux-gnu/libgomp.so.1* /usr/lib/x86_64-linux-gnu/
COPY requirements.lock requirements-cuda.lock /tmp/
COPY --from=build /wheels /wheels
RUN case "$TORCH" in \
      cpu) pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu \
             "torch==${TORCH_VERSION}+cpu" ;; \
      cuda) pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-cuda.lock ;; \
      *) echo "TORCH must be cpu or cuda, not '$TORCH'" >&2; exit 2 ;; \
    esac \
    && pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels /tmp/requirements.lock /tmp/requirements-cuda.lock /root/.cache \
    && pip uninstall -y pip
USER stackbot
WORKDIR /home/stackbot
VOLUME ["/data"]
# the heartbeat: the engine loop committed within the last 3 minutes (metrics must be on)
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["stackbot", "healthcheck", "--max-age", "180"]
ENTRYPOINT ["stackbot"]
CMD ["run", "--mode", "paper"]
