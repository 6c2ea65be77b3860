#!/usr/bin/env bash
# Benchmark of `adjustd process` end to end into SQLite (durable commit): a 200k-message feed
# against 100k imported orders, and a 1M-message feed against 500k orders. Prints messages/s
# and peak RSS (from /usr/bin/time -v). Each order is touched by at most 3 messages, as issue 3
# asks. Usage: scripts/bench-process.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/adjustd-bench-process.XXXXXX)}
mkdir -p "$work"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

cargo build --release --quiet --bin adjustd --example genfeed
bin=target/release/adjustd
gen=target/release/examples/genfeed

run_case() { # name messages orders
  local name=$1 messages=$2 orders=$3 dir="$work/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  printf '[store]\nurl = "sqlite:store.db"\n[paths]\noutbox = "outbox"\n' > "$dir/adjustd.toml"
  "$gen" --messages "$messages" --orders "0..$orders" --max-per-order 3 --merchant M_BENCH --seed 7 \
    --order-report "$dir/orders.tsv" --out "$dir/feed.xml"
  "$bin" --config "$dir/adjustd.toml" orders import --merchant M_BENCH "$dir/orders.tsv" >/dev/null
  local bytes; bytes=$(stat -c %s "$dir/feed.xml")
  /usr/bin/time -v "$bin" --config "$dir/adjustd.toml" process "$dir/feed.xml" >/dev/null 2>"$dir/time.txt" || true
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$dir/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
  awk -v n="$name" -v m="$messages" -v o="$orders" -v s="$secs" -v r="$rss" -v b="$bytes" 'BEGIN {
    printf "%-10s %8d messages %7d orders %7.1f MB  %6.2f s  %9.0f messages/s  peak RSS %6.1f MB\n", n, m, o, b/1e6, s, m/s, r/1024 }'
  rm -f "$dir/feed.xml"
}

run_case 200k 200000 100000
run_case 1M 1000000 500000
