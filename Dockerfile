# syntax=docker/dockerfile:1
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
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    STACKBOT_DATA_DIR=/data STACKBOT_LOG_FORMAT=json \
    MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/cache
RUN useradd --create-home --uid 10001 stackbot && mkdir /data && chown stackbot /data
# LightGBM's wheel links the system OpenMP runtime (torch brings its own): the library alone,
# from the build stage, so this stage installs no package at all
COPY --from=build /usr/lib/x86_64-linux-gnu/libgomp.so.1* /usr/lib/x86_64-linux-gnu/
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels /tmp/requirements.lock /root/.cache \
    && pip uninstall -y pip
USER stackbot
WORKDIR /home/stackbot
VOLUME ["/data"]
ENTRYPOINT ["stackbot"]
CMD ["run", "--mode", "paper"]
