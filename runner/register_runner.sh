#!/usr/bin/env bash
# Register this host as a GitHub Actions self-hosted runner with the `hailo-builder` label.
#   RUNNER_TOKEN=<registration token> ./register_runner.sh --url https://github.com/ORG/REPO [--dir /opt/actions-runner] [--dry-run]
# The token is read from the environment only: never an argument (it would show in `ps` and
# shell history) and never written to disk by this script.
set -euo pipefail

URL=""
DIR=/opt/actions-runner
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL="${2:?--url needs a value}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$URL" in
    https://github.com/*/*) ;;
    *) echo "--url must be https://github.com/OWNER/REPO (got: ${URL:-nothing})" >&2; exit 2 ;;
esac
if [ -z "${RUNNER_TOKEN:-}" ]; then
    echo "set RUNNER_TOKEN in the environment (a short-lived registration token)" >&2
    exit 2
fi
if [ ! -x "$DIR/config.sh" ]; then
    echo "the actions runner is not unpacked in $DIR (download it from GitHub first)" >&2
    [ "$DRY_RUN" -eq 1 ] || exit 2
fi
args=(--unattended --url "$URL" --name "$(hostname)-hailo-builder" --labels hailo-builder --work _work --replace)
if [ "$DRY_RUN" -eq 1 ]; then
    printf 'would run: %s/config.sh %s --token ***\n' "$DIR" "${args[*]}"
    echo "would install: systemd unit hailo-actions-runner.service"
    exit 0
fi
# config.sh reads the token from its argument; pass it via the environment of this one call only.
(cd "$DIR" && ./config.sh "${args[@]}" --token "$RUNNER_TOKEN")
install -m 0644 "$(dirname "$0")/systemd/hailo-actions-runner.service" /etc/systemd/system/hailo-actions-runner.service
systemctl daemon-reload
systemctl enable --now hailo-actions-runner.service
