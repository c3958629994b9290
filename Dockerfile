# syntax=docker/dockerfile:1
# The stageline image: one package, three roles (api, worker, projector) picked by the
# command. Built by compose.yaml; the default command serves the HTTP API.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY stageline ./stageline
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    STAGELINE_LOG_FORMAT=json \
    STAGELINE_DATA_DIR=/var/lib/stageline
RUN groupadd --system --gid 10001 stageline \
    && useradd --system --uid 10001 --gid stageline --home-dir /var/lib/stageline \
       --create-home --shell /usr/sbin/nologin stageline
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER stageline
WORKDIR /var/lib/stageline
EXPOSE 8000
CMD ["stageline", "api", "--host", "0.0.0.0", "--port", "8000"]
