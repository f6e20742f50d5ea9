#!/usr/bin/env bash
# test/bench/rls_bench.sh: what the tenant row level security of enable_tenant_rls costs
# the application, in pgbench transactions per second with the policies off and on.
#
#   sudo bash test/bench/rls_bench.sh [--pairs 8] [--seconds 5] [--rows 200000]
#        [--clients 4] [--tenants 50] [--protocol simple] [--sync-commit on] [--no-aa]
#        [--port 5494]
#
# Data: a registry tenants(tenant_id int), --tenants tenants; accounts(tenant_id, id,
# balance), primary key (tenant_id, id), --rows rows in equal tenants; entries (no tenant
# column; foreign key (account_tenant, account_id) to accounts, indexed), 2 per account.
# Traffic as role app (LOGIN, neither superuser nor owner; SELECT, INSERT, UPDATE, DELETE
# on the tables, USAGE on the sequence and on schema clinic_migrate). Each transaction is
# BEGIN; SELECT clinic_migrate.set_tenant(:t, true); ...; END for a random tenant t:
#   read-heavy:  5 point SELECTs of accounts by (tenant_id, id), 1 SELECT of an
#                account's entries;
#   write-heavy: 1 UPDATE of an account's balance by key, 1 INSERT into entries.
# The two variants run the same scripts; the only difference is
# clinic_migrate.enable_tenant_rls(ARRAY['app'], 'enforce') (RESTRICTIVE policy
# clinic_migrate_tenant on accounts, and on entries through its foreign key) or not.
# Before timing, once: as app with the policies on, tenant 1 sees, updates and inserts
# no row of tenant 2 (the script fails if it does).
# Method: one cluster; for each of --pairs pairs and each script, pgbench -n -c --clients
# -T --seconds with the policies off, on, and off again (the A/A run: the noise); the
# order is off, on, off2 in odd pairs and off2, on, off in even ones (on is always in the
# middle, each off run as often before as after it). CHECKPOINT before each run.
# Prints each pair's TPS and ratio on/off, then per script the median TPS and the median
# of the pairs' ratios (the issue's goal: ratio >= 0.97), and the A/A line off2/off.
# --no-aa skips the off2 runs (a third less time); --protocol is pgbench's -M;
# --sync-commit off (the database's synchronous_commit) takes the commit's fsync out of
# the write-heavy transactions, leaving mostly CPU, where the policies cost.
# CM_SKIP_BUILD=1: use the clinic_migrate already installed. Defaults take about 5 minutes.
set -euo pipefail

invoked_as=("$0" "$@")
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$CM_ROOT"

pairs=8
seconds=5
rows=200000
clients=4
tenants=50
protocol=simple
sync_commit=on
aa=1
port=5494
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs="${2:?--pairs needs a value}"; shift 2 ;;
    --seconds) seconds="${2:?--seconds needs a value}"; shift 2 ;;
    --rows) rows="${2:?--rows needs a value}"; shift 2 ;;
    --clients) clients="${2:?--clients needs a value}"; shift 2 ;;
    --tenants) tenants="${2:?--tenants needs a value}"; shift 2 ;;
    --protocol) protocol="${2:?--protocol needs a value}"; shift 2 ;;
    --sync-commit) sync_commit="${2:?--sync-commit needs a value}"; shift 2 ;;
    --no-aa) aa=0; shift ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cm_die "unknown argument: $1 (try --help)" ;;
  esac
done
for v in pairs seconds rows clients tenants port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || cm_die "--$v must be a positive number"
done
[ "$tenants" -ge 2 ] || cm_die "--tenants must be at least 2 (the isolation check needs two)"
[ "$rows" -ge "$tenants" ] || cm_die "--rows must be at least --tenants"
case "$protocol" in simple | extended | prepared) ;; *) cm_die "--protocol: simple, extended or prepared" ;; esac
case "$sync_commit" in on | off) ;; *) cm_die "--sync-commit: on or off" ;; esac
cm_require_root

started="$(cm_now)"
say() { printf '%s\n' "$*"; }
per_tenant=$(((rows + tenants - 1) / tenants))   # accounts per tenant
rows=$((per_tenant * tenants))
jobs=$((clients < 2 ? clients : 2))
cmd="bash test/bench/rls_bench.sh"
for a in "${invoked_as[@]:1}"; do cmd+=" $(printf '%q' "$a")"; done
say "command: $cmd"
say "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
say "machine: $(nproc) cores, $("$CM_PG_BIN/postgres" --version)"
say "setup:   $tenants tenants, $rows accounts ($per_tenant each), $((2 * rows)) entries; pgbench -n -c $clients -j $jobs -T $seconds -M $protocol as role app, synchronous_commit $sync_commit; $pairs pairs$([ "$aa" = 1 ] && echo ', A/A runs on')"

cm_install_build
dir="$(mktemp -d "${TMPDIR:-/tmp}/clinic_rlsbench.XXXXXX")"
cm_install_trap dir
cm_start_cluster "$dir" "$port"
db=bench
q() { cm_psql "$dir" "$port" "$db" "$@"; }
qapp() { cm_psql "$dir" "$port" "$db" -U app "$@"; }
cm_psql "$dir" "$port" postgres -q -c "CREATE DATABASE $db"
q -q -c 'CREATE EXTENSION clinic_migrate'
say "extension: clinic_migrate $(q -At -c "SELECT extversion FROM pg_extension WHERE extname = 'clinic_migrate'")"

cm_log "== loading: $tenants tenants, $rows accounts, $((2 * rows)) entries"
t0="$(cm_now)"
q -q -v tenants="$tenants" -v per="$per_tenant" <<'SQL'
CREATE TABLE public.tenants (tenant_id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.accounts (
    tenant_id int NOT NULL REFERENCES public.tenants,
    id        bigint NOT NULL,
    balance   int NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
);
-- no tenant column: reaches its tenant through the foreign key to accounts
CREATE TABLE public.entries (
    id             bigserial PRIMARY KEY,
    account_tenant int NOT NULL,
    account_id     bigint NOT NULL,
    amount         int NOT NULL,
    FOREIGN KEY (account_tenant, account_id) REFERENCES public.accounts
);
INSERT INTO public.tenants SELECT t, 'tenant ' || t FROM generate_series(1, :tenants) t;
INSERT INTO public.accounts (tenant_id, id, balance)
SELECT t, i, abs(hashint8(t * 1000003 + i)) % 10000
FROM generate_series(1, :tenants) t, generate_series(1, :per) i;
-- two entries per account, tenants interleaved as in time order
INSERT INTO public.entries (account_tenant, account_id, amount)
SELECT t, i, abs(hashint8(k * 7919 + t * 1000003 + i)) % 1000 - 500
FROM generate_series(1, 2) k, generate_series(1, :per) i, generate_series(1, :tenants) t
ORDER BY k, i, t;
CREATE INDEX entries_account ON public.entries (account_tenant, account_id);
VACUUM ANALYZE public.tenants, public.accounts, public.entries;

CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public, clinic_migrate TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants, public.accounts, public.entries TO app;
GRANT USAGE ON SEQUENCE public.entries_id_seq TO app;
SQL
say "loaded in $(awk -v a="$t0" -v b="$(cm_now)" 'BEGIN { printf "%.1f", b - a }') s (VACUUM ANALYZE included)"

# What clinic_migrate plans: accounts a tenant table, entries a child through its foreign key.
say ""
say "plan:"
q -At -F ' | ' -c "SELECT coalesce(\"position\"::text, '-'), table_name, kind, coalesce(tenant_path, '')
                   FROM clinic_migrate.plan() ORDER BY \"position\" NULLS LAST, table_name" | sed 's/^/  /'

rls=off
policies_on() {  # enable_tenant_rls for app; the policies checked in the catalog
  local n
  n="$(q -At -c "SELECT clinic_migrate.enable_tenant_rls(ARRAY['app'], 'enforce')")"
  [ "$n" = 2 ] || cm_die "enable_tenant_rls returned $n tables, expected 2 (accounts, entries)"
  n="$(q -At -c "SELECT count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                 WHERE c.relrowsecurity AND p.polname = 'clinic_migrate_tenant' AND NOT p.polpermissive
                   AND c.oid IN ('public.accounts'::regclass, 'public.entries'::regclass)")"
  [ "$n" = 2 ] || cm_die "after enable_tenant_rls: $n restrictive tenant policies, expected 2"
  rls=on
}
policies_off() {
  local n
  q -q -c "SELECT clinic_migrate.disable_tenant_rls()" >/dev/null
  n="$(q -At -c "SELECT (SELECT count(*) FROM pg_policy WHERE polrelid IN ('public.accounts'::regclass, 'public.entries'::regclass))
                      + (SELECT count(*) FROM pg_class WHERE relrowsecurity AND relnamespace = 'public'::regnamespace)")"
  [ "$n" = 0 ] || cm_die "after disable_tenant_rls: $n policies or tables with row level security left"
  rls=off
}

# ---- the isolation check (not timed) -----------------------------------------------
sanity_sql() {  # one line "name=value" per count, as app, in one transaction for tenant 1
  qapp -q -At <<'SQL'
BEGIN;
SELECT clinic_migrate.set_tenant('1', true) IS NOT NULL AS set \gset
SELECT 'accounts_of_2=' || count(*) FROM public.accounts WHERE tenant_id = 2;
SELECT 'accounts_not_1=' || count(*) FROM public.accounts WHERE tenant_id <> 1;
SELECT 'accounts_all=' || count(*) FROM public.accounts;
SELECT 'entries_of_2=' || count(*) FROM public.entries WHERE account_tenant = 2;
SELECT 'entries_not_1=' || count(*) FROM public.entries WHERE account_tenant <> 1;
SELECT 'entries_all=' || count(*) FROM public.entries;
WITH u AS (UPDATE public.accounts SET balance = balance WHERE tenant_id = 2 RETURNING 1)
SELECT 'updated_of_2=' || count(*) FROM u;
WITH d AS (DELETE FROM public.entries WHERE account_tenant = 2 RETURNING 1)
SELECT 'deleted_of_2=' || count(*) FROM d;
ROLLBACK;
SQL
}
val() { sed -n "s/^$1=//p" <<<"$2"; }
say ""
say "isolation check (as app, in a transaction for tenant 1, not timed):"
out="$(sanity_sql)"
[ "$(val accounts_of_2 "$out")" = "$per_tenant" ] ||
  cm_die "with the policies off, app should see tenant 2's $per_tenant accounts: $(tr '\n' ' ' <<<"$out")"
say "  policies off: $(tr '\n' ' ' <<<"$out")"
policies_on
out="$(sanity_sql)"
say "  policies on:  $(tr '\n' ' ' <<<"$out")"
for k in accounts_of_2 accounts_not_1 entries_of_2 entries_not_1 updated_of_2 deleted_of_2; do
  [ "$(val "$k" "$out")" = 0 ] || cm_die "ISOLATION BROKEN: with the policies on, tenant 1's transaction got $k=$(val "$k" "$out")"
done
if [ "$(val accounts_all "$out")" != "$per_tenant" ] || [ "$(val entries_all "$out")" != $((2 * per_tenant)) ]; then
  cm_die "with the policies on, tenant 1 should see its own $per_tenant accounts and $((2 * per_tenant)) entries: $(tr '\n' ' ' <<<"$out")"
fi
# an entry of tenant 2's account written in tenant 1's transaction must be refused
if err="$(qapp -q <<'SQL' 2>&1
BEGIN;
SELECT clinic_migrate.set_tenant('1', true) IS NOT NULL AS set \gset
INSERT INTO public.entries (account_tenant, account_id, amount) VALUES (2, 1, 1);
ROLLBACK;
SQL
)"; then
  cm_die "ISOLATION BROKEN: with the policies on, tenant 1's transaction inserted an entry of tenant 2"
fi
grep -q 'violates row-level security policy' <<<"$err" ||
  cm_die "the insert of tenant 2's entry failed, but not for row level security: $err"
# no tenant set: nothing
n="$(qapp -At -c "SELECT count(*) FROM public.accounts")"
[ "$n" = 0 ] || cm_die "ISOLATION BROKEN: without a tenant, app sees $n accounts"
say "  ok: tenant 1 sees only its own $per_tenant accounts and $((2 * per_tenant)) entries, updates and deletes none of tenant 2's, cannot insert an entry of tenant 2 ($(grep -o 'new row violates.*' <<<"$err" | head -n 1)); no tenant set: no rows"
say "  policies as enabled:"
q -At -F ' | ' -c "SELECT tablename, policyname, permissive, array_to_string(roles, ','), cmd,
                          regexp_replace(coalesce(qual, ''), '\s+', ' ', 'g')
                   FROM pg_policies WHERE schemaname = 'public' ORDER BY tablename, policyname" | sed 's/^/    /'
policies_off

q -q -c "ALTER DATABASE $db SET synchronous_commit = $sync_commit"

# ---- the pgbench scripts: the same in both variants ---------------------------------
cm_as_postgres tee "$dir/read-heavy.sql" >/dev/null <<EOF
\\set t random(1, $tenants)
\\set a1 random(1, $per_tenant)
\\set a2 random(1, $per_tenant)
\\set a3 random(1, $per_tenant)
\\set a4 random(1, $per_tenant)
\\set a5 random(1, $per_tenant)
\\set b random(1, $per_tenant)
BEGIN;
SELECT clinic_migrate.set_tenant(:t::text, true);
SELECT balance FROM public.accounts WHERE tenant_id = :t AND id = :a1;
SELECT balance FROM public.accounts WHERE tenant_id = :t AND id = :a2;
SELECT balance FROM public.accounts WHERE tenant_id = :t AND id = :a3;
SELECT balance FROM public.accounts WHERE tenant_id = :t AND id = :a4;
SELECT balance FROM public.accounts WHERE tenant_id = :t AND id = :a5;
SELECT count(*), sum(amount) FROM public.entries WHERE account_tenant = :t AND account_id = :b;
END;
EOF
cm_as_postgres tee "$dir/write-heavy.sql" >/dev/null <<EOF
\\set t random(1, $tenants)
\\set a random(1, $per_tenant)
\\set amt random(-500, 500)
BEGIN;
SELECT clinic_migrate.set_tenant(:t::text, true);
UPDATE public.accounts SET balance = balance + :amt WHERE tenant_id = :t AND id = :a;
INSERT INTO public.entries (account_tenant, account_id, amount) VALUES (:t, :a, :amt);
END;
EOF

runno=0
tps() {  # tps SCRIPT: one pgbench run as app; fails on any error of a client
  local log rc
  runno=$((runno + 1))
  log="$dir/pgbench_$runno.log"
  q -q -c CHECKPOINT
  rc=0
  cm_as_postgres "$CM_PG_BIN/pgbench" -h "$dir" -p "$port" -U app -n -c "$clients" -j "$jobs" \
    -T "$seconds" -M "$protocol" -f "$dir/$1.sql" "$db" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ] || grep -q 'aborted\|ERROR' "$log"; then
    cat "$log" >&2
    cm_die "pgbench failed (rc $rc) for $1 with the policies $rls"
  fi
  awk '/^tps = / { print $3; exit }' "$log"
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
r1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }

declare -A off on off2 ron raa
say ""
say "runs (tps; ratio on/off; A/A ratio off2/off):"
for ((p = 1; p <= pairs; p++)); do
  if [ "$aa" = 1 ]; then
    if [ $((p % 2)) = 1 ]; then order="off on off2"; else order="off2 on off"; fi
  else
    if [ $((p % 2)) = 1 ]; then order="off on"; else order="on off"; fi
  fi
  for s in read-heavy write-heavy; do
    for v in $order; do
      case "$v" in
        on) [ "$rls" = on ] || policies_on; x="$(tps "$s")"; o_n="$x" ;;
        off) [ "$rls" = off ] || policies_off; x="$(tps "$s")"; o_f="$x" ;;
        off2) [ "$rls" = off ] || policies_off; x="$(tps "$s")"; o_f2="$x" ;;
      esac
    done
    off[$s]+="$o_f "; on[$s]+="$o_n "
    ron[$s]+="$(ratio "$o_n" "$o_f") "
    line="$(printf '  pair %d/%d %-11s (%s)  off %8s  on %8s  ratio %s' "$p" "$pairs" "$s" "${order// /,}" \
      "$(r1 "$o_f")" "$(r1 "$o_n")" "$(ratio "$o_n" "$o_f")")"
    if [ "$aa" = 1 ]; then
      off2[$s]+="$o_f2 "; raa[$s]+="$(ratio "$o_f2" "$o_f") "
      line+="$(printf '   | A/A off2 %8s  ratio %s' "$(r1 "$o_f2")" "$(ratio "$o_f2" "$o_f")")"
    fi
    say "$line"
  done
done
[ "$rls" = off ] || policies_off

say ""
say "results: medians of $pairs pairs (ratio = median of the pairs' on/off ratios; goal >= 0.97)"
for s in read-heavy write-heavy; do
  say "$(printf '%-16s off %8s on  %8s ratio %s   (pair ratios: %s)' "$s:" "$(r1 "$(median "${off[$s]}")")" \
    "$(r1 "$(median "${on[$s]}")")" "$(awk -v x="$(median "${ron[$s]}")" 'BEGIN { printf "%.3f", x }')" "${ron[$s]% }")"
done
if [ "$aa" = 1 ]; then
  for s in read-heavy write-heavy; do
    say "$(printf '%-16s off %8s off %8s ratio %s   (pair ratios: %s)' "$s A/A:" "$(r1 "$(median "${off[$s]}")")" \
      "$(r1 "$(median "${off2[$s]}")")" "$(awk -v x="$(median "${raa[$s]}")" 'BEGIN { printf "%.3f", x }')" "${raa[$s]% }")"
  done
fi
say "elapsed: $(awk -v a="$started" -v b="$(cm_now)" 'BEGIN { printf "%.0f", b - a }') s"
