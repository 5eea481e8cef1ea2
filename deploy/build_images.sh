#!/usr/bin/env bash
# Build our images: the framework bases (OpenVINO, ONNX, PyTorch; CPU and GPU), the dispatcher
# (API, RQ workers, compose's function catalogue) and every function's base image with its weights
# (the official download, or MODEL_FILES=local: ./models; checksums checked during the build).
# EXTRA_CA_CERTS (PEM text) is trusted while the builds fetch.
#
#   deploy/build_images.sh                       # everything, for this machine's Docker
#   deploy/build_images.sh --registry REG --push # tagged REG/<name> and pushed (Kubernetes)
#   deploy/build_images.sh --no-functions        # only the framework bases and the dispatcher
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"

registry="" push=0 functions=1
while [ $# -gt 0 ]; do
  case $1 in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --push) push=1; shift ;;
    --no-functions) functions=0; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "build_images: unknown argument $1" >&2; exit 2 ;;
  esac
done
prefix=${registry:+$registry/}
built=()

framework_bases | while read -r name requirements extra; do
  args=(--build-arg "REQUIREMENTS=$requirements" "${extra_ca_args[@]}")
  if [ -n "${extra:-}" ]; then args+=(--build-arg "$extra"); fi
  run docker build "${args[@]}" -t "$prefix$name" -f "$REPO_ROOT/$FUNCTION_BASE_DOCKERFILE" "$REPO_ROOT"
  if [ "$push" = 1 ]; then run docker push "$prefix$name"; fi
done
run docker build "${extra_ca_args[@]}" -t "$prefix$DISPATCHER_IMAGE" -f "$REPO_ROOT/deploy/images/dispatcher.Dockerfile" "$REPO_ROOT"
built+=("$prefix$DISPATCHER_IMAGE")

if [ "$functions" = 1 ]; then
  for folder in $(function_folders); do
    for file in "$folder/function.yaml" "$folder/function-gpu.yaml"; do
      [ -f "$REPO_ROOT/$file" ] || continue
      build_function_base "$file" "$registry"
      base=$(function_base_image "$REPO_ROOT/$file")
      if [ -f "$REPO_ROOT/$folder/Dockerfile" ]; then built+=("$prefix$base"); fi
    done
  done
fi

if [ "$push" = 1 ]; then
  for image in "${built[@]}"; do run docker push "$image"; done
fi
