# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY strategies ./strategies
COPY models ./models
COPY risk ./risk
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 STACKBOT_DATA_DIR=/data STACKBOT_LOG_FORMAT=json
RUN useradd --create-home --uid 10001 stackbot && mkdir /data && chown stackbot /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER stackbot
WORKDIR /home/stackbot
VOLUME ["/data"]
ENTRYPOINT ["stackbot"]
CMD ["run", "--mode", "paper"]
