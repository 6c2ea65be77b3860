//! The daemon: event loop over the inbox, retries with backoff, shutdown on signals,
//! metrics and health endpoint. The only module that spawns tasks.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::inbox::InboxConfig;
use crate::pipeline::Context;

/// Resolved daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Inbox settings.
    pub inbox: InboxConfig,
    /// Shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
    /// Health/metrics listener.
    pub http_listen: Option<SocketAddr>,
}

/// Runs until `shutdown` is cancelled.
///
/// # Errors
/// Fatal errors only.
pub async fn run(
    config: DaemonConfig,
    context: Context,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (config, context, shutdown);
    anyhow::bail!("the daemon is being written")
}
