# Image for both services: scorer (default CMD) and trainer (override the command).
#
#   docker build -t delta-loss-selector .
#   docker compose up            # see docker-compose.yml and .env.example
#
# torch comes from the base image; `pip install .` must not replace it (transformers 5
# needs torch>=2.6, pyproject accepts torch>=2.3,<3). Override the base with
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<tag> .
# No model weights are downloaded at build or start: mount them under /models.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# HF_*_OFFLINE: never reach the Hugging Face Hub from the containers; models come from /models.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf-home

WORKDIR /app
COPY . /app

# Pin torch to the version already in the image so pip fails loudly instead of
# silently downloading a different (multi-GB) torch build.
RUN echo "torch==$(python -c 'import torch; print(torch.__version__)')" > /tmp/constraints.txt \
 && pip install -c /tmp/constraints.txt . \
 && python -c "import torch, scorer_svc, trainer_svc; print('torch', torch.__version__)"

# Scorer defaults; docker-compose.yml sets the same explicitly.
ENV SCORER_HTTP_HOST=0.0.0.0 \
    SCORER_HTTP_PORT=8000 \
    SCORER_ZMQ_URL=tcp://0.0.0.0:5555 \
    SCORER_DATA_DIR=/var/lib/scorer \
    SCORER_DATABASE_URL=sqlite:////var/lib/scorer/scorer.db \
    SCORER_MODEL_ROOT='["/models"]' \
    SCORER_DATA_ROOT='["/data"]'
RUN mkdir -p /var/lib/scorer /data /models /outputs /config

EXPOSE 8000 5555
CMD ["scorer-svc", "serve"]
