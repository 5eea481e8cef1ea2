# The framework base of every function image, built five times by deploy/build_images.sh:
#
#   cvat.autoannotate.openvino:<version>      REQUIREMENTS=deploy/requirements/openvino.txt
#   cvat.autoannotate.onnx:<version>[-gpu]    REQUIREMENTS=deploy/requirements/onnx.txt (-gpu: ONNXRUNTIME=onnxruntime-gpu==...)
#   cvat.autoannotate.pytorch:<version>[-gpu] REQUIREMENTS=deploy/requirements/pytorch.txt, TORCH_INDEX_URL=CPU or CUDA wheels
#
# Python 3.11, the pinned packages, our runtime's packages and cvat-sdk, the shared toolkit
# (serverless/common), the local runtime (serverless/runtime) and the built-in SDK functions, under
# /opt/nuclio as nuclio lays a function out; a non-root user (uid 1000) owns /opt/nuclio. Each
# function folder's Dockerfile starts FROM one of these and adds its weights, with the two build
# helpers installed here: fetch-model-files.sh (official download, or MODEL_FILES=local) and
# with-extra-ca-certs.sh (EXTRA_CA_CERTS: a TLS-inspecting proxy's CA, trusted during the build only).
#
#   docker build -t cvat.autoannotate.openvino:0.1.0 -f deploy/images/function-base.Dockerfile .
FROM python:3.11.14-slim-bookworm

ARG REQUIREMENTS=deploy/requirements/openvino.txt
# Only the PyTorch bases ask a second index (deploy/lib.sh and docker-compose.yml pass it): pip
# retries an index it cannot reach for every package, which stalled builds for minutes.
ARG TORCH_INDEX_URL=
ARG ONNXRUNTIME=
ARG EXTRA_CA_CERTS=
COPY deploy/images/with-extra-ca-certs.sh deploy/images/fetch-model-files.sh /usr/local/bin/
COPY deploy/requirements/runtime.txt /tmp/runtime.txt
COPY ${REQUIREMENTS} /tmp/requirements.txt
RUN with-extra-ca-certs.sh pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements.txt -r /tmp/runtime.txt \
    && if [ -n "$ONNXRUNTIME" ]; then pip uninstall --yes onnxruntime \
        && with-extra-ca-certs.sh pip install --no-cache-dir "$ONNXRUNTIME"; fi \
    && rm /tmp/requirements.txt /tmp/runtime.txt \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin nuclio \
    && mkdir -p /opt/nuclio/models && chown -R nuclio:nuclio /opt/nuclio

WORKDIR /opt/nuclio
COPY --chown=nuclio:nuclio serverless/__init__.py serverless/__init__.py
COPY --chown=nuclio:nuclio serverless/common serverless/common
COPY --chown=nuclio:nuclio serverless/runtime serverless/runtime
COPY --chown=nuclio:nuclio serverless/sdk_functions serverless/sdk_functions
ENV PYTHONPATH=/opt/nuclio \
    PYTHONUNBUFFERED=1 \
    MODELS_DIR=/opt/nuclio/models
USER 1000
