#!/usr/bin/env bash
# test/bench/tenants_bench.sh: does a tenant cost the same at the 5,000th as at the first?
# N equal small tenants (about 100 rows each in 4 tables: 5 staff, 40 patients, 40
# appointments, 15 notes) in shared tables; migrate_tenant of every one, one after the
# other, each left copied and kept in sync (the sync worker runs all along). For the
# first and the last --sample tenants, the seeds' own method copies the same tenant
# right after, in the same run (CREATE SCHEMA, CREATE TABLE ... (LIKE ... INCLUDING
# ALL) and one INSERT ... SELECT per table, in one transaction; its schema is dropped
# at once, so the catalog grows only by clinic_migrate's schemas). Prints the medians
# of migrate_tenant and of the seeds' method for the first and the last sample, the
# ratios last/first and clinic_migrate/seeds, and where the time of a tenant goes
# (pg_stat_statements over the worker's statements, first and last sample apart).
#
#   sudo bash test/bench/tenants_bench.sh [--tenants 5000] [--sample 100] [--port 5496]
#   sudo bash test/bench/tenants_bench.sh --big      # 1,000 tenants of about 1,000 rows
#   --shared-foreign-keys off: the tenants' tables keep no foreign keys to the registry
#   (clinic_migrate.shared_foreign_keys)
#   --no-scheduler: the database has no scheduler (not in clinic_migrate.databases):
#   each migrate_tenant starts its own worker instead of going through the queue
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

tenants=5000
sample=100
port=5496
scale=1
scheduler=1
shared_fks=on
while [ $# -gt 0 ]; do
  case "$1" in
    --tenants) tenants="${2:?}"; shift 2 ;;
    --sample) sample="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    --big) tenants=1000; scale=10; shift ;;
    --no-scheduler) scheduler=0; shift ;;
    --shared-foreign-keys) shared_fks="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1" ;;
  esac
done
[ "$tenants" -ge $((2 * sample)) ] || cm_die "--tenants must be at least twice --sample"
cm_require_root
say() { printf '%s\n' "$*"; }
cmd="bash test/bench/tenants_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version); $tenants tenants of about $((100 * scale)) rows; shared_foreign_keys = $shared_fks"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_tenbench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
cm_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
shared_preload_libraries = 'clinic_migrate, pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.max = 10000
clinic_migrate.databases = '$([ "$scheduler" = 1 ] && echo "$db")'
clinic_migrate.progress_interval = 0
clinic_migrate.shared_foreign_keys = $shared_fks
EOF
cm_as_postgres "$CM_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w restart >/dev/null
q() { cm_psql "$dir" "$port" "$db" "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
q -q -c 'CREATE EXTENSION clinic_migrate' -c 'CREATE EXTENSION pg_stat_statements'
# the workers' DEBUG1 line with the phases of each migration
q -q -c "ALTER DATABASE $db SET log_min_messages = debug1"

cm_log "== generating $tenants tenants"
q -q -v n="$tenants" -v s="$scale" <<'SQL'
SET synchronous_commit = off;
CREATE TABLE tenants (tenant_id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE staff (tenant_id text NOT NULL REFERENCES tenants, staff_no int NOT NULL, name text NOT NULL,
                    PRIMARY KEY (tenant_id, staff_no));
CREATE TABLE patients (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants,
                       name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON patients (tenant_id, id);
CREATE TABLE appointments (id bigserial PRIMARY KEY, tenant_id text NOT NULL, patient_id bigint NOT NULL REFERENCES patients,
                           staff_no int NOT NULL, starts_at timestamptz NOT NULL,
                           FOREIGN KEY (tenant_id, staff_no) REFERENCES staff);
CREATE INDEX ON appointments (tenant_id, id);
CREATE INDEX ON appointments (patient_id);
CREATE TABLE appointment_notes (id bigserial PRIMARY KEY, appointment_id bigint NOT NULL REFERENCES appointments,
                                body text NOT NULL);
CREATE INDEX ON appointment_notes (appointment_id);
INSERT INTO tenants SELECT 't' || t, 'Clinic ' || t FROM generate_series(1, :n) t;
INSERT INTO staff SELECT 't' || t, k, 'Staff ' || k FROM generate_series(1, :n) t, generate_series(1, 5 * :s) k;
INSERT INTO patients (tenant_id, name, email)
SELECT 't' || t, 'Patient ' || k, 'p' || k || '@t' || t || '.example.org'
FROM generate_series(1, :n) t, generate_series(1, 40 * :s) k ORDER BY random();
INSERT INTO appointments (tenant_id, patient_id, staff_no, starts_at)
SELECT tenant_id, id, 1 + id % (5 * :s), '2026-01-01'::timestamptz + id * interval '1 minute' FROM patients;
INSERT INTO appointment_notes (appointment_id, body)
SELECT id, 'note ' || id FROM appointments WHERE id % 8 < 3;
VACUUM ANALYZE;
-- the seeds' method (seed 000 and its kin), as one statement to time
CREATE SCHEMA bench;
CREATE FUNCTION bench.seed_copy(t text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    s text := 'seed_' || t;
BEGIN
    EXECUTE format('CREATE SCHEMA %I', s);
    EXECUTE format('CREATE TABLE %I.staff (LIKE public.staff INCLUDING ALL)', s);
    EXECUTE format('CREATE TABLE %I.patients (LIKE public.patients INCLUDING ALL)', s);
    EXECUTE format('CREATE TABLE %I.appointments (LIKE public.appointments INCLUDING ALL)', s);
    EXECUTE format('CREATE TABLE %I.appointment_notes (LIKE public.appointment_notes INCLUDING ALL)', s);
    EXECUTE format('INSERT INTO %I.staff SELECT * FROM public.staff WHERE tenant_id = $1', s) USING t;
    EXECUTE format('INSERT INTO %I.patients SELECT * FROM public.patients WHERE tenant_id = $1', s) USING t;
    EXECUTE format('INSERT INTO %I.appointments SELECT * FROM public.appointments WHERE tenant_id = $1', s) USING t;
    EXECUTE format('INSERT INTO %I.appointment_notes SELECT n.* FROM public.appointment_notes n '
                   'JOIN public.appointments a ON a.id = n.appointment_id WHERE a.tenant_id = $1', s) USING t;
END $$;
SQL

# One psql session runs them all, each statement timed; a tag line names what follows.
script="$dir/run.sql"
{
  echo 'SET client_min_messages = warning;'
  echo '\timing on'
  for ((i = 1; i <= tenants; i++)); do
    sampled=0
    if [ "$i" -le "$sample" ] || [ "$i" -gt $((tenants - sample)) ]; then sampled=1; fi
    [ "$i" -eq $((tenants - sample + 1)) ] && echo "SELECT pg_stat_statements_reset() IS NULL AS reset \\gset"
    echo "\\echo TAG cm $i"
    echo "SELECT schema_name FROM clinic_migrate.migrate_tenant('t$i') \\gset"
    if [ "$sampled" = 1 ]; then
      echo "\\echo TAG seed $i"
      echo "SELECT bench.seed_copy('t$i') \\gset"
      echo "DROP SCHEMA seed_t$i CASCADE;"
    fi
    [ "$i" -eq "$sample" ] && echo "\\o $dir/first_statements.txt" &&
      echo "SELECT round(total_exec_time::numeric / $sample, 2) AS ms_per_tenant, calls / $sample AS calls_per_tenant, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%seed_copy%' AND query NOT LIKE 'DROP SCHEMA%' ORDER BY total_exec_time DESC LIMIT 15;" &&
      echo "\\o"
  done
  echo "\\o $dir/last_statements.txt"
  echo "SELECT round(total_exec_time::numeric / $sample, 2) AS ms_per_tenant, calls / $sample AS calls_per_tenant, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%seed_copy%' AND query NOT LIKE 'DROP SCHEMA%' ORDER BY total_exec_time DESC LIMIT 15;"
  echo "\\o"
} >"$script"
chown postgres: "$script"
cm_log "== migrating $tenants tenants (sampling the first and last $sample against the seeds' method)"
started=$(cm_now)
q -q -f "$script" >"$dir/timings.txt"
elapsed=$(echo "$(cm_now) - $started" | bc)

awk -v n="$tenants" -v s="$sample" -v elapsed="$elapsed" '
  /^TAG / { what = $2; pos = $3; next }
  /^Time: / && what != "" {
    ms = $2
    if (pos <= s) band = "first"; else if (pos > n - s) band = "last"; else band = "";
    if (band != "") { v[what, band, ++c[what, band]] = ms }
    if (what == "cm") total += ms
    what = ""
  }
  function median(what, band,   k, m, a, i, j, t) {
    m = c[what, band]
    for (i = 1; i <= m; i++) a[i] = v[what, band, i]
    for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    cf = median("cm", "first"); cl = median("cm", "last")
    sf = median("seed", "first"); sl = median("seed", "last")
    printf "migrate_tenant, median of tenants 1..%d:        %8.1f ms\n", s, cf
    printf "migrate_tenant, median of tenants %d..%d:  %8.1f ms\n", n - s + 1, n, cl
    printf "  ratio last/first:                               %8.2f\n", cl / cf
    printf "seeds method, median of the first %d:            %8.1f ms\n", s, sf
    printf "seeds method, median of the last %d:             %8.1f ms\n", s, sl
    printf "  ratio last/first:                               %8.2f\n", sl / sf
    printf "migrate_tenant / seeds method, first:           %8.2f\n", cf / sf
    printf "migrate_tenant / seeds method, last:            %8.2f\n", cl / sl
    printf "all %d migrate_tenant calls: %.1f s (wall clock of the run, seeds included: %.1f s)\n", n, total / 1000, elapsed
  }' "$dir/timings.txt"

say ""
say "phases inside the worker (medians, ms; the server log's DEBUG1 line of each migration):"
grep -o 'migrated tenant "t[0-9]*" in .*' "$dir/log" | awk -v n="$tenants" -v s="$sample" '
  {
    gsub(/[",:]/, " ")
    t = $3; sub(/^t/, "", t); t = t + 0
    band = (t <= s) ? 1 : (t > n - s) ? 2 : 0
    if (!band) next
    # fields: migrated tenant tN in TOTAL ms plan and capture A schema and records B
    #         waiting for older writers C copy and indexes D catch-up and foreign keys E
    #         sequences and commit F
    m = ++cnt[band]
    v[band, 1, m] = $5; v[band, 2, m] = $10; v[band, 3, m] = $14
    v[band, 4, m] = $19; v[band, 5, m] = $23; v[band, 6, m] = $28; v[band, 7, m] = $32
  }
  function median(b, k,   m, a, i, j, t) {
    m = cnt[b]
    for (i = 1; i <= m; i++) a[i] = v[b, k, i]
    for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    split("in the worker,plan and capture,schema and records,waiting for older writers,copy and indexes,catch-up and foreign keys,sequences and commit", name, ",")
    printf "  %-28s %8s %8s\n", "", "first", "last"
    for (k = 1; k <= 7; k++) printf "  %-28s %8.1f %8.1f\n", name[k], median(1, k), median(2, k)
  }'
say "(migrate_tenant minus \"in the worker\": the worker's start-up and, with a scheduler, the hand-off through the queue)"
say ""
say "where a tenant's time goes, first $sample tenants (pg_stat_statements, statements inside the worker included):"
cat "$dir/first_statements.txt"
say "the same, last $sample tenants:"
cat "$dir/last_statements.txt"
if [ "$scheduler" = 1 ]; then
  say ""
  say "through the queue (medians, ms, from job_queue): enqueued to started, started to finished"
  q -At -F ' ' -v n="$tenants" -v s="$sample" <<'SQL'
SELECT CASE WHEN substr(tenant_id, 2)::int <= :s THEN 'first' ELSE 'last' END AS band,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at) * 1000)::numeric, 1),
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)::numeric, 1)
FROM clinic_migrate.job_queue
WHERE action = 'migrate' AND (substr(tenant_id, 2)::int <= :s OR substr(tenant_id, 2)::int > :n - :s)
GROUP BY 1 ORDER BY 1;
SQL
fi
say "sync worker: $(q -At -c "SELECT count(*) FROM clinic_migrate.tenants WHERE state = 'copied'") tenants copied and kept in sync at the end"
