//! Fuzz target: arbitrary bytes through `validate::Validator` (and so `feed::FeedReader`)
//! with default limits, read through a tiny and a normal buffer. It must never panic,
//! must end, must never read past the input, and must report problems of the right
//! scope. Run with `cargo +nightly fuzz run parse_feed` from the repository root; seed it
//! with `tests/data/feeds/*/*.xml`.

#![no_main]

use std::io::BufReader;

use adjustd::engine::Rules;
use adjustd::feed::{self, Limits};
use adjustd::problem::Scope;
use adjustd::validate::{ValidatedMessage, Validator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for capacity in [3, 8192] {
        let mut validator = Validator::new(
            BufReader::with_capacity(capacity, data),
            Limits::default(),
            &Rules::default(),
        );
        if let Err(problem) = validator.header() {
            assert_eq!(problem.code.scope(), Scope::Feed);
            continue;
        }
        // Every message takes at least a few bytes, so this bound is never reached by a
        // validator that makes progress.
        let mut steps = 0usize;
        loop {
            steps += 1;
            assert!(steps <= data.len() + 2, "validator does not make progress");
            match validator.next_message() {
                Ok(None) => break,
                Ok(Some(ValidatedMessage::Valid(_))) => {}
                Ok(Some(ValidatedMessage::Invalid { problems, .. })) => {
                    assert!(!problems.is_empty());
                    assert!(problems.iter().all(|p| p.code.scope() == Scope::Message));
                }
                Err(problem) => {
                    assert_eq!(problem.code.scope(), Scope::Feed);
                    break;
                }
            }
        }
        assert!(validator.bytes_read() <= data.len() as u64);
    }
    let _ = feed::completeness(data, Limits::default());
});
