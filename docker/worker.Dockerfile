# GPU worker: one Celery worker process per GPU, or per group of GPUs for multi-process jobs
# (pin them with CUDA_VISIBLE_DEVICES).
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      openjdk-17-jre-headless && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY client ./client
COPY mec_core ./mec_core
COPY mec_platform ./mec_platform
COPY api ./api
COPY worker ./worker
COPY serving ./serving
# EXTRAS: the platform's optional extras, e.g. ray (docker-compose.yml builds it so)
ARG EXTRAS=""
RUN pip install ./client ".${EXTRAS:+[$EXTRAS]}" && useradd --create-home --uid 10001 mec
USER mec
# solo pool: the job runs in the worker process; a killed worker takes its job with it,
# the lease expires and another worker resumes the job from its checkpoint
CMD ["celery", "-A", "worker.main", "worker", "-Q", "gpu", "--pool", "solo", "--loglevel", "INFO"]
