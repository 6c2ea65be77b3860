//! Schema-level checks of a feed: turns the reader's messages into typed
//! [`crate::model::AdjustmentMessage`]s or message-level [`crate::problem::Problem`]s, and
//! reports feed-level problems. Never touches the store or the clock.

use std::io::BufRead;

use crate::feed::Limits;
use crate::model::{AdjustmentMessage, FeedHeader, MessageId};
use crate::problem::Problem;

/// One message of a feed after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatedMessage {
    /// Passed every check that needs no store.
    Valid(AdjustmentMessage),
    /// Failed; the problems say why (at least one error).
    Invalid {
        /// The MessageID, or [`MessageId::FEED`] when it could not be read.
        message_id: MessageId,
        /// What is wrong.
        problems: Vec<Problem>,
    },
}

/// Streams a feed: the header first, then one validated message at a time.
pub struct Validator<R: BufRead> {
    reader: R,
    limits: Limits,
}

impl<R: BufRead> Validator<R> {
    /// Starts reading a feed.
    pub fn new(reader: R, limits: Limits, rules: &crate::engine::Rules) -> Validator<R> {
        let _ = rules;
        Validator { reader, limits }
    }

    /// Reads the envelope up to the first `Message`.
    ///
    /// # Errors
    /// A feed-level problem: the feed is rejected as a whole.
    pub fn header(&mut self) -> Result<FeedHeader, Problem> {
        let _ = (&mut self.reader, self.limits);
        unimplemented!("validate::Validator::header is being written")
    }

    /// The next message, or `None` after the envelope closed and the rest of the file was
    /// checked.
    ///
    /// # Errors
    /// A feed-level problem: the feed is rejected as a whole.
    pub fn next_message(&mut self) -> Result<Option<ValidatedMessage>, Problem> {
        unimplemented!("validate::Validator::next_message is being written")
    }

    /// Bytes consumed so far (for progress bars).
    pub fn bytes_read(&self) -> u64 {
        0
    }
}
