#!/usr/bin/env bash
# Benchmark of one order item refunded again and again in one feed (a buggy or hostile sender):
# N messages each refund 0.01 of the same item under a new MerchantAdjustmentItemID, so every
# one gets the PossibleResubmission warning. Time and peak RSS must grow linearly with N, with
# the resubmission window on (default, 7 days) and off. Usage: scripts/bench-hot-item.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/adjustd-bench-hot.XXXXXX)}
mkdir -p "$work"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release --quiet --bin adjustd
bin=$PWD/target/release/adjustd

printf 'order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\tcurrency\titem-price\n900-0000001-0000001\t90000000000001\tHOT\t1\t1\tUSD\t99999.00\n' >"$work/orders.tsv"
for n in 50000 100000 200000; do
  awk -v n="$n" 'BEGIN {
    print "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
    print "<AmazonEnvelope><Header><DocumentVersion>1.01</DocumentVersion><MerchantIdentifier>M_BENCH</MerchantIdentifier></Header><MessageType>OrderAdjustment</MessageType>"
    for (i = 1; i <= n; i++)
      printf "<Message><MessageID>%d</MessageID><OrderAdjustment><AmazonOrderID>900-0000001-0000001</AmazonOrderID><AdjustedItem><AmazonOrderItemCode>90000000000001</AmazonOrderItemCode><MerchantAdjustmentItemID>H-%d</MerchantAdjustmentItemID><AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">0.01</Amount></Component></ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>\n", i, i
    print "</AmazonEnvelope>"
  }' >"$work/hot.xml"
  for window in 7 0; do
    dir="$work/$n-$window"
    rm -rf "$dir" && mkdir -p "$dir"
    printf '[store]\nurl = "sqlite:store.db"\n[paths]\noutbox = "outbox"\n[rules]\nresubmission_window_days = %s\n' "$window" >"$dir/adjustd.toml"
    "$bin" --config "$dir/adjustd.toml" orders import --merchant M_BENCH "$work/orders.tsv" >/dev/null
    /usr/bin/time -f "%e %U %S %M" -o "$dir/time.txt" "$bin" --config "$dir/adjustd.toml" process "$work/hot.xml" >/dev/null || true
    awk -v n="$n" -v w="$window" '{
      printf "%7d messages  window %s days  %6.2f s wall  %6.2f s CPU  peak RSS %6.1f MB\n", n, w, $1, $2 + $3, $4 / 1024 }' "$dir/time.txt"
  done
done
rm -f "$work/hot.xml"
