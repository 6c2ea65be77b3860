#!/usr/bin/env bash
# Throughput of `adjustd run` on PostgreSQL with 1, 2 and 4 instances (each with its own
# inbox, feeds over disjoint orders), and one instance on PostgreSQL versus SQLite on the
# same feeds. Every instance gets FEEDS feeds of MESSAGES messages; the clock runs from the
# moment all feeds are renamed into the inboxes until the last report is written.
#
# Usage: scripts/bench-pg.sh [WORKDIR]
# Env:   FEEDS (per instance, default 20), MESSAGES (per feed, default 1000),
#        INSTANCES (default "1 2 4"), ADJUSTD_TEST_PG_URL (maintenance connection, default
#        postgres://postgres@127.0.0.1:5432/test; bench databases adjustd_bench_* are
#        created next to it and dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/adjustd-bench-pg.XXXXXX)}
mkdir -p "$work"
feeds=${FEEDS:-20}
messages=${MESSAGES:-1000}
instance_counts=${INSTANCES:-"1 2 4"}
maintenance=${ADJUSTD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
base=${maintenance%/*}
orders_per_instance=$((feeds * messages / 4 + 1))

cargo build --release --quiet --bin adjustd --example genfeed
bin=$PWD/target/release/adjustd
gen=$PWD/target/release/examples/genfeed

psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql -q -v ON_ERROR_STOP=1 "$maintenance" -c "$1" >/dev/null; }

cpu_ticks() { # pid: user + system clock ticks so far
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Feeds and order reports for instance i: orders [i*R, (i+1)*R), one seed per feed.
generate() { # instance
  local i=$1 dir="$work/feeds-$1"
  [ -f "$dir/done" ] && return
  rm -rf "$dir" && mkdir -p "$dir"
  local from=$((i * orders_per_instance)) to=$(((i + 1) * orders_per_instance))
  for f in $(seq 1 "$feeds"); do
    local extra=()
    [ "$f" = 1 ] && extra=(--order-report "$dir/orders.tsv")
    "$gen" --messages "$messages" --orders "$from..$to" --merchant M_BENCH \
      --seed $((i * 100000 + f)) --out "$dir/feed-$i-$f.xml" "${extra[@]}" 2>/dev/null
  done
  touch "$dir/done"
}

# Runs N instances on store URL $2 (postgres database name or sqlite:PATH); prints msgs/s.
run_case() { # label instances store-url
  local label=$1 n=$2 url=$3 dir="$work/run-$1"
  rm -rf "$dir" && mkdir -p "$dir/outbox" "$dir/archive" "$dir/failed"
  printf '[paths]\ninbox = "inbox-0"\noutbox = "outbox"\narchive = "archive"\nfailed = "failed"\nwork = "work-0"\n[inbox]\nsettle_ms = 50\nwatch = "poll"\npoll_interval_ms = 50\n' \
    > "$dir/adjustd.toml"
  for i in $(seq 0 $((n - 1))); do
    mkdir -p "$dir/inbox-$i" "$dir/work-$i" "$dir/staging-$i"
    ADJUSTD_STORE_URL=$url "$bin" --config "$dir/adjustd.toml" orders import --merchant M_BENCH \
      "$work/feeds-$i/orders.tsv" >/dev/null 2>&1
    cp "$work/feeds-$i"/feed-*.xml "$dir/staging-$i/"
  done
  local pids=()
  for i in $(seq 0 $((n - 1))); do
    ADJUSTD_STORE_URL=$url ADJUSTD_PATHS_INBOX=$dir/inbox-$i ADJUSTD_PATHS_WORK=$dir/work-$i \
      RUST_LOG=adjustd=warn "$bin" --config "$dir/adjustd.toml" run >"$dir/instance-$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 1
  local expected=$((n * feeds)) start end
  start=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    for file in "$dir/staging-$i"/*.xml; do mv "$file" "$dir/inbox-$i/"; done
  done
  while [ "$(find "$dir/outbox" -name '*.report.json' | wc -l)" -lt "$expected" ]; do
    sleep 0.05
  done
  end=$(date +%s.%N)
  # CPU spent: the adjustd processes, and their PostgreSQL backends (what limits scaling on
  # a small machine is the CPU both share).
  local ticks=0 backend_ticks=0 pid
  for pid in "${pids[@]}"; do ticks=$((ticks + $(cpu_ticks "$pid"))); done
  if [[ $url == postgres* ]]; then
    for pid in $(psql -qAt "$maintenance" -c "SELECT pid FROM pg_stat_activity WHERE datname = '${url##*/}' AND application_name = 'adjustd'"); do
      backend_ticks=$((backend_ticks + $(cpu_ticks "$pid")))
    done
  fi
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" || true
  local failed; failed=$(find "$dir/failed" -type f | wc -l)
  local errors; errors=$(grep -ho '"messages_with_error": [0-9]*' "$dir"/outbox/*.json | awk '{s+=$2} END {print s+0}')
  awk -v l="$label" -v n="$n" -v m=$((expected * messages)) -v s="$start" -v e="$end" \
    -v f="$failed" -v x="$errors" -v t="$ticks" -v b="$backend_ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {
      printf "%-12s %d instance(s) %7d messages %7.2f s %7.0f messages/s  CPU adjustd %6.2f s + PostgreSQL backends %6.2f s  (failed feeds %d, message errors %d)\n",
             l, n, m, e - s, m / (e - s), t / hz, b / hz, f, x }'
}

for n in $instance_counts; do
  for i in $(seq 0 $((n - 1))); do generate "$i"; done
done
echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $feeds feeds x $messages messages per instance"

for n in $instance_counts; do
  db=adjustd_bench_$n
  psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql_admin "CREATE DATABASE $db"
  run_case "postgres-$n" "$n" "$base/$db"
  psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
run_case "sqlite-1" 1 "sqlite:$work/run-sqlite-1.db"
rm -f "$work/run-sqlite-1.db"*
