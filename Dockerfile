# syntax=docker/dockerfile:1
# unblock-service: API + in-process worker. Scale out with more `unblock worker` containers
# against one PostgreSQL (see docker-compose.yml and docs/operations.md).

FROM python:3.12-slim AS build
WORKDIR /src
# The image holds exactly what uv.lock says: uv (pinned and hash-checked, as `make` installs it)
# exports the lock's runtime packages with their hashes, and pip fetches and checks them.
COPY requirements-uv.txt ./
RUN pip install --no-cache-dir --require-hashes --only-binary :all: --no-deps -r requirements-uv.txt
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-emit-project --no-header --format requirements-txt > requirements.txt \
 && pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.txt
COPY README.md alembic.ini ./
COPY alembic ./alembic
COPY ps_scripts ./ps_scripts
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UNBLOCK_LOG_FORMAT=json \
    UNBLOCK_DATABASE_URL=sqlite:////var/lib/unblock/unblock.db
RUN groupadd --system --gid 10001 unblock \
 && useradd --system --uid 10001 --gid unblock --home-dir /var/lib/unblock --create-home --shell /usr/sbin/nologin unblock
COPY --from=build /wheels /wheels
# --no-deps: the wheels are the whole set (the lock's runtime packages and the service); pip check
# proves it.
RUN pip install --no-cache-dir --no-index --no-deps /wheels/*.whl && rm -rf /wheels && pip check
USER unblock:unblock
WORKDIR /var/lib/unblock
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["unblock", "serve", "--host", "0.0.0.0", "--port", "8000"]
