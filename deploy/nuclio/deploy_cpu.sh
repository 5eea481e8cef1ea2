#!/usr/bin/env bash
# Deploy the functions with nuctl, as CVAT's serverless/deploy_cpu.sh does: build the base images
# (framework base + official weights), create the nuclio project "cvat", then `nuctl deploy` each
# function.yaml (deploy_gpu.sh: function-gpu.yaml where a folder has one).
#
#   deploy/nuclio/deploy_cpu.sh                          # every function, nuclio's local platform (Docker)
#   deploy/nuclio/deploy_cpu.sh onnx-wongkinyiu-yolov7   # only the functions named
#   deploy/nuclio/deploy_cpu.sh --platform kube --registry registry.example.com/cvat [--replicas 2]
#
# Local: functions join the Docker network $NETWORK (default cvat-autoannotate, the compose
# project's; CVAT's is cvat_cvat). Kubernetes: base images are pushed to the registry and the
# function images are built by nuclio's builder from them; --replicas sets min and max replicas
# (or --min-replicas/--max-replicas for nuclio's autoscaler).
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/../lib.sh"

platform=local registry="" min_replicas="" max_replicas="" namespace=nuclio names=()
network=${NETWORK:-cvat-autoannotate}
gpu=${GPU:-0}
while [ $# -gt 0 ]; do
  case $1 in
    --platform) platform=${2:?--platform needs local or kube}; shift 2 ;;
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --replicas) min_replicas=${2:?}; max_replicas=$2; shift 2 ;;
    --min-replicas) min_replicas=${2:?}; shift 2 ;;
    --max-replicas) max_replicas=${2:?}; shift 2 ;;
    --namespace) namespace=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "deploy: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
case $platform in
  local) ;;
  kube) [ -n "$registry" ] || { echo "deploy: --platform kube needs --registry" >&2; exit 2; } ;;
  *) echo "deploy: --platform must be local or kube, got $platform" >&2; exit 2 ;;
esac
command -v nuctl >/dev/null || { echo "deploy: nuctl is not on PATH (https://github.com/nuclio/nuclio/releases)" >&2; exit 1; }

# The function file of a folder: function-gpu.yaml for GPU deployments where there is one.
function_file() {
  if [ "$gpu" = 1 ] && [ -f "$REPO_ROOT/$1/function-gpu.yaml" ]; then
    echo "$1/function-gpu.yaml"
  else
    echo "$1/function.yaml"
  fi
}

selected=()
for folder in $(function_folders); do
  file=$(function_file "$folder")
  name=$(function_id "$REPO_ROOT/$file")
  if [ ${#names[@]} -eq 0 ] || printf '%s\n' "${names[@]}" | grep -qx "$name"; then
    selected+=("$file")
  fi
done
if [ ${#names[@]} -gt 0 ] && [ ${#selected[@]} -ne ${#names[@]} ]; then
  echo "deploy: not every name is a function under serverless/: ${names[*]}" >&2
  exit 2
fi

build=(--no-functions)
if [ "$platform" = kube ]; then build+=(--registry "$registry" --push); fi
"$REPO_ROOT/deploy/build_images.sh" "${build[@]}"
run nuctl create project cvat --platform "$platform" --namespace "$namespace" || true  # exists already: fine

for file in "${selected[@]}"; do
  folder=$(dirname "$file")
  name=$(function_id "$REPO_ROOT/$file")
  base=$(function_base_image "$REPO_ROOT/$file")
  build_function_base "$file" "$([ "$platform" = kube ] && echo "$registry")"
  args=(deploy "$name" --project-name cvat --path "$REPO_ROOT/$folder" --file "$REPO_ROOT/$file"
        --platform "$platform" --namespace "$namespace" --run-as-user 1000)
  if [ "$platform" = local ]; then
    args+=(--platform-config "{\"attributes\": {\"network\": \"$network\"}}")
  else
    run docker push "$registry/$base"
    args+=(--registry "$registry" --run-registry "$registry" --base-image "$registry/$base")
    if [ -n "$min_replicas" ]; then args+=(--min-replicas "$min_replicas"); fi
    if [ -n "$max_replicas" ]; then args+=(--max-replicas "$max_replicas"); fi
  fi
  run nuctl "${args[@]}"
done
run nuctl get function --platform "$platform" --namespace "$namespace"
