#!/usr/bin/env bash
# Benchmark of the feed reader and validator (issue 2 item 7); figures go to BENCHMARKS.md,
# section "Feed reader and validator".
#
# Builds release binaries, generates a 200k-message feed (~130 MB) with examples/genfeed.rs
# and measures, on the same bytes:
#   adjustd-validate  `adjustd validate FILE` (the CLI: also hashes the file, builds a report)
#   validateloop      examples/validateloop.rs: the Validator alone
#   rawloop           examples/rawloop.rs: a bare quick-xml event loop (the ceiling)
#   xmllint           `xmllint --noout --stream --schema schemas/amzn-envelope.xsd`
# Throughput in MB/s (10^6 bytes) from hyperfine when installed (apt-get install hyperfine),
# else from a best-of-N loop with `date +%s.%N`. Then peak RSS (`/usr/bin/time -v`, package
# `time`) for a 10 MB and a 1 GB feed; the 1 GB feed is streamed to disk and deleted after.
#
# Usage: scripts/bench-validate.sh            full run (needs ~1.2 GB free in $BENCH_DIR)
#   BENCH_MESSAGES=20000 BENCH_SKIP_1G=1 scripts/bench-validate.sh   quick run
#   BENCH_DIR=/var/tmp/x                      where the feeds go (default: a new /tmp dir)
#   BENCH_RUNS=5                              timed runs per tool (after one warm-up)
# Targets (issue 2): validate >= 2.5x xmllint, >= 0.6x the raw loop, peak RSS <= 32 MB on 1 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${BENCH_MESSAGES:-200000}
runs=${BENCH_RUNS:-5}
dir=${BENCH_DIR:-$(mktemp -d /tmp/adjustd-bench.XXXXXX)}
mkdir -p "$dir"
cleanup() { rm -f "$dir"/feed-*.xml "$dir"/*.csv "$dir"/*.time; rmdir "$dir" 2>/dev/null || true; }
trap cleanup EXIT

for tool in xmllint /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install libxml2-utils time)" >&2; exit 2; }
done

echo "== building release binaries"
cargo build --release --quiet --bin adjustd --example genfeed --example rawloop --example validateloop
bin=target/release
schema=schemas/amzn-envelope.xsd

echo "== machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
echo "rustc: $(rustc --version)"
echo "xmllint: $(xmllint --version 2>&1 | head -n1)"
echo "adjustd: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

feed="$dir/feed-${messages}.xml"
echo "== generating $messages messages"
"$bin/examples/genfeed" --messages "$messages" --seed 7 --out "$feed"
bytes=$(stat -c %s "$feed")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "feed: $feed, $bytes bytes ($mb MB)"

echo "== sanity: every tool accepts the feed"
"$bin/adjustd" validate "$feed" >/dev/null
"$bin/examples/validateloop" "$feed"
"$bin/examples/rawloop" "$feed"
xmllint --noout --stream --schema "$schema" "$feed"

declare -A cmd=(
  [adjustd-validate]="$bin/adjustd validate $feed"
  [validateloop]="$bin/examples/validateloop $feed"
  [rawloop]="$bin/examples/rawloop $feed"
  [xmllint]="xmllint --noout --stream --schema $schema $feed"
)
order=(adjustd-validate validateloop rawloop xmllint)
declare -A secs cpu

echo "== throughput ($runs runs each after a warm-up; the feed is in the page cache)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v hyperfine >/dev/null; then
  args=()
  for name in "${order[@]}"; do args+=(-n "$name" "${cmd[$name]}"); done
  hyperfine --style basic --warmup 1 --runs "$runs" --export-csv "$dir/hf.csv" "${args[@]}" >&2
  # CSV columns: command,mean,stddev,median,user,system,min,max
  while IFS=, read -r name mean _ _ user system _; do
    [[ $name == command ]] && continue
    secs[$name]=$mean
    cpu[$name]=$(awk -v u="$user" -v s="$system" 'BEGIN { printf "%.4f", u + s }')
  done <"$dir/hf.csv"
  method="hyperfine mean of $runs runs"
else
  for name in "${order[@]}"; do
    ${cmd[$name]} >/dev/null 2>&1 || true
    best=
    for _ in $(seq "$runs"); do
      /usr/bin/time -f "%e %U %S" -o "$dir/run.time" ${cmd[$name]} >/dev/null 2>&1
      read -r wall user system <"$dir/run.time"
      if [[ -z $best ]] || awk -v t="$wall" -v b="$best" 'BEGIN { exit !(t < b) }'; then
        best=$wall
        cpu[$name]=$(awk -v u="$user" -v s="$system" 'BEGIN { printf "%.4f", u + s }')
      fi
    done
    secs[$name]=$best
  done
  method="best of $runs runs (/usr/bin/time)"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# Wall time suffers when the machine is shared; CPU time (user + system) much less, so both
# are shown and the ratios are given for both.
echo
echo "| tool | wall s | MB/s (wall) | CPU s | MB/s (CPU) |"
echo "|---|---|---|---|---|"
for name in "${order[@]}"; do
  awk -v n="$name" -v s="${secs[$name]}" -v c="${cpu[$name]}" -v b="$bytes" \
    'BEGIN { printf "| %s | %.3f | %.1f | %.3f | %.1f |\n", n, s, b / 1e6 / s, c, b / 1e6 / c }'
done
echo "($method, $mb MB feed, $messages messages)"
for name in adjustd-validate validateloop; do
  awk -v n="$name" -v v="${secs[$name]}" -v x="${secs[xmllint]}" -v r="${secs[rawloop]}" \
    -v cv="${cpu[$name]}" -v cx="${cpu[xmllint]}" -v cr="${cpu[rawloop]}" \
    'BEGIN { printf "%s: %.2fx xmllint (target >= 2.5), %.2fx the raw loop (target >= 0.6); by CPU time %.2fx and %.2fx\n", n, x / v, r / v, cx / cv, cr / cv }'
done

peak_rss() { # prints the peak RSS in MB of the command "$@"
  /usr/bin/time -v "$@" >/dev/null 2>"$dir/rss.time" || true
  awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$dir/rss.time"
}

rss_table() { # $1 = feed file, $2 = label
  local f=$1
  echo
  echo "peak RSS, $2 ($(stat -c %s "$f") bytes):"
  echo "| tool | peak RSS MB |"
  echo "|---|---|"
  echo "| adjustd-validate | $(peak_rss "$bin/adjustd" validate "$f") |"
  echo "| validateloop | $(peak_rss "$bin/examples/validateloop" "$f") |"
  echo "| rawloop | $(peak_rss "$bin/examples/rawloop" "$f") |"
  echo "| xmllint | $(peak_rss xmllint --noout --stream --schema "$schema" "$f") |"
}

echo "== peak RSS"
"$bin/examples/genfeed" --target-bytes 10000000 --seed 11 --out "$dir/feed-10m.xml" 2>/dev/null
rss_table "$dir/feed-10m.xml" "10 MB feed"
rm -f "$dir/feed-10m.xml"
if [[ ${BENCH_SKIP_1G:-0} != 1 ]]; then
  "$bin/examples/genfeed" --target-bytes 1000000000 --seed 13 --out "$dir/feed-1g.xml" 2>/dev/null
  rss_table "$dir/feed-1g.xml" "1 GB feed (target <= 32 MB)"
  rm -f "$dir/feed-1g.xml"
fi
