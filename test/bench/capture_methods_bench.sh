#!/usr/bin/env bash
# test/bench/capture_methods_bench.sh: the two capture methods side by side, in one run.
# Two clusters with the same data: T (wal_level = replica, capture_method = trigger)
# and W (wal_level = logical, capture_method = wal). pgbench single-row UPDATEs of
# patients by key, --clients clients, --seconds each, --repeat rounds; each round
# measures, on both clusters (the cluster first in odd rounds is second in even ones):
#   (a) nobody moves, no capture at all (t1 rolled back, triggers and slot gone);
#   (b) t1 copied and in sync, writes of t2 (not moving);
#   (c) t1 copied and in sync, writes of t1 (the moving tenant), the sync worker
#       replaying (and, on W, reading the slot) on the same 2 cores.
# For each: TPS and WAL bytes per transaction (pg_current_wal_insert_lsn around the
# run). Prints medians, the ratios to (a) of the same cluster, and W's (a) to T's (a)
# (what wal_level = logical costs by itself). Then the catch-up rate on each cluster:
# the sync worker stopped, pgbench writes t1 for --seconds, then sync_now('t1') in a
# loop until nothing is pending: changes replayed per second of sync_now (on W the
# changes are read from the slot first).
#
#   sudo bash test/bench/capture_methods_bench.sh [--seconds 5] [--repeat 15] [--clients 4] [--port 5491]
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

seconds=5
repeat=15
clients=4
port=5491
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?}"; shift 2 ;;
    --repeat) repeat="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/capture_methods_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version); pgbench $clients clients, ${seconds}s per measurement, $repeat rounds"

cm_install_build
dir_T="$(mktemp -d "${TMPDIR:-/tmp}/clinic_methods_T.XXXXXX")"
dir_W="$(mktemp -d "${TMPDIR:-/tmp}/clinic_methods_W.XXXXXX")"
port_T=$port
port_W=$((port + 1))
cleanup() {
  cm_stop_cluster "$dir_T"
  cm_stop_cluster "$dir_W"
}
trap cleanup EXIT
db=bench
q() {  # q T|W psql-arguments...
  local c="$1"
  shift
  local d="dir_$c" p="port_$c"
  cm_psql "${!d}" "${!p}" "$db" "$@"
}

for c in T W; do
  d="dir_$c"; p="port_$c"
  cm_start_cluster "${!d}" "${!p}"
  if [ "$c" = W ]; then
    conf="wal_level = logical
max_replication_slots = 4
clinic_migrate.capture_method = wal"
  else
    conf="clinic_migrate.capture_method = trigger"
  fi
  cm_as_postgres tee -a "${!d}/data/postgresql.conf" >/dev/null <<<"$conf"
  cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "${!d}/data" -l "${!d}/log" -w restart >/dev/null
  cm_psql "${!d}" "${!p}" postgres -q -c "CREATE DATABASE $db"
  q "$c" -q -c 'CREATE EXTENSION clinic_migrate'
  cm_log "== $c: generating tenants=10 rows=200000"
  q "$c" -v tenants=10 -v rows=200000 -f - <test/gen/clinic.sql >&2
  q "$c" -q <<'SQL'
CREATE SCHEMA cm_bench;
CREATE TABLE cm_bench.ids AS
  SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS rn, id
  FROM public.patients WHERE tenant_id IN ('t1', 't2');
CREATE UNIQUE INDEX ON cm_bench.ids (tenant_id, rn);
ANALYZE cm_bench.ids;
SQL
  for t in t1 t2; do
    n="$(q "$c" -At -c "SELECT count(*) FROM cm_bench.ids WHERE tenant_id = '$t'")"
    cm_as_postgres tee "${!d}/update_$t.sql" >/dev/null <<EOF
\set r random(1, $n)
UPDATE public.patients SET balance = coalesce(balance, 0) + 1
WHERE id = (SELECT id FROM cm_bench.ids WHERE tenant_id = '$t' AND rn = :r);
EOF
  done
done

# one measurement: "TPS WAL-bytes-per-transaction"
run() {  # run T|W SCRIPT
  local c="$1" d="dir_$1" p="port_$1" lsn out tps n bytes
  q "$c" -q -c CHECKPOINT
  lsn=$(q "$c" -At -c 'SELECT pg_current_wal_insert_lsn()')
  out=$(cm_as_postgres "$CM_PG_BIN/pgbench" -h "${!d}" -p "${!p}" -n -c "$clients" -j 2 \
    -T "$seconds" -f "${!d}/$2" "$db" 2>/dev/null)
  tps=$(awk '/^tps = / { print $3 }' <<<"$out")
  n=$(awk '/^number of transactions actually processed:/ { print $6 }' <<<"$out")
  bytes=$(q "$c" -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn')::bigint")
  echo "$tps $((bytes / (n > 0 ? n : 1)))"
}
no_capture() {  # no_capture T|W
  q "$1" -q -c "SELECT clinic_migrate.rollback_tenant('t1')" >/dev/null 2>&1 || true
  q "$1" -At -c "SELECT format('DROP TRIGGER %I ON %s', tgname, tgrelid::regclass)
                 FROM pg_trigger WHERE tgname LIKE 'clinic\_migrate\_%'" |
    while read -r stmt; do q "$1" -q -c "$stmt"; done
  q "$1" -q -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null
}
with_capture() {  # with_capture T|W: t1 copied and kept in sync
  q "$1" -q -c "SET clinic_migrate.progress_interval = 0" \
    -c "SELECT * FROM clinic_migrate.migrate_tenant('t1')" >/dev/null
}

declare -A tps wal
for ((r = 1; r <= repeat; r++)); do
  if [ $((r % 2)) = 1 ]; then clusters="T W"; steps="a b c"; else clusters="W T"; steps="c b a"; fi
  for c in $clusters; do
    for step in $steps; do
      case "$step" in
        a) no_capture "$c"; v=$(run "$c" update_t2.sql) ;;
        b) with_capture "$c"; v=$(run "$c" update_t2.sql) ;;
        c) with_capture "$c"; v=$(run "$c" update_t1.sql) ;;
      esac
      tps[$c,$step]+="${v%% *} "
      wal[$c,$step]+="${v##* } "
      say "  round $r/$repeat $c ($step): ${v%% *} tps, ${v##* } WAL bytes per transaction"
    done
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }
say ""
say "results: medians of $repeat rounds (T: wal_level = replica, triggers; W: wal_level = logical, capture from the WAL)"
for c in T W; do
  a=$(median "${tps[$c,a]}"); b=$(median "${tps[$c,b]}"); cc=$(median "${tps[$c,c]}")
  say "  $c (a) no capture                      $a tps, $(median "${wal[$c,a]}") WAL bytes/xact"
  say "  $c (b) t1 moves, writes of t2          $b tps ($(ratio "$b" "$a")), $(median "${wal[$c,b]}") WAL bytes/xact"
  say "  $c (c) t1 moves, writes of t1          $cc tps ($(ratio "$cc" "$a")), $(median "${wal[$c,c]}") WAL bytes/xact"
done
say "  W (a) / T (a): what wal_level = logical costs by itself: $(ratio "$(median "${tps[W,a]}")" "$(median "${tps[T,a]}")") tps"

# catch-up: the sync worker stopped, t1 written for --seconds, then replayed by sync_now
say ""
say "catch-up (sync worker stopped, pgbench on t1 for ${seconds}s, then sync_now('t1') until nothing is pending):"
for c in T W; do
  d="dir_$c"; p="port_$c"
  with_capture "$c"
  q "$c" -q -c "SELECT clinic_migrate.sync_now('t1')" >/dev/null
  q "$c" -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'clinic_migrate sync'" >/dev/null
  cm_as_postgres "$CM_PG_BIN/pgbench" -h "${!d}" -p "${!p}" -n -c "$clients" -j 2 -T "$seconds" \
    -f "${!d}/update_t1.sql" "$db" >/dev/null 2>&1
  res=$(q "$c" -At -c "SET client_min_messages = notice" -f - 2>&1 <<'SQL' | sed -n 's/.*cm_result //p'
DO $$
DECLARE n bigint := 0; k bigint; t0 timestamptz := clock_timestamp();
BEGIN
  LOOP
    k := clinic_migrate.sync_now('t1');
    n := n + k;
    EXIT WHEN k = 0;
  END LOOP;
  RAISE NOTICE 'cm_result % %', n, extract(epoch FROM clock_timestamp() - t0);
END $$;
SQL
  )
  say "  $c: $res (keys replayed, seconds)"
done
