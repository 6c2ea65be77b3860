//! The XML wire format: a streaming reader over quick-xml that yields the envelope header
//! and then one message at a time, with line and column positions, enforcing limits and
//! refusing DOCTYPE/entity declarations. No business rules and no I/O beyond the reader.

/// Limits that keep hostile input in bounded memory and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_file_bytes: u64,
    /// Deepest accepted element nesting.
    pub max_depth: u32,
    /// Longest accepted text node or attribute value, in bytes.
    pub max_text_bytes: u64,
    /// Most messages in one feed.
    pub max_messages: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            max_depth: 32,
            max_text_bytes: 64 * 1024,
            max_messages: 5_000_000,
        }
    }
}
