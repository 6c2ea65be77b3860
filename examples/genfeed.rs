//! Generates large, valid Order Adjustment feeds for benchmarks: N messages from a
//! deterministic seed, about 650 bytes per tab-indented message (200 000 messages ≈ 130 MB),
//! streamed to a file or stdout so even a 1 GB feed needs no memory. Optionally writes the matching order
//! report (tab-separated, the columns `adjustd orders import` reads) so the same feed can be
//! processed against a store. Does not generate invalid input; the differential test and the
//! fixtures do that.
//!
//! ```text
//! cargo run --release --example genfeed -- --messages 200000 --seed 7 --out /tmp/feed.xml
//! cargo run --release --example genfeed -- --target-bytes 1073741824 --out /tmp/1g.xml
//! cargo run --release --example genfeed -- --messages 1000 --orders 0..500 \
//!     --merchant M_BENCH --order-report /tmp/orders.tsv --out /tmp/feed.xml
//! ```
//!
//! Order `k` of the `--orders` range has AmazonOrderID `902-KKKKKKK-kkkkkkk` (the high and
//! low seven digits of `k`) and items with AmazonOrderItemCode `kkkkkkkkkkkk0I` (`k` in 12
//! digits, item index `I` in 2). Every message refunds a small amount from one item, so
//! several messages may hit one order without exceeding what the order report charged.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Generate a valid Order Adjustment feed for benchmarks")]
struct Args {
    /// Number of messages (ignored when --target-bytes is given).
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Write messages until the file has at least this many bytes.
    #[arg(long)]
    target_bytes: Option<u64>,
    /// Seed of the pseudo-random choices; the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MerchantIdentifier of the feed.
    #[arg(long, default_value = "M_BENCH")]
    merchant: String,
    /// Range of order numbers `START..END` the messages draw their orders from.
    #[arg(long, default_value = "0..100000", value_parser = parse_range)]
    orders: Range<u64>,
    /// Items per order (1 to 99); each message adjusts one or two of them.
    #[arg(long, default_value_t = 3)]
    items_per_order: u64,
    /// ISO 4217 currency of every amount (2 fraction digits are written).
    #[arg(long, default_value = "USD")]
    currency: String,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the order report (TSV) for every order of the range.
    #[arg(long)]
    order_report: Option<PathBuf>,
    /// Touch each order by at most this many messages (0: no limit). Needs enough orders:
    /// messages <= orders x this.
    #[arg(long, default_value_t = 0)]
    max_per_order: u32,
}

/// How many messages chose each order so far, for `--max-per-order`.
struct Touches {
    limit: u32,
    counts: Vec<u32>,
}

impl Touches {
    /// A random order of the range that is still below the limit.
    fn pick(&mut self, rng: &mut SplitMix64, orders: &Range<u64>) -> u64 {
        let span = orders.end - orders.start;
        loop {
            let offset = rng.below(span);
            if self.limit == 0 {
                return orders.start + offset;
            }
            let count = &mut self.counts[usize::try_from(offset).unwrap_or(usize::MAX)];
            if *count < self.limit {
                *count += 1;
                return orders.start + offset;
            }
        }
    }
}

/// A small deterministic PRNG (SplitMix64): good enough to vary a benchmark feed, and no
/// dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

const REASONS: &[&str] = &[
    "CustomerReturn",
    "GeneralAdjustment",
    "CouldNotShip",
    "DifferentItem",
    "PriceError",
    "Exchange",
    "CarrierCreditDecision",
];

fn parse_range(raw: &str) -> Result<Range<u64>, String> {
    let (start, end) = raw
        .split_once("..")
        .ok_or_else(|| format!("{raw:?} is not START..END"))?;
    let start: u64 = start.parse().map_err(|e| format!("{start:?}: {e}"))?;
    let end: u64 = end.parse().map_err(|e| format!("{end:?}: {e}"))?;
    if start >= end || end > 10_u64.pow(12) {
        return Err(format!("{raw:?} must be a non-empty range below 10^12"));
    }
    Ok(start..end)
}

/// The AmazonOrderID of order number `k` (< 10^14).
fn order_id(k: u64) -> String {
    format!("902-{:07}-{:07}", k / 10_000_000, k % 10_000_000)
}

/// The AmazonOrderItemCode of item `i` of order `k` (14 digits).
fn item_code(k: u64, i: u64) -> String {
    format!("{k:012}{i:02}")
}

/// `cents` as a decimal string with two fraction digits (non-negative input).
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn write_message(
    out: &mut impl Write,
    rng: &mut SplitMix64,
    touches: &mut Touches,
    args: &Args,
    message_id: u64,
) -> io::Result<()> {
    let k = touches.pick(rng, &args.orders);
    let currency = &args.currency;
    let refund = rng.below(3) == 0;
    writeln!(out, "\t<Message>")?;
    writeln!(out, "\t\t<MessageID>{message_id}</MessageID>")?;
    writeln!(out, "\t\t<OrderAdjustment>")?;
    writeln!(out, "\t\t\t<AmazonOrderID>{}</AmazonOrderID>", order_id(k))?;
    if refund {
        writeln!(out, "\t\t\t<ActionType>Refund</ActionType>")?;
    }
    let items = if rng.below(10) == 0 { 2 } else { 1 };
    let first = rng.below(args.items_per_order);
    for n in 0..items.min(args.items_per_order) {
        let i = (first + n) % args.items_per_order;
        let reason = REASONS[usize::try_from(rng.below(REASONS.len() as u64)).unwrap_or(0)];
        let principal = 100 + rng.below(400);
        let tax = principal / 10;
        writeln!(out, "\t\t\t<AdjustedItem>")?;
        writeln!(
            out,
            "\t\t\t\t<AmazonOrderItemCode>{}</AmazonOrderItemCode>",
            item_code(k, i)
        )?;
        writeln!(
            out,
            "\t\t\t\t<MerchantAdjustmentItemID>S{}-M{message_id}-I{n}</MerchantAdjustmentItemID>",
            args.seed
        )?;
        writeln!(out, "\t\t\t\t<AdjustmentReason>{reason}</AdjustmentReason>")?;
        writeln!(out, "\t\t\t\t<ItemPriceAdjustments>")?;
        let mut components = vec![("Principal", money(principal))];
        if rng.below(2) == 0 {
            components.push(("Tax", money(tax)));
        }
        if rng.below(4) == 0 {
            components.push(("Shipping", money(50 + rng.below(100))));
        }
        if rng.below(8) == 0 {
            components.push(("RestockingFee", format!("-{}", money(principal / 10))));
        }
        for (kind, amount) in components {
            writeln!(
                out,
                "\t\t\t\t\t<Component><Type>{kind}</Type><Amount currency=\"{currency}\">{amount}</Amount></Component>"
            )?;
        }
        writeln!(out, "\t\t\t\t</ItemPriceAdjustments>")?;
        if refund {
            writeln!(out, "\t\t\t\t<Quantity>1</Quantity>")?;
        }
        writeln!(out, "\t\t\t</AdjustedItem>")?;
    }
    writeln!(out, "\t\t</OrderAdjustment>")?;
    writeln!(out, "\t</Message>")
}

/// Counts bytes written so `--target-bytes` can stop at the right size.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_feed(out: impl Write, args: &Args) -> io::Result<(u64, u64)> {
    let mut out = Counting {
        inner: BufWriter::with_capacity(1 << 20, out),
        written: 0,
    };
    let mut rng = SplitMix64(args.seed);
    let span = usize::try_from(args.orders.end - args.orders.start).unwrap_or(usize::MAX);
    let mut touches = Touches {
        limit: args.max_per_order,
        counts: if args.max_per_order > 0 {
            vec![0; span]
        } else {
            Vec::new()
        },
    };
    writeln!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
    writeln!(out, "<AmazonEnvelope>")?;
    writeln!(out, "\t<Header>")?;
    writeln!(out, "\t\t<DocumentVersion>1.02</DocumentVersion>")?;
    writeln!(
        out,
        "\t\t<MerchantIdentifier>{}</MerchantIdentifier>",
        args.merchant
    )?;
    writeln!(out, "\t</Header>")?;
    writeln!(out, "\t<MessageType>OrderAdjustment</MessageType>")?;
    let mut message_id = 0;
    loop {
        let done = match args.target_bytes {
            Some(target) => out.written >= target,
            None => message_id >= args.messages,
        };
        if done && message_id > 0 {
            break;
        }
        message_id += 1;
        write_message(&mut out, &mut rng, &mut touches, args, message_id)?;
    }
    writeln!(out, "</AmazonEnvelope>")?;
    out.flush()?;
    Ok((message_id, out.written))
}

fn write_order_report(path: &PathBuf, args: &Args) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(
        out,
        "order-id\torder-item-id\tpurchase-date\tsku\tquantity-purchased\tquantity-shipped\tcurrency\titem-price\titem-tax\tshipping-price\tshipping-tax\tfulfillment-channel"
    )?;
    for k in args.orders.clone() {
        for i in 0..args.items_per_order {
            // Generous charges so that many small refunds of one item stay within them.
            writeln!(
                out,
                "{}\t{}\t2026-01-15T10:00:00+00:00\tSKU-{k}-{i}\t5\t5\t{}\t100000.00\t10000.00\t10000.00\t1000.00\tMFN",
                order_id(k),
                item_code(k, i),
                args.currency
            )?;
        }
    }
    out.flush()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=99).contains(&args.items_per_order) {
        bail!("--items-per-order must be 1 to 99");
    }
    if args.max_per_order > 0 {
        let capacity = (args.orders.end - args.orders.start) * u64::from(args.max_per_order);
        if args.target_bytes.is_some() || args.messages > capacity {
            bail!(
                "--max-per-order {} allows at most {capacity} messages over {} orders (and \
                 cannot be combined with --target-bytes)",
                args.max_per_order,
                args.orders.end - args.orders.start
            );
        }
    }
    if let Some(path) = &args.order_report {
        write_order_report(path, &args)
            .with_context(|| format!("writing the order report {}", path.display()))?;
    }
    let (messages, bytes) = match &args.out {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            write_feed(file, &args).with_context(|| format!("writing {}", path.display()))?
        }
        None => write_feed(io::stdout().lock(), &args).context("writing the feed to stdout")?,
    };
    eprintln!("genfeed: {messages} messages, {bytes} bytes");
    Ok(())
}
