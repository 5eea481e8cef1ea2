#!/usr/bin/env bash
# deploy_cpu.sh with function-gpu.yaml wherever a folder has one (CUDA base images, nvidia.com/gpu
# limits); the same options. Needs the NVIDIA container toolkit (local) or GPU nodes (kube).
set -euo pipefail
GPU=1 exec "$(dirname "$0")/deploy_cpu.sh" "$@"
