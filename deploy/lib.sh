# Shared by deploy/build_images.sh and deploy/nuclio/deploy_*.sh (sourced, not run): image names,
# the function folders, and how each function's base image is built. Run from anywhere; paths are
# resolved from the repository root.
# shellcheck shell=bash

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One version for every image we build: the project's. The names below are read by the scripts
# that source this file.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml")
# shellcheck disable=SC2034
DISPATCHER_IMAGE="cvat.autoannotate.dispatcher:$VERSION"
# shellcheck disable=SC2034
FUNCTION_BASE_DOCKERFILE="deploy/images/function-base.Dockerfile"

# Build arguments from the environment (README "Build arguments"): EXTRA_CA_CERTS, a TLS-inspecting
# proxy's CA certificates (PEM text) that every build trusts while it fetches, passed by name so
# the text stays out of the logged command; MODEL_FILES (download | local) for function images.
extra_ca_args=()
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
  export EXTRA_CA_CERTS
  extra_ca_args=(--build-arg EXTRA_CA_CERTS)
fi

# framework base images: name, requirements file, extra build arguments
framework_bases() {
  cat <<LIST
cvat.autoannotate.openvino:$VERSION deploy/requirements/openvino.txt
cvat.autoannotate.onnx:$VERSION deploy/requirements/onnx.txt
cvat.autoannotate.onnx:$VERSION-gpu deploy/requirements/onnx.txt ONNXRUNTIME=onnxruntime-gpu==1.32.0
cvat.autoannotate.pytorch:$VERSION deploy/requirements/pytorch.txt TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
cvat.autoannotate.pytorch:$VERSION-gpu deploy/requirements/pytorch.txt TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
LIST
}

# Every function folder under serverless/ (holding a function.yaml), sorted.
function_folders() {
  (cd "$REPO_ROOT" && find serverless -name function.yaml -path '*/nuclio/*' -printf '%h\n' | sort)
}

# A function file's id (metadata.name) and base image (spec.build.baseImage), read with awk: the
# scripts need no Python. Our function.yaml files write both as plain "key: value" lines.
function_id() {
  awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$1"
}
function_base_image() {
  awk '/^    baseImage:/ {print $2; exit}' "$1"
}

# log and run a command
run() {
  echo "+ $*" >&2
  "$@"
}

# Build the base image a function.yaml names (spec.build.baseImage) from its folder's Dockerfile:
# the framework base plus the official weights. GPU files take the framework's -gpu base.
build_function_base() {
  local file=$1 registry=${2:-} folder base framework
  folder=$(dirname "$file")
  [ -f "$REPO_ROOT/$folder/Dockerfile" ] || return 0
  base=$(function_base_image "$REPO_ROOT/$file")
  framework=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO_ROOT/$folder/Dockerfile")
  if [ "$(basename "$file")" = function-gpu.yaml ]; then
    framework="$framework-gpu"
  fi
  run docker build --target base --build-arg "BASE_IMAGE=${registry:+$registry/}$framework" \
    --build-arg "MODEL_FILES=${MODEL_FILES:-download}" "${extra_ca_args[@]}" \
    -t "${registry:+$registry/}$base" -f "$REPO_ROOT/$folder/Dockerfile" "$REPO_ROOT"
}
