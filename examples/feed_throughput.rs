//! Quick throughput check of `feed` + `validate` against a raw quick-xml event loop over
//! the same bytes (the target: parse+validate >= 0.6x raw). Not a benchmark
//! harness (that is `BENCHMARKS.md`'s job): it generates a feed of about `MB` megabytes
//! (default 100) in the temp directory, reads it a few times each way and prints MB/s.
//!
//! `cargo run --release --example feed_throughput [MB] [all|raw|reader|validate|slice]`
//! (`slice` times quick-xml's borrowed reader over the file in memory: the parser's floor).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::Instant;

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::validate::{ValidatedMessage, Validator};
use quick_xml::events::Event;

fn main() -> std::io::Result<()> {
    let megabytes: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let path = std::env::temp_dir().join(format!("adjustd-throughput-{megabytes}mb.xml"));
    let size = write_feed(&path, megabytes * 1024 * 1024)?;
    println!("feed: {} ({:.1} MB)", path.display(), mb(size));

    let mode = std::env::args().nth(2).unwrap_or_else(|| "all".to_owned());
    let mut best = [f64::MAX; 4];
    for _ in 0..3 {
        if mode == "all" || mode == "raw" {
            let started = Clock::start();
            let events = raw_loop(&path)?;
            best[0] = best[0].min(started.seconds());
            println!("  raw: {events} events");
        }
        if mode == "slice" {
            let bytes = std::fs::read(&path)?;
            let started = Clock::start();
            let events = slice_loop(&bytes)?;
            best[3] = best[3].min(started.seconds());
            println!("  slice: {events} events");
        }
        if mode == "all" || mode == "reader" {
            let started = Clock::start();
            let children = reader_only(&path)?;
            best[1] = best[1].min(started.seconds());
            println!("  reader: {children} children of the root");
        }
        if mode == "all" || mode == "validate" {
            let started = Clock::start();
            let (valid, invalid) = validate(&path)?;
            best[2] = best[2].min(started.seconds());
            assert_eq!(invalid, 0, "generated messages are valid");
            println!("  validate: {valid} valid messages");
        }
    }
    let labels = [
        "raw quick-xml read_event_into loop",
        "feed::FeedReader (trees, no validation)",
        "feed::FeedReader + validate::Validator",
        "raw quick-xml borrowed-slice loop over the file in memory",
    ];
    for (label, seconds) in labels.iter().zip(best) {
        if seconds < f64::MAX {
            println!(
                "{label}: {:.0} MB/s (best of 3: {seconds:.3} s CPU)",
                mb(size) / seconds
            );
        }
    }
    if best[0] < f64::MAX && best[2] < f64::MAX {
        println!("ratio validate/raw: {:.2}", best[0] / best[2]);
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

/// CPU time of this thread in seconds (Linux), so that a busy machine does not distort
/// the comparison; falls back to wall time elsewhere.
struct Clock(Option<f64>, Instant);

impl Clock {
    fn start() -> Clock {
        Clock(cpu_seconds(), Instant::now())
    }

    fn seconds(&self) -> f64 {
        match (self.0, cpu_seconds()) {
            (Some(start), Some(now)) => now - start,
            _ => self.1.elapsed().as_secs_f64(),
        }
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(nanos / 1e9)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn raw_loop(path: &std::path::Path) -> std::io::Result<u64> {
    let mut reader =
        quick_xml::Reader::from_reader(BufReader::with_capacity(1 << 16, File::open(path)?));
    let mut buf = Vec::with_capacity(1024);
    let mut events = 0u64;
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) => return Ok(events),
            Ok(_) => events += 1,
            Err(error) => return Err(std::io::Error::other(error.to_string())),
        }
    }
}

/// quick-xml's floor on these bytes: the borrowed-slice reader over the whole file in
/// memory (only for comparison: the feed reader never holds a whole file).
fn slice_loop(bytes: &[u8]) -> std::io::Result<u64> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut events = 0u64;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(events),
            Ok(_) => events += 1,
            Err(error) => return Err(std::io::Error::other(error.to_string())),
        }
    }
}

fn reader_only(path: &std::path::Path) -> std::io::Result<u64> {
    let reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut feed = adjustd::feed::FeedReader::new(reader, Limits::default());
    let mut children = 0;
    while feed
        .next_child()
        .map_err(|p| std::io::Error::other(p.to_string()))?
        .is_some()
    {
        children += 1;
    }
    Ok(children)
}

fn validate(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut validator = Validator::new(reader, Limits::default(), &Rules::default());
    validator
        .header()
        .map_err(|p| std::io::Error::other(p.to_string()))?;
    let (mut valid, mut invalid) = (0, 0);
    while let Some(message) = validator
        .next_message()
        .map_err(|p| std::io::Error::other(p.to_string()))?
    {
        match message {
            ValidatedMessage::Valid(_) => valid += 1,
            ValidatedMessage::Invalid { .. } => invalid += 1,
        }
    }
    Ok((valid, invalid))
}

fn write_feed(path: &std::path::Path, target: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut written = 0u64;
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AmazonEnvelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:noNamespaceSchemaLocation=\"amzn-envelope.xsd\">\n  <Header>\n    <DocumentVersion>1.01</DocumentVersion>\n    <MerchantIdentifier>M_EXAMPLE</MerchantIdentifier>\n  </Header>\n  <MessageType>OrderAdjustment</MessageType>\n";
    out.write_all(head.as_bytes())?;
    written += head.len() as u64;
    let mut id = 0u64;
    while written < target {
        id += 1;
        let message = format!(
            "  <Message>\n    <MessageID>{id}</MessageID>\n    <OrderAdjustment>\n      <AmazonOrderID>{:03}-{:07}-{:07}</AmazonOrderID>\n      <ActionType>Refund</ActionType>\n      <AdjustedItem>\n        <AmazonOrderItemCode>{:014}</AmazonOrderItemCode>\n        <MerchantAdjustmentItemID>ADJ-{id}</MerchantAdjustmentItemID>\n        <AdjustmentReason>CustomerReturn</AdjustmentReason>\n        <ItemPriceAdjustments>\n          <Component>\n            <Type>Principal</Type>\n            <Amount currency=\"USD\">{}.{:02}</Amount>\n          </Component>\n          <Component>\n            <Type>Tax</Type>\n            <Amount currency=\"USD\">1.{:02}</Amount>\n          </Component>\n          <Component>\n            <Type>RestockingFee</Type>\n            <Amount currency=\"USD\">-1.00</Amount>\n          </Component>\n        </ItemPriceAdjustments>\n        <Quantity>1</Quantity>\n      </AdjustedItem>\n    </OrderAdjustment>\n  </Message>\n",
            id % 1000,
            id % 10_000_000,
            (id * 7) % 10_000_000,
            id,
            10 + id % 90,
            id % 100,
            id % 100
        );
        out.write_all(message.as_bytes())?;
        written += message.len() as u64;
    }
    out.write_all(b"</AmazonEnvelope>\n")?;
    out.flush()?;
    Ok(written + 18)
}
