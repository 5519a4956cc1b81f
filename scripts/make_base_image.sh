#!/usr/bin/env bash
# Make a Debian bookworm base image locally (no registry can be pulled from here):
#   scripts/make_base_image.sh amd64|arm64 [IMAGE_NAME]
# debootstrap minbase with python3, python3-venv and ca-certificates; the rootfs tarball is
# cached under $HAILO_CACHE_DIR (default /var/cache/hailo-pipeline). amd64 is `docker import`ed;
# arm64 is built FROM scratch with --platform linux/arm64, because `docker import --platform`
# silently labels the image amd64. Idempotent: an existing image is kept.
# With HAILO_PROGRESS_FILE set (by the main job, hailo_airflow.demo), the current phase is written
# there, one line replaced each time: debootstrap of arm64 runs its package scripts under QEMU and
# took 257 s here (633 s at load average 8), and the main job shows this phase every 10 s meanwhile.
set -euo pipefail

arch="${1:?usage: make_base_image.sh amd64|arm64 [IMAGE_NAME]}"
case "$arch" in amd64|arm64) ;; *) echo "arch must be amd64 or arm64, got: $arch" >&2; exit 2 ;; esac
image="${2:-hailo-base:bookworm-$arch}"
docker_bin="${DOCKER:-/usr/bin/docker}"
cache="${HAILO_CACHE_DIR:-/var/cache/hailo-pipeline}"
tarball="$cache/rootfs-bookworm-$arch.tar"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

phase() {
    [ -n "${HAILO_PROGRESS_FILE:-}" ] || return 0
    # Written aside then renamed, so the watcher never reads half a line; advisory, never fatal.
    if printf '%s\n' "$*" >"$HAILO_PROGRESS_FILE.$$.tmp" 2>/dev/null; then
        mv -f "$HAILO_PROGRESS_FILE.$$.tmp" "$HAILO_PROGRESS_FILE" 2>/dev/null || true
    fi
}

if "$docker_bin" image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists"
    exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    rootfs="$(mktemp -d "$cache/rootfs-$arch.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap bookworm ($arch) into $rootfs ..." >&2
    log="$cache/debootstrap-$arch.log"
    : >"$log"
    phase "base image $arch: debootstrap starting"
    # Every line goes to the log; debootstrap's "I: ..." lines (Retrieving, Extracting, Configuring
    # <package>) become the phase. pipefail makes a debootstrap failure fail the pipeline.
    debootstrap --arch="$arch" --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" 2>&1 | while IFS= read -r line; do
            printf '%s\n' "$line" >>"$log"
            case "$line" in "I: "*) phase "base image $arch: debootstrap: ${line#I: }" ;; esac
        done || { tail -n 30 "$log" >&2; exit 1; }
    phase "base image $arch: packing the rootfs tarball"
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
phase "base image $arch: docker image from the rootfs tarball"
if [ "$arch" = amd64 ]; then
    "$docker_bin" import "$tarball" "$image" >/dev/null
else
    ctx="$(mktemp -d)"
    ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=1 "$docker_bin" build --platform linux/arm64 -t "$image" "$ctx" >/dev/null
    rm -rf "$ctx"
fi
echo "$image"
