#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian bookworm machine for hailo-pipeline:
# Debian packages, the project virtualenv, and the local services the real tests and the
# demo use (Docker engine, arm64 emulation). Sourced or run by scripts/test.sh and
# scripts/release.sh; safe to run again.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HAILO_VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# The hashed lock to install (requirements/, made by scripts/lock.sh). dev.lock = everything CI runs;
# a scale-out host takes celery.lock, a machine that only triggers releases cli.lock.
LOCK="${HAILO_LOCK:-$REPO_ROOT/requirements/dev.lock}"
# postgresql + redis-server: the native scale-out stack (scripts/scaleout.sh, tests/scaleout).
APT_PACKAGES=(docker.io docker-registry docker-compose openssh-server qemu-user-static binfmt-support debootstrap shellcheck openssl
    postgresql redis-server)

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_venv() {
    local stamp="$VENV/.hailo-install-stamp" want
    want="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/sidecar/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    log "installing $(basename "$LOCK") into $VENV (hash-checked, no resolver; Airflow + providers take a few minutes)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip wheel setuptools
    # Every third-party package from the lock, each checked against its sha256; nothing else.
    "$VENV/bin/pip" install -q --require-hashes --no-deps -r "$LOCK"
    # The project itself (editable), without touching the locked set.
    local project=()
    case "$(basename "$LOCK" .lock)" in
        cli) project=(-e "$REPO_ROOT") ;;
        airflow | celery | gcs) project=(-e "${REPO_ROOT}[$(basename "$LOCK" .lock)]") ;;
        *) project=(-e "${REPO_ROOT}[celery,gcs,sidecar,dev]" -e "${REPO_ROOT}/sidecar[onnx]") ;;
    esac
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation "${project[@]}"
    # A dependency added to a pyproject.toml but not to the lock shows up here: run scripts/lock.sh.
    if ! "$VENV/bin/pip" check >&2; then
        log "the lock $LOCK does not satisfy pyproject.toml: regenerate it with scripts/lock.sh"
        return 1
    fi
    echo "$want" >"$stamp"
}

start_dockerd() {
    if [ -S /var/run/docker.sock ] && /usr/bin/docker info >/dev/null 2>&1; then
        return 0
    fi
    if ! pgrep -x dockerd >/dev/null; then
        log "starting dockerd (log: /tmp/dockerd.log)"
        as_root sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        /usr/bin/docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    log "WARNING: dockerd did not come up; see /tmp/dockerd.log (docker-marked tests will fail in CI)"
}

enable_arm64_emulation() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        as_root mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        as_root update-binfmts --enable qemu-aarch64 2>/dev/null || log "WARNING: could not enable qemu-aarch64 binfmt"
    fi
}

main() {
    install_apt_packages
    install_venv
    start_dockerd
    enable_arm64_emulation
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
