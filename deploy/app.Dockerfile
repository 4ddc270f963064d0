# The api and the worker: one image, two commands.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgwa pgwa
COPY api api
COPY worker worker
COPY sim sim
COPY db db
COPY scripts scripts
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
