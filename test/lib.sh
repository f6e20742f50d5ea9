# shellcheck shell=bash
# test/lib.sh: shell functions shared by test/demo.sh and test/bench/*.sh.
#
# Source it from a bash script that runs `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets CM_ROOT (the repository root) and CM_PG_BIN, and defines:
#   cm_install_build             install the packages, build and install the extension
#   cm_start_cluster DIR PORT    initdb a throwaway cluster in DIR/data and start it
#   cm_stop_cluster DIR          stop that cluster and remove DIR
#   cm_psql DIR PORT DB ARGS...  psql as postgres to it (-X, ON_ERROR_STOP=1)
#   cm_server_alive DIR PORT     true when that cluster accepts connections
#   cm_as_postgres CMD...        run a command as the postgres OS user
#   cm_now                       wall-clock seconds, with nanoseconds
# The cluster runs as the postgres OS user (initdb refuses root), listens on a Unix
# socket in DIR only (no TCP), and logs to DIR/log.
# Environment: CM_SKIP_BUILD=1 makes cm_install_build do nothing; CM_PRELOAD=0 leaves
# shared_preload_libraries empty (the server then starts without clinic_migrate.so, and
# CREATE EXTENSION clinic_migrate is not possible). Also cm_install_trap DIRVAR: on
# exit, error or Ctrl-C stop and remove the cluster in $DIRVAR (not if CM_KEEP_CLUSTER=1).

CM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CM_PG_BIN="${CM_PG_BIN:-/usr/lib/postgresql/15/bin}"
CM_PRELOAD="${CM_PRELOAD:-1}"
export PG_CONFIG="${PG_CONFIG:-$CM_PG_BIN/pg_config}"

cm_log() {
  printf '%s\n' "$*" >&2
}

cm_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

cm_now() {
  date +%s.%N
}

# Runs a command as the postgres OS user, from / so that an unreadable current
# directory does not matter; stdin and stdout pass through.
cm_as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    (cd / && "$@")
  elif [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && sudo -n -u postgres -- "$@")
  fi
}

cm_require_root() {
  [ "$(id -u)" -eq 0 ] || cm_die "run this as root (sudo bash $0 ...): it installs packages and the extension"
}

# Installs the build and test dependencies, then builds and installs clinic_migrate.
# CM_SKIP_BUILD=1 skips all that (use the clinic_migrate already installed).
cm_install_build() {
  if [ "${CM_SKIP_BUILD:-0}" = 1 ]; then
    cm_log "== CM_SKIP_BUILD=1: not building"
    return 0
  fi
  cm_log "== installing dependencies (test/install-deps.sh)"
  bash "$CM_ROOT/test/install-deps.sh"
  cm_log "== building and installing clinic_migrate (PG_CONFIG=$PG_CONFIG)"
  make -s -C "$CM_ROOT" PG_CONFIG="$PG_CONFIG"
  make -s -C "$CM_ROOT" PG_CONFIG="$PG_CONFIG" install
}

# cm_start_cluster DIR PORT: DIR must be absent or empty. DIR/data is the data
# directory, DIR the socket directory, DIR/log the server log.
cm_start_cluster() {
  local dir="$1" port="$2"
  [ -n "$dir" ] && [ -n "$port" ] || cm_die "usage: cm_start_cluster DIR PORT"
  case "$dir" in /*) ;; *) cm_die "cm_start_cluster: DIR must be an absolute path: $dir" ;; esac
  mkdir -p "$dir"
  chown postgres: "$dir"
  chmod 700 "$dir"
  cm_log "== initdb $dir/data"
  cm_as_postgres "$CM_PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 \
    --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; cm_die "initdb failed"; }
  local preload="''"
  [ "$CM_PRELOAD" = 0 ] || preload="'clinic_migrate'"
  cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# added by test/lib.sh (cm_start_cluster)
shared_preload_libraries = $preload
max_worker_processes = 16
listen_addresses = ''
unix_socket_directories = '$dir'
port = $port
max_wal_size = 4GB
maintenance_work_mem = 256MB
shared_buffers = 512MB
checkpoint_timeout = 30min
EOF
  cm_log "== starting the server (port $port, socket $dir, log $dir/log)"
  if ! cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 120 start >/dev/null; then
    tail -n 30 "$dir/log" >&2 || true
    cm_die "the server did not start (log: $dir/log)"
  fi
}

# cm_stop_cluster DIR: stops the cluster of DIR if it runs, then removes DIR.
# Safe to call twice, or on a DIR where cm_start_cluster failed half-way.
cm_stop_cluster() {
  local dir="${1:-}"
  [ -n "$dir" ] && [ "$dir" != / ] || return 0
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 120 stop >/dev/null 2>&1 ||
      cm_log "warning: pg_ctl stop failed for $dir/data"
  fi
  rm -rf -- "$dir"
}

# cm_server_alive DIR PORT: true when the cluster accepts connections.
cm_server_alive() {
  "$CM_PG_BIN/pg_isready" -q -h "$1" -p "$2"
}

# cm_psql DIR PORT DB [psql arguments...]
cm_psql() {
  local dir="$1" port="$2" db="$3"
  shift 3
  cm_as_postgres "$CM_PG_BIN/psql" -h "$dir" -p "$port" -d "$db" -X -v ON_ERROR_STOP=1 "$@"
}

# cm_install_trap DIRVAR: on exit, error or Ctrl-C, stop and remove the cluster whose
# directory is in the variable named DIRVAR, unless CM_KEEP_CLUSTER=1 by then.
cm_install_trap() {
  CM_TRAP_DIRVAR="$1"
  CM_KEEP_CLUSTER="${CM_KEEP_CLUSTER:-0}"
  trap 'cm__on_exit' EXIT
  trap 'cm_log "interrupted"; exit 130' INT
  trap 'cm_log "terminated"; exit 143' TERM HUP
}

cm__on_exit() {
  local rc=$?
  set +e
  local dir="${!CM_TRAP_DIRVAR:-}"
  if [ -n "$dir" ] && [ "$CM_KEEP_CLUSTER" != 1 ]; then
    # On failure, the end of the server log says what the server saw (crashes included).
    if [ "$rc" -ne 0 ] && [ -s "$dir/log" ]; then
      cm_log "== last lines of the server log ($dir/log):"
      tail -n 40 "$dir/log" | sed 's/^/   | /' >&2
    fi
    cm_stop_cluster "$dir"
  fi
  exit "$rc"
}
