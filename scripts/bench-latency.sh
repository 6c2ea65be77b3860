#!/usr/bin/env bash
# Benchmark of the daemon (`adjustd run`, release build, SQLite store, durable commits):
#   1. drop-to-report latency of 1-message feeds, one at a time (atomic rename into the
#      inbox; the clock stops when the JSON report appears), p50/p99/max, for each settle
#      time in SETTLE_MS (default "0 100 1000"; 0 is the minimum the config accepts);
#   2. the time to drain 10,000 small feeds moved into the inbox at once.
# Usage: scripts/bench-latency.sh [WORKDIR]   (WORKDIR on the disk you want to measure;
#        default a new folder under /tmp). Env: DROPS (default 200), FILES (default 10000),
#        SETTLE_MS. Needs python3 for the timing driver.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/adjustd-bench-latency.XXXXXX)}
mkdir -p "$work"
drops=${DROPS:-200}
files=${FILES:-10000}
settles=${SETTLE_MS:-"0 100 1000"}
command -v python3 >/dev/null || { echo "bench-latency.sh needs python3" >&2; exit 1; }

cargo build --release --quiet --bin adjustd
bin=$PWD/target/release/adjustd

# One folder per case, with the orders every generated feed refers to.
setup() { # dir settle_ms
  local dir=$1 settle=$2
  rm -rf "$dir" && mkdir -p "$dir/staging"
  cat > "$dir/adjustd.toml" <<EOF
[store]
url = "sqlite:store.db"
[paths]
inbox = "inbox"
outbox = "outbox"
archive = "archive"
failed = "failed"
work = "work"
[inbox]
settle_ms = $settle
EOF
  python3 - "$dir/orders.tsv" <<'EOF'
import sys
rows = ["order-id\torder-item-id\tpurchase-date\tsku\tquantity-purchased\tquantity-shipped\t"
        "currency\titem-price\titem-tax\tshipping-price\tshipping-tax\tfulfillment-channel"]
for n in range(100):
    rows.append(f"111-{n:07}-{n:07}\t{20000000000000 + n:014}\t2026-11-01T10:00:00+00:00\t"
                f"SKU-{n}\t1\t1\tUSD\t1000.00\t80.00\t0.00\t0.00\tMFN")
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
EOF
  "$bin" --config "$dir/adjustd.toml" orders import --merchant M_BENCH "$dir/orders.tsv" >/dev/null
}

start_daemon() { # dir
  "$bin" --config "$1/adjustd.toml" run >"$1/daemon.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do grep -q "watch mode" "$1/daemon.log" && return; sleep 0.05; done
  echo "daemon did not start; see $1/daemon.log" >&2; exit 1
}

stop_daemon() {
  kill -TERM "$daemon_pid" && wait "$daemon_pid" || true
}

# The driver: writes 1-message feeds (unique idempotency keys) and measures.
driver() { # mode dir count
  python3 - "$@" <<'EOF'
import os, sys, time, glob
mode, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def feed(n):
    o = n % 100
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<AmazonEnvelope><Header><DocumentVersion>1.01'
            '</DocumentVersion><MerchantIdentifier>M_BENCH</MerchantIdentifier></Header>'
            '<MessageType>OrderAdjustment</MessageType><Message><MessageID>1</MessageID>'
            f'<OrderAdjustment><AmazonOrderID>111-{o:07}-{o:07}</AmazonOrderID><AdjustedItem>'
            f'<AmazonOrderItemCode>{20000000000000 + o:014}</AmazonOrderItemCode>'
            f'<MerchantAdjustmentItemID>{mode}-{n}</MerchantAdjustmentItemID>'
            '<AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component>'
            '<Type>Principal</Type><Amount currency="USD">0.01</Amount></Component>'
            '</ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message></AmazonEnvelope>\n')
staging, inbox, outbox = (os.path.join(folder, f) for f in ("staging", "inbox", "outbox"))
if mode == "latency":
    latencies = []
    for n in range(count):
        name = f"lat-{n:05}.xml"
        with open(os.path.join(staging, name), "w") as f:
            f.write(feed(n))
        start = time.monotonic()
        os.rename(os.path.join(staging, name), os.path.join(inbox, name))
        pattern = os.path.join(outbox, f"{name}.*.report.json")
        while not glob.glob(pattern):
            time.sleep(0.0005)
        latencies.append(time.monotonic() - start)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"p50 {pick(0.50):7.1f} ms   p99 {pick(0.99):7.1f} ms   max {latencies[-1] * 1000:7.1f} ms   ({count} drops)")
elif mode == "write":
    for n in range(count):
        with open(os.path.join(staging, f"burst-{n:05}.xml"), "w") as f:
            f.write(feed(n))
elif mode == "drain":
    names = sorted(os.listdir(staging))
    start = time.monotonic()
    for name in names:
        os.rename(os.path.join(staging, name), os.path.join(inbox, name))
    moved = time.monotonic() - start
    def busy():
        return os.listdir(inbox) or any(files for _, _, files in os.walk(os.path.join(folder, "work")))
    while busy():
        time.sleep(0.05)
    total = time.monotonic() - start
    print(f"{len(names)} files drained in {total:6.1f} s ({len(names) / total:6.0f} files/s; moving them in took {moved:.1f} s)")
EOF
}

echo "adjustd daemon benchmark in $work ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
for settle in $settles; do
  dir=$work/latency-$settle
  setup "$dir" "$settle"
  start_daemon "$dir"
  printf 'drop-to-report, settle_ms = %-5s ' "$settle"
  driver latency "$dir" "$drops"
  stop_daemon
done

dir=$work/drain
setup "$dir" 100
driver write "$dir" "$files"
start_daemon "$dir"
printf 'drain, settle_ms = 100:         '
driver drain "$dir" "$files"
stop_daemon
reports=$(find "$dir/outbox" -name '*.report.json' | wc -l)
[ "$reports" -eq "$files" ] || { echo "expected $files reports, found $reports" >&2; exit 1; }
