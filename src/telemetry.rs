//! Logging setup (text or JSON) with tracing.
