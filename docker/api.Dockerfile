# Control plane: FastAPI under uvicorn. Runs the migrations, then serves.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# the API imports mec_core's config only; the CPU build of torch keeps the image small
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY client ./client
COPY mec_core ./mec_core
COPY mec_platform ./mec_platform
COPY api ./api
COPY worker ./worker
COPY serving ./serving
RUN pip install ./client . && useradd --create-home --uid 10001 mec
USER mec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# two server processes: their request metrics meet in prometheus-client's multiprocess
# files, emptied at each start (GET /metrics merges them)
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/mec-prometheus
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && mec db upgrade && exec uvicorn api.main:app --host 0.0.0.0 --port 8000 --workers 2"]
