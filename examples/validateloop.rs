//! The validator alone, for the benchmark: streams one feed through
//! `adjustd::validate::Validator` and prints how many messages were valid and invalid.
//! Unlike `adjustd validate` it does not hash the file, draw a progress bar or build a
//! report, so `scripts/bench-validate.sh` can tell the validator's cost from the CLI's.
//! Exits 1 when the feed is rejected or a message is invalid.
//!
//! ```text
//! cargo run --release --example validateloop -- /tmp/feed.xml
//! ```

use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::validate::{ValidatedMessage, Validator};
use anyhow::{Context, bail};

fn main() -> anyhow::Result<ExitCode> {
    let Some(path) = std::env::args().nth(1) else {
        bail!("usage: validateloop FEED.xml");
    };
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let rules = Rules::default();
    let limits = Limits {
        max_file_bytes: u64::MAX,
        max_messages: u64::MAX,
        ..Limits::default()
    };
    let mut validator = Validator::new(BufReader::with_capacity(1 << 16, file), limits, &rules);
    if let Err(problem) = validator.header() {
        println!("rejected: {problem}");
        return Ok(ExitCode::FAILURE);
    }
    let (mut valid, mut invalid) = (0_u64, 0_u64);
    loop {
        match validator.next_message() {
            Ok(None) => break,
            Ok(Some(ValidatedMessage::Valid(_))) => valid += 1,
            Ok(Some(ValidatedMessage::Invalid { problems, .. })) => {
                if let (0, Some(problem)) = (invalid, problems.first()) {
                    println!("first problem: {problem}");
                }
                invalid += 1;
            }
            Err(problem) => {
                println!("rejected after {valid} valid messages: {problem}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!(
        "valid={valid} invalid={invalid} bytes={}",
        validator.bytes_read()
    );
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
