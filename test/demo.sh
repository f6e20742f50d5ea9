#!/usr/bin/env bash
# test/demo.sh: the demo. Builds and installs clinic_migrate, starts a throwaway cluster,
# generates the multi-tenant clinic data set (test/gen/clinic.sql), shows the plan,
# migrates every tenant of the registry into its own schema, validates each one and
# prints a summary. Exits non-zero if a migration fails or a table does not validate.
#
#   sudo bash test/demo.sh [--tenants N] [--rows N] [--port P] [--keep]
#
#   --tenants N  tenants in the registry (default 50)
#   --rows N     rows to generate in all (default 500000)
#   --port P     port of the throwaway cluster (default 5499; it listens on a socket only)
#   --keep       leave the cluster running at the end and print how to reach and stop it
# Environment: CM_SKIP_BUILD=1 skips install-deps/make (the extension is already installed).
set -euo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CM_ROOT"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

tenants=50
rows=500000
port=5499
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tenants) tenants="${2:?--tenants needs a value}"; shift 2 ;;
    --rows) rows="${2:?--rows needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; cm_die "unknown argument: $1" ;;
  esac
done
for v in tenants rows port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || cm_die "--$v must be a number: ${!v}"
done
cm_require_root

say() { printf '%s\n' "$*"; }
hr() { say "------------------------------------------------------------------------"; }

cm_install_build

dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_demo.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=clinic
q() { cm_psql "$dir" "$port" "$db" "$@"; }

cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
q -q -c 'CREATE EXTENSION clinic_migrate'
say "== generating the data set: $tenants tenants, about $rows rows (test/gen/clinic.sql)"
gen_t0="$(cm_now)"
q -v tenants="$tenants" -v rows="$rows" -f - <test/gen/clinic.sql
gen_s="$(awk -v a="$gen_t0" -v b="$(cm_now)" 'BEGIN { printf "%.1f", b - a }')"
say "== generated in $gen_s s"
q -f - <<'SQL'
SELECT "table", "rows"
FROM (VALUES (1, 'tenants', (SELECT count(*) FROM public.tenants)),
             (2, 'specialties', (SELECT count(*) FROM public.specialties)),
             (3, 'staff', (SELECT count(*) FROM public.staff)),
             (4, 'patients', (SELECT count(*) FROM public.patients)),
             (5, 'appointments', (SELECT count(*) FROM public.appointments)),
             (6, 'appointment_notes', (SELECT count(*) FROM public.appointment_notes))
     ) v(n, "table", "rows")
ORDER BY n;
SQL

hr
say "== the plan: SELECT * FROM clinic_migrate.plan()"
q -c 'SELECT * FROM clinic_migrate.plan()'

mapfile -t tenant_ids < <(q -At -c 'SELECT tenant_id FROM public.tenants
                                   ORDER BY length(tenant_id), tenant_id')
n="${#tenant_ids[@]}"
[ "$n" -gt 0 ] || cm_die "the registry public.tenants is empty"

hr
say "== migrating $n tenants: SELECT * FROM clinic_migrate.migrate_tenant(tenant_id)"
migrated=0
failed=0
total_rows=0
sum_s=0
mig_t0="$(cm_now)"
i=0
for t in "${tenant_ids[@]}"; do
  i=$((i + 1))
  if out="$(q -q -At -v tenant="$t" -f - 2>"$dir/err" <<'SQL'
SELECT clock_timestamp() AS cm_t0 \gset
SELECT m.schema_name, m.tables, coalesce(m.rows_copied, 0) AS rows_copied,
       coalesce(m.resumed, false) AS resumed
FROM clinic_migrate.migrate_tenant(:'tenant') m \gset cm_
SELECT concat_ws('|', :'cm_schema_name', :'cm_tables', :'cm_rows_copied', :'cm_resumed',
                 round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 2));
SQL
  )"; then
    IFS='|' read -r schema tables trows resumed secs <<<"$out"
    migrated=$((migrated + 1))
    total_rows=$((total_rows + trows))
    sum_s="$(awk -v a="$sum_s" -v b="$secs" 'BEGIN { print a + b }')"
    extra=""
    [ "$resumed" = t ] && extra=" (resumed)"
    printf '  %*d/%d  %-10s -> %-14s %2s tables %9s rows %8.2f s%s\n' \
      "${#n}" "$i" "$n" "$t" "$schema" "$tables" "$trows" "$secs" "$extra"
    grep -v '^$' "$dir/err" | sed 's/^/      /' || true
  else
    failed=$((failed + 1))
    printf '  %*d/%d  %-10s FAILED:\n' "${#n}" "$i" "$n" "$t"
    sed 's/^/      /' "$dir/err"
    cm_server_alive "$dir" "$port" ||
      cm_die "the server no longer accepts connections (did it crash?) after migrate_tenant('$t')"
  fi
done
mig_wall="$(awk -v a="$mig_t0" -v b="$(cm_now)" 'BEGIN { printf "%.2f", b - a }')"

hr
say "== validating: SELECT * FROM clinic_migrate.validate_migration(tenant_id)"
tables_validated=0
tables_matched=0
bad_tenants=()
val_t0="$(cm_now)"
i=0
for t in "${tenant_ids[@]}"; do
  i=$((i + 1))
  if out="$(q -q -At -v tenant="$t" -f - 2>"$dir/err" <<'SQL'
SELECT clock_timestamp() AS cm_t0 \gset
CREATE TEMP TABLE cm_v AS SELECT * FROM clinic_migrate.validate_migration(:'tenant');
SELECT concat_ws('|', count(*), count(*) FILTER (WHERE match),
                 coalesce(sum(source_rows), 0), coalesce(sum(target_rows), 0),
                 round(extract(epoch FROM clock_timestamp() - :'cm_t0'::timestamptz)::numeric, 2))
FROM cm_v;
SQL
  )"; then
    IFS='|' read -r vt vm srows trows secs <<<"$out"
    tables_validated=$((tables_validated + vt))
    tables_matched=$((tables_matched + vm))
    status=ok
    if [ "$vm" != "$vt" ]; then
      status=MISMATCH
      bad_tenants+=("$t")
    fi
    printf '  %*d/%d  %-10s %2s tables, %2s match, %9s source rows, %9s target rows %6.2f s  %s\n' \
      "${#n}" "$i" "$n" "$t" "$vt" "$vm" "$srows" "$trows" "$secs" "$status"
  else
    bad_tenants+=("$t")
    printf '  %*d/%d  %-10s validate_migration FAILED:\n' "${#n}" "$i" "$n" "$t"
    sed 's/^/      /' "$dir/err"
    cm_server_alive "$dir" "$port" ||
      cm_die "the server no longer accepts connections (did it crash?) after validate_migration('$t')"
  fi
done
val_wall="$(awk -v a="$val_t0" -v b="$(cm_now)" 'BEGIN { printf "%.2f", b - a }')"

for t in ${bad_tenants[@]+"${bad_tenants[@]}"}; do
  say "== tenant $t: tables that do not match"
  q -v tenant="$t" -f - <<'SQL' || true
SELECT * FROM clinic_migrate.validate_migration(:'tenant') WHERE match IS NOT TRUE;
SELECT * FROM clinic_migrate.validate_differences(:'tenant') LIMIT 20;
SQL
done

hr
say "== status (a sample: the 5 biggest tenants and the last one)"
q -c "SELECT tenant_id, schema_name, state, rows_copied, rows_total, percent,
             tables_copied, tables, elapsed, last_error
      FROM clinic_migrate.status
      WHERE tenant_id IN (SELECT tenant_id FROM clinic_migrate.status
                          ORDER BY rows_copied DESC NULLS LAST, tenant_id LIMIT 5)
         OR tenant_id = (SELECT tenant_id FROM public.tenants
                         ORDER BY length(tenant_id) DESC, tenant_id DESC LIMIT 1)
      ORDER BY rows_copied DESC NULLS LAST, tenant_id"

rate="$(awk -v r="$total_rows" -v s="$sum_s" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print "n/a" }')"
hr
say "== summary"
printf '  data set:            %s tenants, about %s rows, generated in %s s\n' "$n" "$rows" "$gen_s"
printf '  tenants migrated:    %s of %s%s\n' "$migrated" "$n" "$([ "$failed" -gt 0 ] && echo ", $failed FAILED")"
printf '  rows copied:         %s\n' "$total_rows"
printf '  migration time:      %.2f s in migrate_tenant (%.2f s wall clock)\n' "$sum_s" "$mig_wall"
printf '  copy rate:           %s rows/s\n' "$rate"
printf '  tables validated:    %s, %s matched (validation took %.2f s)\n' \
  "$tables_validated" "$tables_matched" "$val_wall"
ok=1
if [ "$failed" -gt 0 ] || [ "${#bad_tenants[@]}" -gt 0 ] || [ "$tables_validated" -eq 0 ]; then
  ok=0
  printf '  RESULT:              FAILED (%s migrations failed; tenants that did not validate: %s)\n' \
    "$failed" "${bad_tenants[*]:-none}"
else
  printf '  RESULT:              every table of every tenant matches\n'
fi

if [ "$keep" = 1 ]; then
  CM_KEEP_CLUSTER=1   # read by the exit trap of lib.sh (cm_install_trap)
  export CM_KEEP_CLUSTER
  hr
  say "== the cluster keeps running (--keep):"
  if command -v sudo >/dev/null; then
    as_pg="sudo -u postgres" rm_dir="sudo rm -rf"
  else
    as_pg="runuser -u postgres --" rm_dir="rm -rf"   # as root
  fi
  say "  connect: $as_pg $CM_PG_BIN/psql -h $dir -p $port -d $db"
  say "  stop:    $as_pg $CM_PG_BIN/pg_ctl -D $dir/data stop && $rm_dir $dir"
fi
[ "$ok" = 1 ]
