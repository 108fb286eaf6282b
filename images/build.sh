#!/usr/bin/env bash
# Builds both step images with podman or docker: images/build.sh IMAGE GPU_IMAGE
# Where the official base images or PyTorch's CPU index cannot be reached, it builds on a local
# Debian base (images/debian-base.sh) and takes torch from the package index instead. A CA
# bundle named by PIP_CERT reaches pip in the build as a secret, never as a layer.
set -euo pipefail
image=${1:?usage: images/build.sh IMAGE GPU_IMAGE}
gpu_image=${2:?usage: images/build.sh IMAGE GPU_IMAGE}
cd "$(dirname "$0")/.."
tool=$(command -v podman || command -v docker) || { echo "error: neither podman nor docker is installed (make container-packages)" >&2; exit 2; }

base_of() { sed -n 's/^ARG BASE_IMAGE=//p' "$1"; }
has_image() { "$tool" image inspect "$1" > /dev/null 2>&1; }
args=(--network host)
# The CA bundle for pip in the build: PIP_CERT, else the system's (which holds local CAs).
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -n "$cert" ] && [ -s "$cert" ]; then
    args+=(--secret "id=pip_cert,src=$cert")
fi
local_base=localhost/finetuner-base:bookworm
cpu_args=() gpu_args=()
for pair in "images/Dockerfile cpu_args" "images/Dockerfile.gpu gpu_args"; do
    set -- $pair
    base=$(base_of "$1")
    if ! has_image "$base" && ! "$tool" pull -q "$base" > /dev/null 2>&1; then
        echo "$base cannot be pulled here: building on $local_base"
        has_image "$local_base" || images/debian-base.sh "$local_base"
        eval "$2+=(--build-arg BASE_IMAGE=$local_base)"
    fi
done
torch_index=$(sed -n 's/^ARG TORCH_INDEX_URL=//p' images/Dockerfile)
if ! curl -fsS -o /dev/null --max-time 20 "$torch_index/torch/"; then
    echo "$torch_index cannot be reached: torch comes from the package index (its CUDA build)"
    cpu_args+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
fi
for spec in "images/Dockerfile $image cpu_args" "images/Dockerfile.gpu $gpu_image gpu_args"; do
    set -- $spec
    eval "extra=(\"\${$3[@]}\")"
    start=$(date +%s)
    old=$("$tool" image inspect --format '{{.Id}}' "$2" 2>/dev/null || true)
    "$tool" build "${args[@]}" ${extra[@]+"${extra[@]}"} -f "$1" -t "$2" .
    echo "built $2 in $(( $(date +%s) - start )) s"
    # The image this tag named before, if nothing else uses it: several GB each.
    new=$("$tool" image inspect --format '{{.Id}}' "$2")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then "$tool" rmi "$old" > /dev/null 2>&1 || true; fi
done
