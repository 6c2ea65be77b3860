//! The benchmark baseline for the validator: a bare quick-xml event loop over a feed file
//! that only counts events and the bytes of text and attribute values (with the EOL
//! normalisation any real consumer applies).
//! No validation, no model, no allocation per event beyond quick-xml's buffer. Used by
//! `scripts/bench-validate.sh`; prints `events=N text_bytes=N`.
//!
//! ```text
//! cargo run --release --example rawloop -- /tmp/feed.xml
//! ```

use std::fs::File;
use std::io::BufReader;

use anyhow::{Context, bail};
use quick_xml::Reader;
use quick_xml::events::Event;

fn main() -> anyhow::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        bail!("usage: rawloop FEED.xml");
    };
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let mut reader = Reader::from_reader(BufReader::with_capacity(64 * 1024, file));
    let mut buf = Vec::with_capacity(4096);
    let mut events: u64 = 0;
    let mut text_bytes: u64 = 0;
    loop {
        match reader
            .read_event_into(&mut buf)
            .with_context(|| format!("{path} at byte {}", reader.buffer_position()))?
        {
            Event::Eof => break,
            Event::Text(text) => text_bytes += text.xml10_content().len() as u64,
            Event::Start(start) | Event::Empty(start) => {
                for attribute in start.attributes() {
                    text_bytes += attribute.context("reading an attribute")?.value.len() as u64;
                }
            }
            _ => {}
        }
        events += 1;
        buf.clear();
    }
    println!("events={events} text_bytes={text_bytes}");
    Ok(())
}
