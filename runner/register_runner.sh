#!/usr/bin/env bash
# Register this host as an ephemeral GitHub Actions self-hosted runner (one job per registration).
#
#   RUNNER_TOKEN=<registration token> ./register_runner.sh --url https://github.com/ORG/REPO \
#       [--name hailo-builder] [--labels hailo-builder] [--user runner] [--dir /opt/actions-runner/NAME] \
#       [--runner-group hailo] [--dry-run]
#   <jit config> | ./register_runner.sh --jit --name hailo-builder [--user runner] [--dir ...] [--dry-run]
#
# Token mode: `config.sh --ephemeral` with the registration token in ACTIONS_RUNNER_INPUT_TOKEN
# (the runner reads ACTIONS_RUNNER_INPUT_<ARG> for any argument and clears it): never on a
# command line, where any local user could read it in /proc/*/cmdline, never written to disk.
# JIT mode: the just-in-time configuration (POST /repos/OWNER/REPO/actions/runners/
# generate-jitconfig, minted elsewhere) is read from stdin and handed to the unit through a
# root-only environment file that is deleted when the unit starts; run.sh then sees it only as
# ACTIONS_RUNNER_INPUT_JITCONFIG. No config.sh in this mode.
#
# config.sh runs as the runner user (setpriv), never as root: the runner refuses root unless
# RUNNER_ALLOW_RUNASROOT is set, and credentials written by root would not be readable by the
# service user. The runner user must not be in the `docker` group (that is root on this host);
# it reaches Docker through its own rootless daemon (docs/github-setup.md, "Docker access").
#
# Test seams (tests/runner): SYSTEMCTL, HAILO_SYSTEMD_DIR, HAILO_RUNNER_ENV_DIR.
set -euo pipefail

URL=""
NAME=hailo-builder
LABELS=""
RUN_USER=runner
DIR=""
GROUP=""
JIT=0
DRY_RUN=0
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
SYSTEMD_DIR="${HAILO_SYSTEMD_DIR:-/etc/systemd/system}"
ENV_DIR="${HAILO_RUNNER_ENV_DIR:-/run/hailo-runner}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "register_runner: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL="${2:?--url needs a value}"; shift 2 ;;
        --name) NAME="${2:?--name needs a value}"; shift 2 ;;
        --labels) LABELS="${2:?--labels needs a value}"; shift 2 ;;
        --user) RUN_USER="${2:?--user needs a value}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --runner-group) GROUP="${2:?--runner-group needs a value}"; shift 2 ;;
        --jit) JIT=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) die "unknown argument: $1" ;;
    esac
done

# Names become a systemd instance, a directory and a runner label: a strict grammar.
[[ "$NAME" =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]] || die "--name must match [a-z0-9][a-z0-9-]{0,39} (got: $NAME)"
LABELS="${LABELS:-$NAME}"
[[ "$LABELS" =~ ^[a-z0-9][a-z0-9-]{0,39}(,[a-z0-9][a-z0-9-]{0,39}){0,4}$ ]] || die "--labels must be a comma list of [a-z0-9-] labels"
[[ "$RUN_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user must be a plain user name"
group_re='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'
[ -z "$GROUP" ] || [[ "$GROUP" =~ $group_re ]] || die "--runner-group must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DIR="${DIR:-/opt/actions-runner/$NAME}"
case "$DIR" in /*) ;; *) die "--dir must be an absolute path" ;; esac
case "$DIR" in *..*) die "--dir must not contain '..'" ;; esac

if [ "$JIT" -eq 0 ]; then
    [[ "$URL" =~ ^https://github\.com/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$ ]] \
        || die "--url must be https://github.com/OWNER/REPO or https://github.com/ORG (got: ${URL:-nothing})"
    if [ -z "${RUNNER_TOKEN:-}" ]; then
        die "set RUNNER_TOKEN in the environment (a short-lived registration token; never an argument)"
    fi
    TOKEN="$RUNNER_TOKEN"
    unset RUNNER_TOKEN
else
    [ -z "$URL" ] || die "--url is part of the JIT configuration; do not pass it with --jit"
    [ ! -t 0 ] || die "--jit reads the encoded JIT configuration from stdin"
    IFS= read -r JITCONFIG || true
    [[ "${JITCONFIG:-}" =~ ^[A-Za-z0-9+/=_-]{16,}$ ]] || die "stdin does not hold an encoded JIT configuration"
fi

# The runner user: exists, is not root, is not in the docker group.
if ! RUN_UID=$(id -u "$RUN_USER" 2>/dev/null); then
    [ "$DRY_RUN" -eq 1 ] || die "user $RUN_USER does not exist (useradd --system --create-home $RUN_USER)"
    RUN_UID=unknown
fi
if [ "$RUN_UID" = 0 ]; then die "refusing to run the runner as root"; fi
if [ "$RUN_UID" != unknown ]; then
    RUN_GID=$(id -g "$RUN_USER")
    if id -nG "$RUN_USER" | tr ' ' '\n' | grep -qx docker; then
        die "$RUN_USER is in the docker group, which is root on this host: remove it (gpasswd -d $RUN_USER docker) and use rootless Docker"
    fi
    RUN_HOME=$(getent passwd "$RUN_USER" | cut -d: -f6)
fi

UNIT="hailo-actions-runner@${NAME}.service"
UNIT_SRC="$HERE/systemd/hailo-actions-runner@.service"
CONFIG_ARGS=(--unattended --ephemeral --disableupdate --url "$URL" --name "$(hostname)-$NAME"
    --labels "$LABELS" --work _work --replace)
[ -z "$GROUP" ] || CONFIG_ARGS+=(--runnergroup "$GROUP")

if [ "$DRY_RUN" -eq 1 ]; then
    if [ "$JIT" -eq 0 ]; then
        printf 'would run as %s: %s/config.sh %s (token in ACTIONS_RUNNER_INPUT_TOKEN)\n' "$RUN_USER" "$DIR" "${CONFIG_ARGS[*]}"
    else
        printf 'would write %s/%s.env (0600 root): ACTIONS_RUNNER_INPUT_JITCONFIG=***\n' "$ENV_DIR" "$NAME"
    fi
    printf 'would install: %s, then %s enable --now %s\n' "$UNIT_SRC" "$SYSTEMCTL" "$UNIT"
    exit 0
fi

[ -x "$DIR/run.sh" ] || die "the actions runner is not unpacked in $DIR (download and verify it first)"
owner=$(stat -c %u "$DIR")
[ "$owner" = "$RUN_UID" ] || die "$DIR must belong to $RUN_USER (uid $RUN_UID), not uid $owner: chown -R $RUN_USER: $DIR"

if [ "$JIT" -eq 0 ]; then
    [ -x "$DIR/config.sh" ] || die "no config.sh in $DIR"
    # As the runner user, with a scrubbed environment that holds the token only under the name the
    # runner reads (exported, so it never appears on any command line).
    (
        cd "$DIR"
        while IFS= read -r var; do
            case "$var" in PATH|LANG|LC_ALL|TERM) ;; *) unset "$var" 2>/dev/null || true ;; esac
        done < <(compgen -e)
        export HOME="$RUN_HOME" USER="$RUN_USER" LOGNAME="$RUN_USER"
        export ACTIONS_RUNNER_INPUT_TOKEN="$TOKEN"
        if [ "$(id -u)" = "$RUN_UID" ]; then
            exec ./config.sh "${CONFIG_ARGS[@]}"
        fi
        [ "$(id -u)" = 0 ] || die "run as root (to switch to $RUN_USER) or as $RUN_USER"
        exec setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --init-groups -- ./config.sh "${CONFIG_ARGS[@]}"
    )
    unset TOKEN
else
    # Root-only, in /run (tmpfs: gone at reboot); the unit reads it as root and deletes it at start.
    install -d -m 0700 -o 0 -g 0 "$ENV_DIR"
    umask 077
    tmp=$(mktemp "$ENV_DIR/.${NAME}.XXXXXX")
    printf 'ACTIONS_RUNNER_INPUT_JITCONFIG=%s\n' "$JITCONFIG" >"$tmp"
    mv -f "$tmp" "$ENV_DIR/$NAME.env"
    unset JITCONFIG
fi

install -m 0644 "$UNIT_SRC" "$SYSTEMD_DIR/hailo-actions-runner@.service"
"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable --now "$UNIT"
echo "registered $(hostname)-$NAME (labels $LABELS) as $RUN_USER; unit $UNIT"
