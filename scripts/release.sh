#!/usr/bin/env bash
# The main job (README): a canary release end to end on the embedded defaults.
# Sets the machine up (scripts/setup.sh), runs the hailo_canary_release DAG (Airflow dag.test(), SQLite)
# printing one line per task, then the verdict and where the manifest and gate report are.
#   ./scripts/release.sh [--tag TAG] [--continuity-id ID] [--config-version V] [--onnx PATH]
# Airflow's task logs go to artifacts/logs/TAG.log (path printed; shown only if a task fails).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

# shellcheck source=scripts/setup.sh
source scripts/setup.sh
main

export HAILO_PIPELINE_ROOT="${HAILO_PIPELINE_ROOT:-$REPO_ROOT/artifacts}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$HAILO_PIPELINE_ROOT/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
mkdir -p "$AIRFLOW_HOME"
export PYTHONPATH="$REPO_ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m hailo_airflow.demo "$@"
