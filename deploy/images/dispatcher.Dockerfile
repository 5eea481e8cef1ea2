# cvat.autoannotate.dispatcher:<version>: the dispatcher's API (python -m dispatcher serve), its
# RQ workers (python -m dispatcher worker) and the platform that lists compose's function
# containers (python -m serverless.runtime platform --remote ...). No model, no PyTorch, no OpenVINO.
#
#   docker build -t cvat.autoannotate.dispatcher:0.1.0 -f deploy/images/dispatcher.Dockerfile .
FROM python:3.11.14-slim-bookworm

# A TLS-inspecting proxy's CA certificates (PEM), trusted by pip during the build only.
ARG EXTRA_CA_CERTS=
COPY deploy/images/with-extra-ca-certs.sh /usr/local/bin/
COPY deploy/requirements/dispatcher.txt /tmp/requirements.txt
RUN with-extra-ca-certs.sh pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin dispatcher \
    && mkdir -p /data && chown dispatcher:dispatcher /data

WORKDIR /opt/cvat-autoannotate
COPY pyproject.toml README.md LICENSE ./
COPY serverless serverless
COPY dispatcher dispatcher
# pip fetches the build backend (setuptools) for this step too.
RUN with-extra-ca-certs.sh pip install --no-cache-dir --no-deps . && rm -rf build
ENV PYTHONUNBUFFERED=1 \
    DATA_DIR=/data
USER 1000
EXPOSE 8000
CMD ["python", "-m", "dispatcher", "serve", "--host", "0.0.0.0", "--port", "8000"]
