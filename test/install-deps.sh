#!/usr/bin/env bash
# Installs what building and testing clinic_migrate needs on Debian 12: PostgreSQL 15
# server and headers (PGXS), the TAP test modules, pg_cron, pgbench, pgbouncer (the
# row level security test runs behind it). Safe to re-run;
# does nothing when everything is already there. Needs root (or sudo).
set -euo pipefail
pkgs=(postgresql-15 postgresql-server-dev-15 libipc-run-perl
      postgresql-15-cron pgbouncer make gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "clinic_migrate: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
