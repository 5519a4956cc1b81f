#!/usr/bin/env bash
# Make an Ubuntu x86_64 host able to build linux/arm64 images: Docker's apt repository, Docker
# Engine + the Buildx plugin, QEMU user emulation (binfmt), then verify with `docker buildx ls`
# that linux/arm64 is available. Idempotent; `--dry-run` prints what it would do.
set -euo pipefail

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
# Detection is injectable so the refusal paths can be tested on any machine.
# shellcheck source=/dev/null
OS_ID="${HAILO_OS_ID:-$( . /etc/os-release 2>/dev/null && echo "${ID:-unknown}")}"
# shellcheck source=/dev/null
OS_CODENAME="${HAILO_OS_CODENAME:-$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")}"
ARCH="${HAILO_ARCH:-$(uname -m)}"

run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf 'would run: %s\n' "$*"
    else
        "$@"
    fi
}

if [ "$OS_ID" != "ubuntu" ]; then
    echo "refusing: this installer is for Ubuntu hosts (found ID=$OS_ID)" >&2
    exit 2
fi
if [ "$ARCH" != "x86_64" ]; then
    echo "refusing: the hailo-builder runner is an x86_64 host (found $ARCH); the DFC is x86_64-only" >&2
    exit 2
fi

keyring=/etc/apt/keyrings/docker.asc
list=/etc/apt/sources.list.d/docker.list
run install -m 0755 -d /etc/apt/keyrings
if [ ! -s "$keyring" ] || [ "$DRY_RUN" -eq 1 ]; then
    run curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o "$keyring"
    run chmod a+r "$keyring"
fi
repo_line="deb [arch=amd64 signed-by=$keyring] https://download.docker.com/linux/ubuntu $OS_CODENAME stable"
if [ "$DRY_RUN" -eq 1 ]; then
    printf 'would write %s: %s\n' "$list" "$repo_line"
elif ! grep -qsF "$repo_line" "$list"; then
    printf '%s\n' "$repo_line" >"$list"
fi
run apt-get update -qq
run apt-get install -y -qq docker-ce docker-ce-cli containerd.io docker-buildx-plugin qemu-user-static binfmt-support
run update-binfmts --enable qemu-aarch64
# A docker-container builder supports multi-platform builds and provenance attestations.
if [ "$DRY_RUN" -eq 1 ] || ! docker buildx inspect hailo-builder >/dev/null 2>&1; then
    run docker buildx create --name hailo-builder --driver docker-container --platform linux/amd64,linux/arm64
fi
run docker buildx use hailo-builder
run docker buildx inspect --bootstrap hailo-builder
if [ "$DRY_RUN" -eq 1 ]; then
    echo "would verify: docker buildx ls lists linux/arm64"
    exit 0
fi
if docker buildx ls | grep -q "linux/arm64"; then
    echo "OK: buildx can build linux/arm64"
else
    echo "FAILED: docker buildx ls does not list linux/arm64 (is qemu-aarch64 binfmt enabled?)" >&2
    exit 1
fi
