# fedcare: one image for the consortium (fedcare superlink) and a hospital site
# (fedcare supernode). Built only from the locked requirements (constraints.txt); not
# built in CI (no container runtime there). See docs/deployment.md "Containers".
#
#   docker build -t fedcare:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN useradd --create-home --uid 10001 fedcare
WORKDIR /opt/fedcare
COPY pyproject.toml constraints.txt README.md ./
COPY fedcare ./fedcare
RUN pip install --constraint constraints.txt .

# certs/, state/ and runs/ (or the site's data) are mounted here; nothing secret in the image
WORKDIR /srv/fedcare
USER fedcare
ENTRYPOINT ["fedcare"]
CMD ["--help"]
