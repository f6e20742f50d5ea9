#!/usr/bin/env bash
# test/bench/capture_instr.sh: what change capture costs a write, in CPU instructions.
# Throughput on this 2-core machine moves by more than the few percent in question (an
# A/A pair of pgbench runs differs by up to 15%), so this counts instead: valgrind's
# callgrind counts the instructions of a single-user backend (postgres --single, the
# server stopped) running a fixed script of single-row UPDATEs of patients, each in
# its own transaction. Instructions per UPDATE = (count for N+10 UPDATEs - count for 10)
# / N, which cancels the backend's start and exit. Each state of a move is measured in
# turn on one database, for a tenant that is not moving (t2) and for the moving tenant
# (t1) where it can write its shared rows (autovacuum off, the table vacuumed before
# each measurement, and one pass not counted first):
#   none       clinic_migrate preloaded, no extension created (the baseline)
#   none (A/A) the same again: the instrument's own error
#   created    CREATE EXTENSION, nothing migrated
#   capture    t1 copied and in sync (capture triggers on; replay is not counted: no
#              sync worker runs in a single-user backend)
#   rolled     t1 rolled back: nobody moves (the sync worker has taken the capture
#              triggers off; the script waits for that)
#   cut over   t1 migrated and cut over (its shared rows refuse writes: t2 only)
#   finalized  t1 finalized (t2 only; nobody moves: finalize took the triggers off)
# Prints instructions per UPDATE and the ratio to the baseline.
#
#   sudo bash test/bench/capture_instr.sh [--updates 200] [--port 5495]
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

updates=200
port=5495
while [ $# -gt 0 ]; do
  case "$1" in
    --updates) updates="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/capture_instr.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $("$CM_PG_BIN/postgres" --version); callgrind, $updates UPDATEs per measurement"

command -v valgrind >/dev/null || {
  cm_log "== installing valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null; }
}
cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_instr.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
# no autovacuum: the pages each measurement starts from are the same every time
# (measure() vacuums the table itself before it stops the server)
cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<<"autovacuum = off"
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w restart >/dev/null
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
cm_log "== generating: tenants=8 rows=16000"
q -v tenants=8 -v rows=16000 -f - <test/gen/clinic.sql >&2

# the scripts: the same rows for the short and the long run of a tenant
for t in t1 t2; do
  q -At -c "SELECT id FROM public.patients WHERE tenant_id = '$t' ORDER BY id LIMIT $((updates + 10))" \
    >"$dir/ids_$t"
  [ "$(wc -l <"$dir/ids_$t")" -eq $((updates + 10)) ] || cm_die "tenant $t has too few patients"
  for n in 10 $((updates + 10)); do
    head -n "$n" "$dir/ids_$t" |
      sed "s/.*/UPDATE public.patients SET notes = 'instr' WHERE id = &;/" >"$dir/run_${t}_$n.sql"
  done
done
chown postgres: "$dir"/*.sql

stop() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; }
start() { cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null; }

# instructions of one single-user backend running a script
count() {  # count SCRIPT
  local out="$dir/cg.out"
  rm -f "$out"
  cm_as_postgres valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$CM_PG_BIN/postgres" --single -D "$dir/data" -c search_path=public "$db" \
    <"$1" >"$dir/single.log" 2>&1 || { tail -n 20 "$dir/single.log" >&2; cm_die "postgres --single failed"; }
  grep -q 'ERROR' "$dir/single.log" && { grep -m3 'ERROR' "$dir/single.log" >&2; cm_die "a statement failed"; }
  sed -n 's/^summary: //p;s/^totals: //p' "$out" | head -n 1
}

# instructions per UPDATE of a tenant in the current state (server stopped)
per_update() {  # per_update TENANT
  local short long
  short=$(count "$dir/run_${1}_10.sql")
  long=$(count "$dir/run_${1}_$((updates + 10)).sql")
  echo $(( (long - short) / updates ))
}

declare -A result
measure() {  # measure LABEL TENANTS...
  local label="$1" t
  shift
  q -q -c 'VACUUM public.patients'
  stop
  for t in "$@"; do
    result["$label,$t"]=$(per_update "$t")
    cm_log "   $label $t: ${result["$label,$t"]} instructions per UPDATE"
  done
  start
}

cm_log "== measuring"
# a first pass, not counted: the first writes to freshly loaded pages do more work
measure warmup t2 t1
measure none t2 t1
measure none_aa t2 t1
q -q -c 'CREATE EXTENSION clinic_migrate'
measure created t2 t1
q -q -c "SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')" -c "SELECT clinic_migrate.sync_now('t1')" >/dev/null
measure capture t2 t1
q -q -c "SELECT clinic_migrate.rollback_tenant('t1')" >/dev/null
# nobody moves: the database's sync worker takes the capture triggers off when it
# goes idle (a rollback in the caller's session leaves that to it); wait for it
for _ in $(seq 1 600); do
  [ "$(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.patients'::regclass
                 AND tgname LIKE 'clinic\_migrate\_%'")" = 0 ] && break
  sleep 0.1
done
say "after the rollback: $(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%'") capture triggers left"
measure rolled t2 t1
q -q -c "SELECT schema_name FROM clinic_migrate.migrate_tenant('t1')" -c "SELECT clinic_migrate.sync_now('t1')" \
  -c "SELECT schema_name FROM clinic_migrate.cutover('t1')" >/dev/null
measure cutover t2
q -q -c "SELECT schema_name FROM clinic_migrate.finalize_tenant('t1', true)" >/dev/null
say "after the finalize: $(q -At -c "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%'") capture triggers left"
measure finalized t2

base_t2=${result[none,t2]}
base_t1=${result[none,t1]}
row() {  # row LABEL TEXT
  local t2="${result[$1,t2]:-}" t1="${result[$1,t1]:-}" c2 c1
  c2=$(printf '%s (%s)' "$t2" "$(echo "scale=3; $t2 / $base_t2" | bc)")
  if [ -n "$t1" ]; then
    c1=$(printf '%s (%s)' "$t1" "$(echo "scale=3; $t1 / $base_t1" | bc)")
  else
    c1="-"
  fi
  printf '%-58s %-22s %s\n' "$2" "$c2" "$c1"
}
say ""
say "instructions per single-row UPDATE (ratio to the first line):"
printf '%-58s %-22s %s\n' "state" "t2 (not moving)" "t1 (the moving tenant)"
row none "no extension created (baseline)"
row none_aa "the same again (A/A: the instrument's error)"
row created "extension created, nothing migrated"
row capture "t1 copied and in sync (capture on; replay not counted)"
row rolled "t1 rolled back: nobody moves"
row cutover "t1 cut over"
row finalized "t1 finalized"
