#!/usr/bin/env bash
# A shared MLflow tracking server for sweeps on several machines (tracking=server):
#   scripts/mlflow_server.sh [--auth] BACKEND_STORE_URI ARTIFACT_DIR [PORT]
#   MLFLOW_BACKEND_STORE_URI=BACKEND_STORE_URI scripts/mlflow_server.sh [--auth] ARTIFACT_DIR [PORT]
#   e.g. scripts/mlflow_server.sh postgresql://mlflow@127.0.0.1:5432/mlflow /srv/mlflow/artifacts 5000
# Runs and metrics go to the backend store (PostgreSQL: needs `pip install -e ".[server]"`; sqlite:///FILE
# works for one machine); artifacts to ARTIFACT_DIR on this machine, served through the server
# (--serve-artifacts), so clients need no access to that disk. Clients: MLFLOW_TRACKING_URI=http://HOST:PORT.
#
# The backend URI reaches mlflow through its environment (MLFLOW_BACKEND_STORE_URI), never its command line,
# which `ps` shows to every user. Give a URI holding a password in that variable rather than as an argument
# (an argument stays in your shell's history), or keep the password out of it: ~/.pgpass or PGPASSWORD.
#
# --auth: MLflow's basic-auth app (--app-name basic-auth): every request needs a user and password. The admin
# user is created on the first start with the password in MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more;
# there is no default, and the script refuses a first start without it; on later starts MLflow ignores it, as
# the admin exists, and it may be left out: change it with MLflow's update-password API). Set it without leaving it in the shell's history:
#   read -rs MLFLOW_AUTH_ADMIN_PASSWORD && export MLFLOW_AUTH_ADMIN_PASSWORD
# Users and permissions are kept in MLFLOW_AUTH_DIR (default: ARTIFACT_DIR/../mlflow-auth). Clients give theirs
# as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or in the URI (http://USER:PASSWORD@HOST:PORT),
# which the project masks in every param, tag, log line and report, and keeps off stdout.
#
# Binds 127.0.0.1 unless MLFLOW_HOST says otherwise. Before exposing it read docs/reliability.md (--auth,
# --allowed-hosts, a TLS reverse proxy). Environment: MLFLOW_HOST (127.0.0.1), MLFLOW_WORKERS (2),
# MLFLOW_ALLOWED_HOSTS (Host headers to accept when MLFLOW_HOST is not loopback), MLFLOW_BIN (mlflow);
# with --auth: MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ), MLFLOW_AUTH_DIR,
# MLFLOW_AUTH_CONFIG_PATH (an ini of your own instead), MLFLOW_FLASK_SERVER_SECRET_KEY (random if unset; give
# the same one to every server behind one address).
set -euo pipefail

usage() {
  sed -n '2,5p' "$0" >&2
  exit 2
}

auth=false
if [ "${1:-}" = "--auth" ]; then
  auth=true
  shift
fi
case "${1:-}" in
  -*) usage ;;
  *://*)
    backend=$1
    shift
    # Not echoed: the point is to keep the password off the screen.
    userinfo='^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/]*@' parameter='[?&;]password='
    if [[ "$backend" =~ $userinfo || "$backend" =~ $parameter ]]; then
      echo "warning: the backend URI on the command line holds a password, which stays in your shell's history;" \
        "give it as MLFLOW_BACKEND_STORE_URI=... instead, or use ~/.pgpass or PGPASSWORD" >&2
    fi
    ;;
  *) backend=${MLFLOW_BACKEND_STORE_URI:-} ;;
esac
if [ -z "$backend" ] || [ $# -lt 1 ] || [ $# -gt 2 ]; then
  usage
fi
artifacts=$1
port=${2:-5000}
mkdir -p "$artifacts"
artifacts=$(cd "$artifacts" && pwd)

args=(server
  --artifacts-destination "$artifacts"
  --serve-artifacts
  --host "${MLFLOW_HOST:-127.0.0.1}"
  --port "$port"
  --workers "${MLFLOW_WORKERS:-2}")
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

if $auth; then
  auth_dir=${MLFLOW_AUTH_DIR:-$(dirname "$artifacts")/mlflow-auth}
  # The password creates the admin on the first start; once the users' database exists (or with your own ini),
  # MLflow does not read it, and a restart (systemd, cron) need not hold it.
  if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ] && [ ! -e "$auth_dir/basic_auth.db" ] && [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
    echo "error: --auth needs the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more; there is" \
      "no default, and never on the command line, which ps shows): read -rs MLFLOW_AUTH_ADMIN_PASSWORD &&" \
      "export MLFLOW_AUTH_ADMIN_PASSWORD, then start again" >&2
    exit 2
  fi
  if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && [ "${#MLFLOW_AUTH_ADMIN_PASSWORD}" -lt 12 ]; then
    echo "error: MLFLOW_AUTH_ADMIN_PASSWORD is too short: MLflow's basic auth needs 12 characters or more" >&2
    exit 2
  fi
  if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
    (umask 077 && mkdir -p "$auth_dir")
    auth_dir=$(cd "$auth_dir" && pwd)
    (
      umask 077
      cat >"$auth_dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = sqlite:///$auth_dir/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
    )
    export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
  fi
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    export MLFLOW_FLASK_SERVER_SECRET_KEY
  fi
  args+=(--app-name basic-auth)
fi

export MLFLOW_BACKEND_STORE_URI="$backend"
exec "${MLFLOW_BIN:-mlflow}" "${args[@]}"
