# driftwarden: the worker, the retrain worker and the simulator (one image).
#   docker build -t driftwarden .
#   docker run --rm driftwarden driftwarden --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/data/numba-cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
# The example config's reference profile, built from the simulated model's training data, so that
# `docker compose up` (worker + simulator) works out of the box. Replace it with your own:
#   driftwarden baseline --data train.parquet --model ID ... -o /app/streams/examples/profiles/ID.json
RUN pip install . \
    && python -m streams.commands /app/streams/examples/profiles/credit-risk.json \
    && useradd --create-home --uid 10001 driftwarden \
    && mkdir -p /data/reports /data/state \
    && chown -R driftwarden /data

USER driftwarden
VOLUME ["/data"]
CMD ["driftwarden", "--help"]
