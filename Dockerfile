# One image for both services: the scorer (the default command) and the trainer.
#
#   docker compose build          # see docker-compose.yml and .env
#   docker build --build-arg HOST_UID=$(id -u) --build-arg HOST_GID=$(id -g) -t delta-loss-selector .
#
# torch comes from the base image, with its CUDA build; docker/requirements.lock pins every
# other package with its hash, for the base image's Python (3.11), and leaves torch out
# (`make lock` writes it). With another base (--build-arg BASE_IMAGE=pytorch/pytorch:<tag>),
# keep its Python at 3.11 or write the lock again for it.
#
# The services run as the user `app`, whose uid and gid are HOST_UID and HOST_GID: what they
# write to bind-mounted folders belongs to the host user with those ids.
# No model weights are downloaded at build or start: mount them under /models.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# HF_*_OFFLINE: never reach the Hugging Face Hub from the containers; models come from /models.
# The caches (matplotlib's fonts, Hugging Face's) live under /var/cache/app, which belongs to
# the services' user: matplotlib's font cache, built at the import check below, is kept.
# DELTA_LOSS_IMAGE: the services refuse to run as root here (common/container.py).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/var/cache/app/huggingface \
    MPLCONFIGDIR=/var/cache/app/matplotlib \
    DELTA_LOSS_IMAGE=1

# The dependencies, before any source: this layer is built again only when the lock changes.
COPY docker/requirements.lock /tmp/requirements.lock
RUN python -c "import sys; v = sys.version_info[:2]; assert v == (3, 11), f'docker/requirements.lock is for Python 3.11 and the base image has {v}: write the lock for it (make lock LOCK_PYTHON=X.Y)'" \
 && pip install --no-deps --require-hashes -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock

# The source: the packages only (.dockerignore lets nothing else in).
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY common ./common
COPY scorer_svc ./scorer_svc
COPY trainer_svc ./trainer_svc
COPY delta_loss_devtools ./delta_loss_devtools
RUN pip install --no-deps --no-build-isolation . \
 && python -c "import torch, scorer_svc.main, trainer_svc.training.recipe, delta_loss_devtools.demo, matplotlib.pyplot; print('torch', torch.__version__)"

# The user the services run as, and the folders they write. Declared here, so that other ids
# rebuild only the layers from here on.
ARG HOST_UID=1000
ARG HOST_GID=1000
RUN groupadd --non-unique --gid "${HOST_GID}" app \
 && useradd --non-unique --no-log-init --create-home --uid "${HOST_UID}" --gid "${HOST_GID}" app \
 && mkdir -p /var/lib/scorer /data /models /outputs /config /demo "${MPLCONFIGDIR}" "${HF_HOME}" \
 && chown app:app /var/lib/scorer /outputs /demo \
 && chown -R app:app /var/cache/app \
 && rm -rf /tmp/src

# Scorer defaults; docker-compose.yml sets them too.
ENV SCORER_HTTP_HOST=0.0.0.0 \
    SCORER_HTTP_PORT=8000 \
    SCORER_ZMQ_URL=tcp://0.0.0.0:5555 \
    SCORER_DATA_DIR=/var/lib/scorer \
    SCORER_DATABASE_URL=sqlite:////var/lib/scorer/scorer.db \
    SCORER_MODEL_ROOT='["/models"]' \
    SCORER_DATA_ROOT='["/data"]'

USER ${HOST_UID}:${HOST_GID}
WORKDIR /home/app
EXPOSE 8000 5555
CMD ["scorer-svc", "serve"]
