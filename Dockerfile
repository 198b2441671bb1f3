# The project image: the flow, the worker entry point and the local Faker API.
#   docker compose up --build        (see docker-compose.yml and the README, "Run as a service")
FROM python:3.11-slim

# Debian's chromium renders the Plotly charts (kaleido); no downloaded browser at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium \
    && rm -rf /var/lib/apt/lists/*

# uv from PyPI, like the Makefile, so the image needs no registry besides Debian's and PyPI;
# pinned, so a build next month resolves uv.lock with the same uv.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV PROJECT_DIR=/app \
    ARROW_DEFAULT_MEMORY_POOL=jemalloc \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BROWSER_PATH=/usr/bin/chromium \
    PREFECT_HOME=/home/app/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
WORKDIR /app

# Dependencies first, exactly as locked, so code changes do not reinstall them. uv's download
# cache lives in a BuildKit cache mount (Docker 23+): a rebuild after a lock change downloads only
# what changed, and the cache never ends up in the image (UV_LINK_MODE=copy: it is another file
# system). The dask extra too: a Dask cluster's workers run this image (TASK_RUNNER=dask).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra dask --no-install-project

COPY flows/ flows/
COPY tasks/ tasks/
COPY local_api/ local_api/
COPY expectations/ expectations/
COPY prefect.yaml automations.yaml ./
# The app user cannot write __pycache__ under /app: compile the project's modules now, as uv
# compiled the dependencies (UV_COMPILE_BYTECODE), so no run compiles them from source.
RUN python -m compileall -q flows tasks local_api

# Non-root; it owns only the output folders (mounted as volumes by compose) and its home.
# gx: Great Expectations' Data Docs, beside the lake (GX_DIR).
RUN useradd --create-home --uid 10001 app \
    && mkdir -p data_lake db gx \
    && chown app:app data_lake db gx
USER app

# The compose file picks the command per service; a worker is the default.
CMD ["python", "-m", "flows.service", "worker"]
