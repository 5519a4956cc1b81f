#!/usr/bin/env bash
# Preflight of the hailo-builder host: prints one line per check and what is missing; exit 1 if
# anything is. Checks: docker engine, buildx with linux/arm64, the DFC compiler image, cosign,
# HailoRT's Pi wheel for the runtime image (HAILO_HAILORT_WHEEL), and a registry login.
#   HAILO_COMPILER_IMAGE=hailo-compiler:3.33.0 HAILO_REGISTRY=registry.example ./preflight.sh
set -uo pipefail

DOCKER="${DOCKER:-docker}"
COMPILER_IMAGE="${HAILO_COMPILER_IMAGE:-hailo-compiler:3.33.0}"
REGISTRY="${HAILO_REGISTRY:-}"
DOCKER_CONFIG_FILE="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
missing=0

check() {
    local name="$1" hint="$2"
    shift 2
    if "$@" >/dev/null 2>&1; then
        printf 'ok       %s\n' "$name"
    else
        printf 'MISSING  %s — %s\n' "$name" "$hint"
        missing=$((missing + 1))
    fi
}

check "docker engine" "install Docker and start it (runner/install_docker_buildx.sh)" "$DOCKER" info
check "buildx linux/arm64" "run runner/install_docker_buildx.sh" sh -c "$DOCKER buildx ls 2>/dev/null | grep -q linux/arm64"
check "DFC compiler image $COMPILER_IMAGE" "build docker/hailo_compiler with the DFC wheel (see its README)" \
    "$DOCKER" image inspect "$COMPILER_IMAGE"
check "cosign" "install cosign (https://docs.sigstore.dev)" cosign version
HAILORT_WHEEL="${HAILO_HAILORT_WHEEL:-}"
case "$(basename -- "${HAILORT_WHEEL:-none}")" in
    hailort-*-cp311-cp311-linux_aarch64.whl)
        check "HailoRT wheel $HAILORT_WHEEL" "download it from the Hailo Developer Zone (same version as the Pi's driver)" \
            test -s "$HAILORT_WHEEL" ;;
    *)
        printf 'MISSING  HailoRT wheel — set HAILO_HAILORT_WHEEL to hailort-X.Y.Z-cp311-cp311-linux_aarch64.whl (Hailo Developer Zone; must match the Pi driver)\n'
        missing=$((missing + 1)) ;;
esac
if [ -n "$REGISTRY" ]; then
    check "registry login $REGISTRY" "docker login $REGISTRY" grep -q "\"$REGISTRY\"" "$DOCKER_CONFIG_FILE"
else
    printf 'MISSING  registry — set HAILO_REGISTRY to the release registry\n'
    missing=$((missing + 1))
fi
if [ "$missing" -gt 0 ]; then
    printf '%d check(s) failed\n' "$missing"
    exit 1
fi
echo "all checks passed"
