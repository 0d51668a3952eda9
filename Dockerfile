# One image for all four services; the command picks the service (python -m services.<name>).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY deploy/__init__.py ./deploy/__init__.py
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# /app stays root's; the service's relative state paths (.run/blobs, .run/letters, SQLite files) live in /app/.run, which
# uid 10001 owns. Named volumes mounted there start with the image directory's owner (docker-compose.yml).
RUN useradd --system --uid 10001 --home /app ozg \
    && mkdir -p /app/.run/blobs /app/.run/letters && chown -R 10001 /app/.run
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001
EXPOSE 8001 8002 8003 8004
CMD ["python", "-m", "services.intake"]
