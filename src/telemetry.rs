//! Logging setup: one `tracing` subscriber writing to stderr, human-readable text by
//! default or one JSON object per line, filtered by `RUST_LOG` (default `adjustd=info`).
//! Span and field conventions: one span per processed file (`file`), data in fields,
//! lowercase messages without a trailing period.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("adjustd=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
