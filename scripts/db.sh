#!/usr/bin/env bash
# The project-local PostgreSQL cluster: `db.sh up | stop | url | psql`.
# Installs what is missing (Debian packages, the virtualenv), creates the cluster with
# pg_cron preloaded, the database, pgmq and pg_cron, then migrates. Idempotent and fast
# when everything is already there. With DATABASE_URL set it only migrates that server.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PORT=${PGWA_PG_PORT:-55432}
DBNAME=${PGWA_DB_NAME:-pgwa}
VENV=$ROOT/.venv

log() { printf 'db: %s\n' "$*" >&2; }

# initdb refuses root: as root the server runs as the `postgres` OS user, whose data
# directory must be reachable by it, so it lives outside a possibly private checkout.
if [ "$(id -u)" = 0 ]; then
    AS_PG=(runuser -u postgres --)
    DEFAULT_PGDATA=/var/lib/postgresql/pgwa-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
else
    AS_PG=()
    DEFAULT_PGDATA=$ROOT/.pgdata
fi
PGDATA=${PGWA_PGDATA:-$DEFAULT_PGDATA}
LOCAL_URL="postgresql://postgres@127.0.0.1:$PORT/$DBNAME"

sudo_if_needed() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
    local missing=()
    # chromium and chromium-driver: the dashboard's browser tests (tests/test_dashboard_browser.py).
    # postgresql-15-partman: time partitions of the tables that grow with traffic (0114).
    for p in postgresql-15 postgresql-15-cron postgresql-15-partman chromium chromium-driver; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
    local stamp=$VENV/.pgwa-installed
    if [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ]; then return; fi
    log "creating $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]"
    touch "$stamp"
}

# pgmq's PyPI package ships the extension's SQL script; registered as an extension
# (control file beside Debian's) it shows in \dx and upgrades like one.
ensure_pgmq_extension_files() {
    local src ext version
    src=$("$VENV/bin/python" -c 'import pgmq, os; print(os.path.join(os.path.dirname(pgmq.__file__), "sql"))')
    version=$(cat "$src/VERSION")
    ext=$("$PG_BIN/pg_config" --sharedir 2>/dev/null || echo /usr/share/postgresql/15)/extension
    [ -f "$ext/pgmq--$version.sql" ] && return
    log "registering pgmq $version as an extension in $ext"
    sudo_if_needed install -m 644 "$src/pgmq.sql" "$ext/pgmq--$version.sql"
    sudo_if_needed install -m 644 "$ROOT/db/pgmq/pgmq.control" "$ext/pgmq.control"
    sudo_if_needed sed -i "s/@VERSION@/$version/" "$ext/pgmq.control"
}

ensure_cluster() {
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        log "initdb $PGDATA"
        if [ "$(id -u)" = 0 ]; then mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA"; fi
        "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
        cat "$ROOT/db/postgresql.conf" | "${AS_PG[@]}" tee -a "$PGDATA/postgresql.conf" >/dev/null
        printf "port = %s\ncron.database_name = '%s'\nunix_socket_directories = '%s'\n" \
            "$PORT" "$DBNAME" "$PGDATA" | "${AS_PG[@]}" tee -a "$PGDATA/postgresql.conf" >/dev/null
    fi
    if ! "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        log "starting PostgreSQL on 127.0.0.1:$PORT"
        "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null
    fi
}

ensure_database() {
    local admin="postgresql://postgres@127.0.0.1:$PORT/postgres"
    if [ -z "$(psql -XAtq "$admin" -c "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'")" ]; then
        log "creating database $DBNAME"
        psql -Xq "$admin" -c "CREATE DATABASE \"$DBNAME\""
    fi
}

cmd_up() {
    ensure_venv
    if [ -n "${DATABASE_URL:-}" ]; then
        "$VENV/bin/python" -m pgwa.migrate
        return
    fi
    ensure_packages
    ensure_pgmq_extension_files
    ensure_cluster
    ensure_database
    DATABASE_URL=$LOCAL_URL "$VENV/bin/python" -m pgwa.migrate
}

cmd_stop() {
    [ -n "${DATABASE_URL:-}" ] && { log "DATABASE_URL is set: not stopping a server pgwa did not start"; return; }
    [ -f "$PGDATA/PG_VERSION" ] || return 0
    if "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        log "stopped"
    fi
}

cmd_url() { printf '%s\n' "${DATABASE_URL:-$LOCAL_URL}"; }

case "${1:-up}" in
    up) cmd_up ;;
    stop) cmd_stop ;;
    url) cmd_url ;;
    restart) cmd_stop; cmd_up ;;
    psql) shift; exec psql "${DATABASE_URL:-$LOCAL_URL}" "$@" ;;
    *) echo "usage: $0 up|stop|restart|url|psql" >&2; exit 2 ;;
esac
