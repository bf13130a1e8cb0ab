#!/usr/bin/env bash
# A shared MLflow tracking server for sweeps on several machines (tracking=server):
#   scripts/mlflow_server.sh BACKEND_STORE_URI ARTIFACT_DIR [PORT]
#   scripts/mlflow_server.sh postgresql://mlflow@127.0.0.1:5432/mlflow /srv/mlflow/artifacts 5000
# Runs and metrics go to the backend store (PostgreSQL: needs `pip install -e ".[server]"`; sqlite:///FILE
# works for one machine); artifacts to ARTIFACT_DIR on this machine, served through the server
# (--serve-artifacts), so clients need no access to that disk. Clients: MLFLOW_TRACKING_URI=http://HOST:PORT.
#
# Binds 127.0.0.1 unless MLFLOW_HOST says otherwise. Before exposing it read docs/reliability.md (basic-auth
# app, --allowed-hosts, a TLS reverse proxy). Keep the database password out of the URI, which `ps` shows:
# use ~/.pgpass or PGPASSWORD. Environment: MLFLOW_HOST (127.0.0.1), MLFLOW_WORKERS (2),
# MLFLOW_ALLOWED_HOSTS (Host headers to accept when MLFLOW_HOST is not loopback), MLFLOW_BIN (mlflow).
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi
backend=$1
artifacts=$2
port=${3:-5000}
mkdir -p "$artifacts"

args=(server
  --backend-store-uri "$backend"
  --artifacts-destination "$(cd "$artifacts" && pwd)"
  --serve-artifacts
  --host "${MLFLOW_HOST:-127.0.0.1}"
  --port "$port"
  --workers "${MLFLOW_WORKERS:-2}")
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
exec "${MLFLOW_BIN:-mlflow}" "${args[@]}"
