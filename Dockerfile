# finlora training / prediction image. CPU by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_VARIANT=cu128 -t finlora:gpu .
# (any CUDA variant published for torch 2.13.0; the wheel bundles CUDA, the host needs the
# driver). BASE_IMAGE may be swapped for another image with Python >= 3.10 and pip.
# SageMaker runs `docker run IMAGE train`, i.e. `finlora train`.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/finlora/.cache/huggingface

RUN useradd --create-home --uid 1000 finlora \
    && mkdir -p /opt/ml/model /opt/ml/output/data /opt/ml/input \
    && chown -R finlora:finlora /opt/ml

WORKDIR /opt/finlora
# torch first, from the variant's index, so the finlora install below keeps it.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch==2.13.0
COPY pyproject.toml README.md train.py ./
COPY src ./src
COPY config ./config
# hadolint ignore=DL3013
RUN pip install ".[cloud]"

USER 1000:1000
ENTRYPOINT ["finlora"]
CMD ["--help"]
