#!/usr/bin/env bash
# test/bench/fanout_bench.sh: one schema change across many tenant schemas, by
# clinic_migrate.fan_out (the queue's workers, 1 then 2) against what schema-per-tenant
# users do today: a shell loop of `psql -c` per schema (django-tenants'
# migrate_schemas, Apartment's each, in their simplest form). Side by side in one run,
# on one cluster; prints seconds and ratios.
#
# The tenant schemas are made directly (CREATE SCHEMA, CREATE TABLE ... (LIKE
# public.patients INCLUDING ALL), a few rows each) and recorded in clinic_migrate.tenants
# as finalized: fan_out looks only at that record, and migrating a thousand tenants
# first would add minutes that measure something else (tenants_bench.sh measures it).
# Each run adds a column of its own with ALTER TABLE ... ADD COLUMN (no default: a
# catalog change, so the figure is the per-schema overhead, what grows with tenants)
# and, with --index, creates an index on it too (work that grows with rows).
#
#   sudo bash test/bench/fanout_bench.sh [--tenants 1000] [--rows 20] [--index] [--port 5496]
set -euo pipefail
invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

tenants=1000
rows=20
index=0
port=5496
while [ $# -gt 0 ]; do
  case "$1" in
    --tenants) tenants="${2:?--tenants needs a value}"; shift 2 ;;
    --rows) rows="${2:?--rows needs a value}"; shift 2 ;;
    --index) index=1; shift ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1 (try --help)" ;;
  esac
done
for v in tenants rows port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || cm_die "--$v must be a positive number"
done
cm_require_root

say() { printf '%s\n' "$*"; }
cmd="bash test/bench/fanout_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version)"
say "setup:   $tenants tenant schemas of $rows patients each; change: ADD COLUMN$([ "$index" = 1 ] && echo ' and CREATE INDEX')"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_fanout.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
clinic_migrate.databases = '$db'
clinic_migrate.max_workers = 1
clinic_migrate.scheduler_interval = 100
EOF
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 120 restart >/dev/null
q -q -c 'CREATE EXTENSION clinic_migrate'

cm_log "== $tenants tenant schemas"
t0="$(cm_now)"
q -q -v tenants="$tenants" -v rows="$rows" <<'SQL'
CREATE TABLE public.tenants (tenant_id text PRIMARY KEY);
CREATE TABLE public.patients (tenant_id text NOT NULL REFERENCES public.tenants, id integer NOT NULL,
                              name text, PRIMARY KEY (tenant_id, id));
INSERT INTO public.tenants SELECT 't' || i FROM generate_series(1, :tenants) i;
SELECT format('CREATE SCHEMA %I; CREATE TABLE %I.patients (LIKE public.patients INCLUDING ALL);
               INSERT INTO %I.patients SELECT %L, i, %L FROM generate_series(1, %s) i;',
              'tenant_t' || i, 'tenant_t' || i, 'tenant_t' || i, 't' || i, 'patient', :rows)
FROM generate_series(1, :tenants) i \gexec
INSERT INTO clinic_migrate.tenants (tenant_id, schema_name, schema_oid, source_schema, tenant_column,
                                    state, structure_done, finalized_at)
SELECT 't' || i, 'tenant_t' || i, ('tenant_t' || i)::regnamespace, 'public', 'tenant_id',
       'finalized', true, now()
FROM generate_series(1, :tenants) i;
SQL
say "made in $(awk -v a="$t0" -v b="$(cm_now)" 'BEGIN { printf "%.1f", b - a }') s"

change() {  # the statements for column $1
  local s="ALTER TABLE patients ADD COLUMN $1 integer"
  [ "$index" = 1 ] && s+="; CREATE INDEX ON patients ($1)"
  printf '%s' "$s"
}

# 1. the users' loop: one psql per schema, search_path set to it
t0="$(cm_now)"
for i in $(seq 1 "$tenants"); do
  cm_as_postgres "$CM_PG_BIN/psql" -h "$dir" -p "$port" -d "$db" -X -q -v ON_ERROR_STOP=1 \
    -c "SET search_path = tenant_t$i; $(change c_loop)"
done
q -q -c "SET search_path = public; $(change c_loop)"
loop_s="$(awk -v a="$t0" -v b="$(cm_now)" 'BEGIN { printf "%.2f", b - a }')"

# 2. fan_out with 1, then 2 workers; from the call to the last job's end
fan() {  # fan WORKERS COLUMN
  q -q -c "ALTER SYSTEM SET clinic_migrate.max_workers = $1" -c 'SELECT pg_reload_conf()' >/dev/null
  sleep 0.5   # the scheduler reads the reloaded setting at its next wakeup
  local t0 n
  t0="$(cm_now)"
  n="$(q -At -c "SELECT clinic_migrate.fan_out('$2', '$(change "$2")')")"
  [ "$n" = "$tenants" ] || cm_die "fan_out queued $n jobs, not $tenants"
  until [ "$(q -At -c "SELECT count(*) FROM clinic_migrate.job_queue
                       WHERE schema_version = '$2' AND state IN ('queued', 'running')")" = 0 ]; do
    sleep 0.05
  done
  awk -v a="$t0" -v b="$(cm_now)" 'BEGIN { printf "%.2f", b - a }'
  local failed
  failed="$(q -At -c "SELECT count(*) FROM clinic_migrate.job_queue WHERE schema_version = '$2' AND state <> 'done'")"
  [ "$failed" = 0 ] || cm_die "$failed jobs of $2 did not end done"
}
w1_s="$(fan 1 c_w1)"
w2_s="$(fan 2 c_w2)"

cols="$(q -At -c "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   WHERE a.attname IN ('c_loop', 'c_w1', 'c_w2') AND NOT a.attisdropped AND c.relkind = 'r'")"
[ "$cols" = $((3 * (tenants + 1))) ] || cm_die "expected $((3 * (tenants + 1))) new columns, found $cols"
versions="$(q -At -c "SELECT count(*) FROM clinic_migrate.tenant_schema_versions")"

say ""
printf '%-34s %10s %12s %10s\n' "method" "seconds" "per schema" "ratio"
printf '%-34s %10s %12s %10s\n' "psql -c per schema (loop)" "$loop_s" \
  "$(awk -v s="$loop_s" -v n="$tenants" 'BEGIN { printf "%.1f ms", 1000 * s / n }')" "1.00"
for w in 1 2; do
  v="w${w}_s"
  printf '%-34s %10s %12s %10s\n' "fan_out, $w worker$([ "$w" = 2 ] && echo s)" "${!v}" \
    "$(awk -v s="${!v}" -v n="$tenants" 'BEGIN { printf "%.1f ms", 1000 * s / n }')" \
    "$(awk -v s="${!v}" -v l="$loop_s" 'BEGIN { printf "%.2f", s / l }')"
done
say ""
say "every schema got every column ($cols columns); $versions versions recorded in tenant_schema_versions"
