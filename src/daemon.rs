//! The daemon: event loop over the inbox, retries with backoff, shutdown on signals, metrics and health endpoint. The only module that spawns tasks.
