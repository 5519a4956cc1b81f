#!/usr/bin/env bash
# shellcheck disable=SC2317  # redis_ping, api_ready, worker_ready are called through wait_for
# The distributed Airflow stack on one host, natively (README "Scaling out"):
#   PostgreSQL (private cluster, 127.0.0.1) + Redis (127.0.0.1, password) + api-server, scheduler,
#   dag-processor, triggerer (CeleryExecutor) + one Celery worker per queue (`hailo-builder`, `edge`),
#   each worker with its own --celery-hostname, log-server port and HAILO_PIPELINE_ROOT; the two
#   share only the artifact store (HAILO_ARTIFACT_ROOT, with the release history in it), as two hosts would.
#
#   scripts/scaleout.sh start    # idempotent; waits until every component is up
#   scripts/scaleout.sh status   # exit 0 when every component it started is running
#   scripts/scaleout.sh stop     # stops only the processes it started (pid + start time checked)
#   scripts/scaleout.sh purge    # stop, then delete the state (database, store, secrets)
#
# Settings (environment): HAILO_SCALEOUT_DIR (state, default artifacts/scaleout),
# HAILO_SCALEOUT_SECRETS_DIR (default $HAILO_SCALEOUT_DIR/secrets), HAILO_SCALEOUT_{API,PG,REDIS}_PORT,
# HAILO_SCALEOUT_{BUILDER,EDGE}_LOG_PORT, HAILO_VENV. Secrets are files (0600) in the secrets dir:
# jwt_secret, fernet_key, api_secret_key, admin_password, pg_password, redis_password; a missing one is
# generated once here, at provisioning. The release signing key comes from HAILO_SIGNING_KEY /
# HAILO_SIGNING_PUB when set, else one pair is generated once here: workers never generate keys.
# Every other HAILO_* variable in the caller's environment reaches the workers unchanged.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HAILO_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
AIRFLOW="$VENV/bin/airflow"
STATE="${HAILO_SCALEOUT_DIR:-$REPO_ROOT/artifacts/scaleout}"
SECRETS="${HAILO_SCALEOUT_SECRETS_DIR:-$STATE/secrets}"
API_PORT="${HAILO_SCALEOUT_API_PORT:-28080}"
PG_PORT="${HAILO_SCALEOUT_PG_PORT:-25432}"
REDIS_PORT="${HAILO_SCALEOUT_REDIS_PORT:-26379}"
BUILDER_LOG_PORT="${HAILO_SCALEOUT_BUILDER_LOG_PORT:-28793}"
EDGE_LOG_PORT="${HAILO_SCALEOUT_EDGE_LOG_PORT:-28794}"
# Longer than the longest task (compile + a full latency gate): Redis redelivers an unacknowledged
# task after this, which would run it twice.
VISIBILITY_TIMEOUT="${HAILO_SCALEOUT_VISIBILITY_TIMEOUT:-21600}"
WAIT_S="${HAILO_SCALEOUT_WAIT_S:-300}"
QUEUES=(hailo-builder edge)
ADMIN_USER="admin"
# fab: FAB auth manager with an admin and RELEASE_USER, who may only trigger and read the release
# DAGs (role ReleaseTrigger, plugins/hailo_airflow/fab_roles.py); simple: SimpleAuthManager (one admin).
AUTH="${HAILO_SCALEOUT_AUTH:-fab}"
RELEASE_USER="ci-release"

log() { printf '[scaleout] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

check_port_number() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -lt 1024 ] || [ "$2" -gt 65535 ]; then
        die "$1=$2 is not a port number (1024-65535)"
    fi
}

pg_bin() {
    local d
    d="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)"
    if [ -z "$d" ] || [ ! -x "$d/postgres" ]; then
        die "PostgreSQL is not installed (apt-get install postgresql; scripts/setup.sh does it)"
    fi
    printf '%s\n' "$d"
}

# --- processes: each in its own session; the pid file holds "pid starttime" so that stop never
# --- signals a recycled pid.
# Field 22 of /proc/PID/stat; the command name before it may hold spaces (setproctitle), so cut
# after its closing parenthesis first.
start_time() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
# A dead process whose parent never reaps it (PID 1 in many containers does not) stays a zombie
# with its pid and start time: it is not running.
proc_state() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}'; }

is_ours() {
    local pid want
    [ -f "$STATE/run/$1.pid" ] || return 1
    read -r pid want <"$STATE/run/$1.pid"
    [ -n "$pid" ] && [ "$(start_time "$pid")" = "$want" ] && [ "$(proc_state "$pid")" != Z ]
}

# The live processes of session $1. Each component is a session of its own (spawn), and the
# session is what stop ends: an Airflow task runs in its own process group inside the worker's.
session_pids() { { ps -o pid=,stat= --sid "$1" 2>/dev/null || true; } | awk '$2 !~ /^Z/ {print $1}'; }

spawn() { # spawn NAME CMD... (environment: the caller's exports)
    local name="$1" pid
    shift
    if is_ours "$name"; then
        return 0
    fi
    # Where this start's output begins in the (appended) log: a restarted component's readiness
    # is read from there on, never from the line an earlier, killed one left.
    stat -c %s "$STATE/logs/$name.log" 2>/dev/null >"$STATE/run/$name.logpos" || echo 0 >"$STATE/run/$name.logpos"
    setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
    pid=$!
    printf '%s %s\n' "$pid" "$(start_time "$pid")" >"$STATE/run/$name.pid"
}

stop_one() { # SIGTERM (SIGINT for postgres: fast shutdown) to the session leader's group, SIGKILL
    # to whatever of the session is left after a grace period
    local name="$1" sig="${2:-TERM}" pid want left
    [ -f "$STATE/run/$name.pid" ] || return 0
    read -r pid want <"$STATE/run/$name.pid"
    if is_ours "$name"; then
        log "stopping $name (session $pid)"
        kill "-$sig" -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            [ -n "$(session_pids "$pid")" ] || break
            sleep 0.5
        done
        left="$(session_pids "$pid")"
        if [ -n "$left" ]; then
            # shellcheck disable=SC2086  # one pid per word
            kill -KILL $left 2>/dev/null || true
        fi
    fi
    rm -f "$STATE/run/$name.pid" "$STATE/run/$name.logpos"
}

wait_for() { # wait_for WHAT CMD...
    local what="$1" deadline=$((SECONDS + WAIT_S))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what not up after ${WAIT_S}s (logs: $STATE/logs)"
        sleep 1
    done
}

# --- secrets ---------------------------------------------------------------------------------
secret() { # secret NAME KIND → path of the file, generated once if missing
    local f="$SECRETS/$1"
    if [ ! -s "$f" ]; then
        (umask 077 && "$PY" -c '
import secrets, sys
from cryptography.fernet import Fernet
sys.stdout.write(Fernet.generate_key().decode() if sys.argv[1] == "fernet" else secrets.token_urlsafe(32))
' "$2" >"$f.tmp" && mv "$f.tmp" "$f")
    fi
    chmod 600 "$f"
    printf '%s\n' "$f"
}

provision_secrets() {
    mkdir -p "$SECRETS" && chmod 700 "$SECRETS"
    local name
    for name in jwt_secret api_secret_key admin_password release_password pg_password redis_password; do
        secret "$name" token >/dev/null
    done
    secret fernet_key fernet >/dev/null
    if [ -z "${HAILO_SIGNING_KEY:-}" ]; then
        # One release signing pair for the whole stack, made here (provisioning), never by a worker.
        "$PY" -c 'import sys; from pathlib import Path; from release.keys import generate_dev_keypair; generate_dev_keypair(Path(sys.argv[1]))' \
            "$SECRETS/signing"
        export HAILO_SIGNING_KEY="$SECRETS/signing/release-signing.key" HAILO_SIGNING_PUB="$SECRETS/signing/release-signing.pub"
    fi
    [ -r "$HAILO_SIGNING_KEY" ] || die "HAILO_SIGNING_KEY=$HAILO_SIGNING_KEY is not readable"
    export HAILO_SIGNING_PUB="${HAILO_SIGNING_PUB:-$HAILO_SIGNING_KEY.pub}"
    [ -r "$HAILO_SIGNING_PUB" ] || die "HAILO_SIGNING_PUB=$HAILO_SIGNING_PUB is not readable"
}

# --- configuration shared by every Airflow component (secrets only through the environment,
# --- never on a command line) -----------------------------------------------------------------
export_airflow_env() {
    local pg_pw redis_pw
    pg_pw="$(cat "$SECRETS/pg_password")"
    redis_pw="$(cat "$SECRETS/redis_password")"
    export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
    export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
    AIRFLOW__CORE__FERNET_KEY="$(cat "$SECRETS/fernet_key")"
    export AIRFLOW__CORE__FERNET_KEY
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$API_PORT/execution/"
    if [ "$AUTH" = fab ]; then
        export AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
        export AIRFLOW__FAB__CONFIG_FILE="$STATE/control/webserver_config.py"
    else
        export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
    fi
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$ADMIN_USER:admin"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$STATE/control/simple_auth_manager_passwords.json.generated"
    # TaskInstance.hostname = HAILO_WORKER_HOSTNAME when set (two workers on one host), else the FQDN.
    export AIRFLOW__CORE__HOSTNAME_CALLABLE=hailo_airflow.hosts.worker_hostname
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$pg_pw@127.0.0.1:$PG_PORT/airflow"
    export AIRFLOW__CELERY__BROKER_URL="redis://:$redis_pw@127.0.0.1:$REDIS_PORT/0"
    export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://airflow:$pg_pw@127.0.0.1:$PG_PORT/airflow"
    export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT="$VISIBILITY_TIMEOUT"
    AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$SECRETS/jwt_secret")"
    export AIRFLOW__API_AUTH__JWT_SECRET
    AIRFLOW__API__SECRET_KEY="$(cat "$SECRETS/api_secret_key")"
    export AIRFLOW__API__SECRET_KEY
    export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$API_PORT"
    export AIRFLOW__API__BASE_URL="http://127.0.0.1:$API_PORT"
    # One host: every component writes and reads task logs in one folder (across hosts, each
    # worker serves its own on its log-server port).
    export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$STATE/logs/airflow"
    # Latency between tasks (bench/bench_dags.py): a finished task's downstream is queued on the
    # next scheduler loop, and Celery state is synced on every executor heartbeat.
    export AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="${AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME:-0.2}"
    export AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC="${AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC:-1}"
    export AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER=1
    # A task's supervisor notices its process has exited on the next select() timeout, at most this
    # many seconds later (default 5: the ~5 s gap between tasks on a concurrency-1 worker).
    export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}"
    # A task whose worker died (SIGKILL, power cut) is failed by the scheduler after this long
    # without a heartbeat (its supervisor heartbeats every min_heartbeat_interval, 1 s here), and
    # its run goes on to ensure_safe. Airflow's default, 300 s; the test stack sets 30 s.
    export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-300}"
    export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL:-10}"
    export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
    export PYTHONPATH="$REPO_ROOT/plugins:$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$VENV/bin:$PATH"
    # The release store both workers share (the only thing two hosts have in common).
    export HAILO_ARTIFACT_ROOT="$STATE/store/artifacts"
}

# --- components ------------------------------------------------------------------------------
start_postgres() {
    local bin pgdir
    bin="$(pg_bin)"
    if [ -f "$STATE/pg.dir" ]; then
        pgdir="$(cat "$STATE/pg.dir")"
    elif [ "$(id -u)" -eq 0 ]; then
        # initdb/postgres refuse to run as root: the cluster belongs to the `postgres` user, in a
        # directory it can reach.
        pgdir="$(mktemp -d /tmp/hailo-scaleout-pg.XXXXXX)"
        chown postgres:postgres "$pgdir"
        printf '%s\n' "$pgdir" >"$STATE/pg.dir"
    else
        pgdir="$STATE/pg"
        mkdir -p "$pgdir"
        printf '%s\n' "$pgdir" >"$STATE/pg.dir"
    fi
    local as_pg=()
    [ "$(id -u)" -eq 0 ] && as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    if [ ! -f "$pgdir/data/PG_VERSION" ]; then
        log "initdb $pgdir/data"
        install -m 600 -o "$(stat -c %u "$pgdir")" "$SECRETS/pg_password" "$pgdir/pwfile"
        "${as_pg[@]}" "$bin/initdb" -D "$pgdir/data" -U airflow --pwfile="$pgdir/pwfile" \
            --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 >>"$STATE/logs/postgres.log" 2>&1 ||
            die "initdb failed: $STATE/logs/postgres.log"
        rm -f "$pgdir/pwfile"
        "${as_pg[@]}" mkdir -p "$pgdir/sock"
    fi
    spawn postgres "${as_pg[@]}" "$bin/postgres" -D "$pgdir/data" -p "$PG_PORT" -k "$pgdir/sock" \
        -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200
    wait_for "PostgreSQL on 127.0.0.1:$PG_PORT" "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
    export PGPASSWORD
    PGPASSWORD="$(cat "$SECRETS/pg_password")"
    if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U airflow -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='airflow'" | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U airflow airflow
    fi
    unset PGPASSWORD
}

start_redis() {
    command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
    mkdir -p "$STATE/redis"
    # The password goes in a 0600 config file, not on the command line.
    (umask 077 && printf '%s\n' "port $REDIS_PORT" "bind 127.0.0.1" "protected-mode yes" 'save ""' "appendonly no" \
        "dir $STATE/redis" "requirepass $(cat "$SECRETS/redis_password")" >"$STATE/redis/redis.conf")
    spawn redis redis-server "$STATE/redis/redis.conf"
    wait_for "Redis on 127.0.0.1:$REDIS_PORT" redis_ping
}

redis_ping() { REDISCLI_AUTH="$(cat "$SECRETS/redis_password")" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG; }

init_airflow() {
    mkdir -p "$STATE/control"
    # SimpleAuthManager's password file: the admin password from the secrets dir.
    (umask 077 && "$PY" -c 'import json, sys; print(json.dumps({sys.argv[1]: open(sys.argv[2]).read().strip()}))' \
        "$ADMIN_USER" "$SECRETS/admin_password" >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    log "airflow db migrate"
    AIRFLOW_HOME="$STATE/control" "$AIRFLOW" db migrate >>"$STATE/logs/migrate.log" 2>&1 || die "airflow db migrate failed: $STATE/logs/migrate.log"
    # A task in a pool that does not exist is never scheduled.
    AIRFLOW_HOME="$STATE/control" "$AIRFLOW" pools import "$REPO_ROOT/docker/airflow/pools.json" >>"$STATE/logs/migrate.log" 2>&1 ||
        die "airflow pools import failed: $STATE/logs/migrate.log"
    if [ "$AUTH" = fab ]; then
        # Users and the release role; passwords from the secret files (never argv).
        AIRFLOW_HOME="$STATE/control" "$PY" -m hailo_airflow.fab_roles --user "$ADMIN_USER:Admin:$SECRETS/admin_password" \
            --user "$RELEASE_USER:ReleaseTrigger:$SECRETS/release_password" >>"$STATE/logs/migrate.log" 2>&1 ||
            die "creating the FAB users and roles failed: $STATE/logs/migrate.log"
    fi
}

start_control_plane() {
    local c
    for c in api-server scheduler dag-processor triggerer; do
        spawn "$c" env AIRFLOW_HOME="$STATE/control" HAILO_PIPELINE_ROOT="$STATE/control/pipeline" "$AIRFLOW" "$c"
    done
}

control_plane_running() {
    local c
    for c in api-server scheduler dag-processor triggerer; do is_ours "$c" || return 1; done
}

worker_port() { if [ "$1" = hailo-builder ]; then echo "$BUILDER_LOG_PORT"; else echo "$EDGE_LOG_PORT"; fi; }
worker_concurrency() { if [ "$1" = hailo-builder ]; then echo 1; else echo 2; fi; }

start_workers() {
    local q home host
    host="$(hostname -s)"
    for q in "${QUEUES[@]}"; do
        home="$STATE/workers/$q"
        mkdir -p "$home/pipeline"
        # Own AIRFLOW_HOME and HAILO_PIPELINE_ROOT (work dirs, device state): only the store is shared.
        spawn "worker-$q" env AIRFLOW_HOME="$home" HAILO_PIPELINE_ROOT="$home/pipeline" \
            HAILO_WORKER_HOSTNAME="$q.$host" AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$(worker_port "$q")" \
            "$AIRFLOW" celery worker --queues "$q" --celery-hostname "$q@$host" --concurrency "$(worker_concurrency "$q")"
    done
}

api_ready() {
    "$PY" - "$API_PORT" "$ADMIN_USER" "$SECRETS/admin_password" <<'EOF'
import json, sys, urllib.request
port, user, pw_file = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}"
req = urllib.request.Request(f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                             data=json.dumps({"username": user, "password": open(pw_file).read().strip()}).encode())
urllib.request.urlopen(req, timeout=5).read()
health = json.load(urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5))
bad = [k for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
       if (health.get(k) or {}).get("status") != "healthy"]
sys.exit(1 if bad else 0)
EOF
}

worker_ready() {
    local from
    from="$(cat "$STATE/run/worker-$1.logpos" 2>/dev/null || echo 0)"
    tail -c "+$((from + 1))" "$STATE/logs/worker-$1.log" | grep -q "ready\."
}

write_stack_json() {
    "$PY" - "$STATE/stack.json" "$API_PORT" "$ADMIN_USER" "$SECRETS/admin_password" "$STATE" "$(hostname -s)" "$HAILO_SIGNING_PUB" \
        "$AUTH" "$RELEASE_USER" "$SECRETS/release_password" <<'EOF'
import json, sys
out, port, user, pw_file, state, host, pub, auth, release_user, release_pw_file = sys.argv[1:11]
json.dump({
    "url": f"http://127.0.0.1:{port}", "username": user, "password_file": pw_file, "state": state, "auth": auth,
    "release_user": release_user if auth == "fab" else None, "release_password_file": release_pw_file,
    "artifact_root": f"{state}/store/artifacts", "signing_pub": pub,
    "workers": {q: {"celery_hostname": f"{q}@{host}", "task_hostname": f"{q}.{host}",
                    "pipeline_root": f"{state}/workers/{q}/pipeline"} for q in ("hailo-builder", "edge")},
}, open(out, "w"), indent=2)
EOF
}

cmd_start() {
    local p
    for p in API_PORT PG_PORT REDIS_PORT BUILDER_LOG_PORT EDGE_LOG_PORT; do check_port_number "$p" "${!p}"; done
    [[ "$VISIBILITY_TIMEOUT" =~ ^[0-9]+$ ]] || die "HAILO_SCALEOUT_VISIBILITY_TIMEOUT must be seconds"
    case "$AUTH" in fab | simple) ;; *) die "HAILO_SCALEOUT_AUTH=$AUTH: fab or simple" ;; esac
    [ -x "$AIRFLOW" ] || die "$AIRFLOW not found: run scripts/setup.sh (HAILO_VENV=$VENV)"
    "$PY" -c 'import airflow.providers.celery, airflow.providers.postgres, airflow.providers.fab' 2>/dev/null ||
        die "$VENV lacks the Celery/PostgreSQL/FAB providers: install requirements/celery.lock (scripts/setup.sh)"
    mkdir -p "$STATE/logs/airflow" "$STATE/run" "$STATE/store/artifacts"
    STATE="$(cd "$STATE" && pwd)"
    provision_secrets
    export_airflow_env
    # Before anything starts: this host's signing key must be the one recorded in the shared store.
    "$PY" -m hailo_airflow.keycheck >&2 || die "refusing to start: signing key check failed (see above)"
    start_postgres
    start_redis
    # A running control plane has migrated the database and made the pools and users already:
    # restarting a lost worker does not run four Airflow commands again (measured 60-250 s on a
    # busy 2-core machine, most of the time the restarted worker was down).
    if ! control_plane_running; then
        init_airflow
    fi
    start_control_plane
    start_workers
    local q
    wait_for "the api-server, scheduler, dag-processor and triggerer" api_ready
    for q in "${QUEUES[@]}"; do wait_for "the $q worker" worker_ready "$q"; done
    write_stack_json
    log "up: http://127.0.0.1:$API_PORT (user $ADMIN_USER, password in $SECRETS/admin_password); state $STATE"
}

COMPONENTS=(worker-hailo-builder worker-edge triggerer dag-processor scheduler api-server redis postgres)

cmd_stop() {
    local c sidecar="$STATE/workers/edge/pipeline/device/local/sidecar"
    # The `local` device's sidecar, started by the edge worker's deploy task (the stand-in for a Pi).
    if [ -f "$sidecar/sidecar.pid" ] && [ -x "$PY" ]; then
        log "stopping the local device sidecar"
        "$PY" -c 'import sys; from pathlib import Path; from release.local_sidecar import _stop; _stop(Path(sys.argv[1]))' "$sidecar" || true
    fi
    for c in "${COMPONENTS[@]}"; do
        if [ "$c" = postgres ]; then stop_one "$c" INT; else stop_one "$c"; fi
    done
}

cmd_status() {
    local c rc=0
    for c in "${COMPONENTS[@]}"; do
        if is_ours "$c"; then
            printf '%-22s running (pid %s)\n' "$c" "$(cut -d' ' -f1 "$STATE/run/$c.pid")"
        else
            printf '%-22s stopped\n' "$c"
            rc=3
        fi
    done
    return "$rc"
}

cmd_purge() {
    cmd_stop
    if [ -f "$STATE/pg.dir" ]; then
        rm -rf -- "$(cat "$STATE/pg.dir")"
    fi
    rm -rf -- "$STATE"
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        purge) cmd_purge ;;
        *)
            echo "usage: $0 start|stop|status|purge" >&2
            exit 2
            ;;
    esac
}

# One line: bash has read the whole file before it runs anything, so editing the script never
# disturbs a running start/stop.
main "$@"; exit $?
