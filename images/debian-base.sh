#!/usr/bin/env bash
# Builds a minimal Debian bookworm image with Python 3.11 (debootstrap, then podman import), for
# machines that cannot pull the official base images. Usage: images/debian-base.sh NAME [MIRROR]
# MIRROR defaults to the Debian mirror of this machine's apt sources.
set -euo pipefail
name=${1:?usage: images/debian-base.sh NAME [MIRROR]}
mirror=${2:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | grep -oE 'https?://[^ ]+' | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
    > "$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -f "$root.log"
# Leave no apt lists or caches in the layer.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$name"
