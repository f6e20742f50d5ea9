#!/usr/bin/env bash
# test/readme_session.sh: prints the README's session (test/readme_session.sql) as psql
# runs it, on a throwaway cluster whose scheduler serves the database (20 tenants,
# 100,000 rows of test/gen/clinic.sql). Not part of the tests.
#
#   sudo bash test/readme_session.sh [--port 5494]
set -euo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CM_ROOT"
port=5494
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
cm_install_build >&2
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_session.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=clinic
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db" \
  -c "ALTER SYSTEM SET clinic_migrate.databases = '$db'"
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 120 restart >/dev/null
cm_psql "$dir" "$port" "$db" -q -c 'CREATE EXTENSION clinic_migrate'
cm_psql "$dir" "$port" "$db" -q -v tenants=20 -v rows=100000 -f - <test/gen/clinic.sql >/dev/null 2>&1
cm_as_postgres tee "$dir/session.sql" >/dev/null <test/readme_session.sql
# -a: every line as it is read, then its output; errors too, and go on after them
cm_psql "$dir" "$port" "$db" -a -v ON_ERROR_STOP=0 -f "$dir/session.sql" 2>&1 |
  sed -n '/^SET clinic_migrate.progress_interval/,$p' | sed 1,2d |
  sed "s#^psql:$dir/session.sql:[0-9]*: ##"
