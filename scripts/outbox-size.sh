#!/usr/bin/env bash
# Watches the outbox's size under steady load with pruning on: a projector
# with --outbox-retention=-1s --prune-interval 5s, and `writer load` at
# RATE commands/s, sampled every 10 s for SAMPLES samples.
# Usage: scripts/outbox-size.sh [RATE] [SAMPLES]   (needs bin/ from `make build`
# and a server at $ADMIN_URL, default the local one; creates database outbox_size)
set -euo pipefail
rate=${1:-300}
samples=${2:-20}
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
export DATABASE_URL=${admin/\/postgres\?/\/outbox_size?}
bin=$(cd "$(dirname "$0")/.." && pwd)/bin
psql "$admin" -qc "DROP DATABASE IF EXISTS outbox_size WITH (FORCE)" -c "CREATE DATABASE outbox_size"
"$bin/projector" migrate >/dev/null
"$bin/projector" run --metrics-addr "" --outbox-retention=-1s --prune-interval 5s --log-level warn &
proj=$!
"$bin/writer" load --events $((rate * samples * 10)) --rate "$rate" --concurrency 4 --progress 1h >/dev/null &
load=$!
trap 'kill $load $proj 2>/dev/null; wait' EXIT
echo "time|events|outbox rows|outbox size|bytes|dead tuples|autovacuums"
for _ in $(seq 1 "$samples"); do
  sleep 10
  psql "$DATABASE_URL" -Atc "SELECT now()::time(0), (SELECT count(*) FROM events), (SELECT count(*) FROM outbox),
    pg_size_pretty(pg_total_relation_size('outbox')), pg_total_relation_size('outbox'),
    (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'),
    (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox')"
done
