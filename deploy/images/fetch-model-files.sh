#!/bin/sh
# A function image's model files, written to $MODELS_DIR with every file checked against the
# catalogue (serverless/common/models.yaml), from one of two sources, the build argument
# MODEL_FILES:
#   download  (default) the official files, from their publishers
#   local     the build context's models/ folder, which the Dockerfile copies to /tmp/model-files:
#             air-gapped sites fill it with `python -m serverless.common.model_files mirror --from DIR`
# Arguments: catalogue names, all required (with --any first: interchangeable, one is enough).
#
#   fetch-model-files.sh face-detection-0205 age-gender-recognition-retail-0013
set -eu
case ${MODEL_FILES:-download} in
  download) set -- download "$@" ;;
  local) set -- mirror --from /tmp/model-files "$@" ;;
  *) echo "MODEL_FILES must be download or local, not '$MODEL_FILES'" >&2; exit 2 ;;
esac
exec with-extra-ca-certs.sh python -m serverless.common.model_files "$@"
