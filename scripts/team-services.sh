#!/usr/bin/env bash
# Team setup: PostgreSQL, an MLflow tracking server and a Prefect server on it, a Prefect work
# pool with the flows deployed to it. Workers on other machines (the GPU box) pick up the runs.
#
#   bash scripts/team-services.sh start    # PostgreSQL + MLflow + Prefect servers, work pool, deployments
#   bash scripts/team-services.sh status   # what runs, and the exports the other machines need
#   bash scripts/team-services.sh worker   # (any machine) a process worker on the pool, in the foreground
#   bash scripts/team-services.sh stop     # stop the servers and PostgreSQL (data stays in $TEAM_DIR)
#
# Settings (environment, defaults in brackets):
#   TEAM_DIR [.team]           PostgreSQL's data, server logs, MLflow artifacts, pid files
#   TEAM_HOST [127.0.0.1]      address the MLflow and Prefect servers listen on; 0.0.0.0 (or the
#                              machine's LAN address) for a team. PostgreSQL always stays on 127.0.0.1.
#   TEAM_URL_HOST [TEAM_HOST]  the name other machines reach this one by (for the printed exports)
#   PG_PORT [5433]  MLFLOW_PORT [5000]  PREFECT_PORT [4200]
#   POOL [pokegan]             the Prefect work pool (type: process)
#   DEPLOY [1]                 deploy the flows to the pool on start (0: servers only)
#   PG_BIN [/usr/lib/postgresql/15/bin]   Debian's postgresql-15
# The worker side needs PREFECT_API_URL and MLFLOW_TRACKING_URI (printed by start/status).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TEAM_DIR=$(mkdir -p "${TEAM_DIR:-.team}" && cd "${TEAM_DIR:-.team}" && pwd)
TEAM_HOST=${TEAM_HOST:-127.0.0.1}
TEAM_URL_HOST=${TEAM_URL_HOST:-$TEAM_HOST}
[ "$TEAM_URL_HOST" = 0.0.0.0 ] && TEAM_URL_HOST=$(hostname)
PG_PORT=${PG_PORT:-5433}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PREFECT_PORT=${PREFECT_PORT:-4200}
POOL=${POOL:-pokegan}
DEPLOY=${DEPLOY:-1}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
set -a; . "$ROOT"/flows/telemetry.env; set +a   # telemetry off (the one list)
[ -x .venv/bin/python ] && export PATH="$ROOT/.venv/bin:$PATH"

PGDATA=$TEAM_DIR/postgres
PGRUN=$TEAM_DIR/run          # PostgreSQL's unix socket and every pid file
LOGS=$TEAM_DIR/logs
PGUSER_NAME=pokegan
MLFLOW_URL="http://$TEAM_URL_HOST:$MLFLOW_PORT"
PREFECT_URL="http://$TEAM_URL_HOST:$PREFECT_PORT/api"
LOCAL_MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
LOCAL_PREFECT_URL="http://127.0.0.1:$PREFECT_PORT/api"
[ "$TEAM_HOST" != 0.0.0.0 ] && LOCAL_MLFLOW_URL="http://$TEAM_HOST:$MLFLOW_PORT" \
  && LOCAL_PREFECT_URL="http://$TEAM_HOST:$PREFECT_PORT/api"

die() { echo "team-services: error: $*" >&2; exit 2; }

# PostgreSQL refuses to run as root: as root (CI, containers) its commands run as `postgres`.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user (apt-get install postgresql-15)"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_password() { cat "$TEAM_DIR/pg-password"; }
db_url() { echo "$1://$PGUSER_NAME:$(pg_password)@127.0.0.1:$PG_PORT/$2"; }

wait_http() {  # url seconds what logfile
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    if python - "$1" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PY
    sleep 0.5
  done
  echo "team-services: $3 did not answer on $1 within $2 s; last lines of $4:" >&2
  tail -n 30 "$4" >&2 || true
  exit 1
}

start_postgres() {
  [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL in $PG_BIN (apt-get install postgresql-15, or set PG_BIN)"
  mkdir -p "$PGRUN" "$LOGS"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    umask 077
    python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$TEAM_DIR/pg-password"
    mkdir -p "$PGDATA"
    cp "$TEAM_DIR/pg-password" "$TEAM_DIR/.pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDATA" "$TEAM_DIR/.pwfile"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U "$PGUSER_NAME" --pwfile="$TEAM_DIR/.pwfile" \
      --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 >"$LOGS/initdb.log" 2>&1 \
      || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
    rm -f "$TEAM_DIR/.pwfile"
    umask 022
  fi
  [ "$(id -u)" = 0 ] && chown postgres "$PGRUN" "$LOGS"
  [ "$(id -u)" = 0 ] && touch "$LOGS/postgres.log" && chown postgres "$LOGS/postgres.log"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PGRUN" start >/dev/null \
      || { tail -n 20 "$LOGS/postgres.log" >&2; die "PostgreSQL did not start (port $PG_PORT taken? see $LOGS/postgres.log)"; }
  fi
  local db
  for db in mlflow prefect; do
    PGPASSWORD=$(pg_password) "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || PGPASSWORD=$(pg_password) "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" "$db"
  done
  echo "PostgreSQL 127.0.0.1:$PG_PORT (data $PGDATA)"
}

running() { [ -f "$PGRUN/$1.pid" ] && kill -0 "$(cat "$PGRUN/$1.pid")" 2>/dev/null; }

start_mlflow() {
  running mlflow && { echo "MLflow already running ($LOCAL_MLFLOW_URL)"; return; }
  mkdir -p "$TEAM_DIR/mlflow-artifacts"
  # Its own session (setsid), so stop can end the server with all its workers by one group id.
  setsid mlflow server --backend-store-uri "$(db_url postgresql+psycopg mlflow)" \
    --artifacts-destination "$TEAM_DIR/mlflow-artifacts" --serve-artifacts \
    --host "$TEAM_HOST" --port "$MLFLOW_PORT" --workers 1 \
    --allowed-hosts "localhost,localhost:$MLFLOW_PORT,127.0.0.1,127.0.0.1:$MLFLOW_PORT,$TEAM_URL_HOST,$TEAM_URL_HOST:$MLFLOW_PORT" \
    >"$LOGS/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$PGRUN/mlflow.pid"
  wait_http "$LOCAL_MLFLOW_URL/health" 120 "the MLflow server" "$LOGS/mlflow.log"
  echo "MLflow $MLFLOW_URL (store: PostgreSQL db mlflow, artifacts $TEAM_DIR/mlflow-artifacts)"
}

start_prefect() {
  running prefect && { echo "Prefect already running ($LOCAL_PREFECT_URL)"; return; }
  mkdir -p "$TEAM_DIR/prefect-home"
  PREFECT_HOME="$TEAM_DIR/prefect-home" PREFECT_API_DATABASE_CONNECTION_URL="$(db_url postgresql+asyncpg prefect)" \
    PREFECT_UI_API_URL="$PREFECT_URL" PREFECT_SERVER_API_HOST="$TEAM_HOST" PREFECT_SERVER_API_PORT="$PREFECT_PORT" \
    setsid prefect server start --host "$TEAM_HOST" --port "$PREFECT_PORT" >"$LOGS/prefect.log" 2>&1 < /dev/null &
  echo $! > "$PGRUN/prefect.pid"
  wait_http "$LOCAL_PREFECT_URL/health" 180 "the Prefect server" "$LOGS/prefect.log"
  echo "Prefect $PREFECT_URL (store: PostgreSQL db prefect)"
}

deploy() {
  PREFECT_API_URL=$LOCAL_PREFECT_URL prefect --no-prompt work-pool inspect "$POOL" >/dev/null 2>&1 \
    || PREFECT_API_URL=$LOCAL_PREFECT_URL prefect --no-prompt work-pool create "$POOL" --type process >/dev/null
  PREFECT_API_URL=$LOCAL_PREFECT_URL python -m flows.serve --deploy --pool "$POOL" --root "$ROOT"
}

exports() {
  cat <<EOF
On every machine that trains, triggers or reads runs:
  export MLFLOW_TRACKING_URI=$MLFLOW_URL
  export PREFECT_API_URL=$PREFECT_URL
On the GPU box (a checkout of this repo with \`dvc pull\` done, at $ROOT or passed as -p root=...):
  prefect worker start --pool $POOL --type process      # or: bash scripts/team-services.sh worker
Trigger:  prefect deployment run pokegan-pipeline/pipeline   (UI: ${PREFECT_URL%/api})
EOF
}

stop_pid() {
  local name=$1 pid
  [ -f "$PGRUN/$name.pid" ] || return 0
  pid=$(cat "$PGRUN/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
  rm -f "$PGRUN/$name.pid"
}

case "${1:-}" in
  start)
    start_postgres
    start_mlflow
    start_prefect
    [ "$DEPLOY" = 1 ] && deploy
    exports
    ;;
  worker)
    : "${PREFECT_API_URL:?set PREFECT_API_URL (and MLFLOW_TRACKING_URI) to the team servers; see 'status'}"
    exec prefect worker start --pool "$POOL" --type process
    ;;
  status)
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1 && echo "PostgreSQL: running" || echo "PostgreSQL: stopped"
    running mlflow && echo "MLflow: running" || echo "MLflow: stopped"
    running prefect && echo "Prefect: running" || echo "Prefect: stopped"
    exports
    ;;
  stop)
    stop_pid prefect
    stop_pid mlflow
    if [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
      as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && echo "stopped PostgreSQL"
    fi
    ;;
  *)
    echo "usage: bash scripts/team-services.sh start|status|worker|stop   (settings: see the top of this file)" >&2
    exit 2
    ;;
esac
