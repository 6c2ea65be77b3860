//! Logging setup: one `tracing` subscriber writing to stderr, human-readable text by
//! default or one JSON object per line, filtered by `RUST_LOG` (default `adjustd=info`).
//! Field conventions: one summary event per processed file, which names it in its `file`
//! field; data in fields; lowercase messages without a trailing period. File names and paths come from uploaders,
//! so log fields that carry them go through [`escaped`].

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("adjustd=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are for a human at a terminal; in a file or a journal they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // Already installed (tests, or a second command in one process): keep the first one.
    drop(result);
}

/// `value` for a log field with its control characters (newline, carriage return, ESC, …)
/// written as escapes (`\n`, `\r`, `\u{1b}`): a file name is chosen by whoever uploads it,
/// and must neither start a forged log line nor send escape sequences to an operator's
/// terminal. Everything else is written as it is, so ordinary names read unchanged.
pub fn escaped<T: fmt::Display>(value: T) -> Escaped<T> {
    Escaped(value)
}

/// `text` [`escaped`] and cut to `max_chars` characters (an ellipsis marks a cut), for a
/// log field or a health text that shows an error's description.
pub fn escaped_shortened(text: &str, max_chars: usize) -> String {
    let text = escaped(text).to_string();
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// See [`escaped`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControls(formatter), "{}", self.0)
    }
}

/// Passes text on to a formatter, escaping control characters.
struct EscapeControls<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escaped("a\nFORGED\r\u{1b}[31mb fééd.xml").to_string(),
            "a\\nFORGED\\r\\u{1b}[31mb fééd.xml"
        );
        assert_eq!(escaped("plain name.xml").to_string(), "plain name.xml");
    }
}
