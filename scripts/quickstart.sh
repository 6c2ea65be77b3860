#!/usr/bin/env bash
# Quickstart: build adjustd, set up a fresh demo folder with the embedded SQLite store, import
# the bundled sample orders, drop the bundled sample feeds into the inbox and run the daemon.
# Reports appear in var-quickstart/outbox/A1SELLER/. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/adjustd
demo=var-quickstart
rm -rf "$demo"
mkdir -p "$demo/inbox/A1SELLER"
cat > "$demo/adjustd.toml" <<'TOML'
[paths]
inbox = "inbox"
outbox = "outbox"
archive = "archive"
failed = "failed"
work = "work"
parked = "parked"

[store]
url = "sqlite:adjustd.db"

[inbox]
settle_ms = 300
TOML

"$bin" --config "$demo/adjustd.toml" orders import --merchant A1SELLER fixtures/sample-orders.txt
cp fixtures/sample-feeds/*.xml "$demo/inbox/A1SELLER/"
echo
echo "Sample feeds dropped into $demo/inbox/A1SELLER/. Reports will appear in $demo/outbox/A1SELLER/."
echo "Try: $bin --config $demo/adjustd.toml orders show 171-1234567-1234567"
echo "Sample 03 names an order the store does not have (ORDER_NOT_FOUND): the daemon parks it in"
echo "$demo/parked/ and retries it until that order is imported (a retry that finds nothing new writes no report)."
echo "The SQLite store has one writer: to import it, stop the daemon (Ctrl-C), run orders import,"
echo "then $bin --config $demo/adjustd.toml run (this script would start afresh): the daemon"
echo "reads the parked feed back and retries it when it is due. (README.md explains the retries.)"
echo "Drop more feeds into $demo/inbox/A1SELLER/ while it runs. Ctrl-C to stop."
echo
exec "$bin" --config "$demo/adjustd.toml" run
