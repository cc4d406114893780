//! Accepting TCP connections (the HTTPS port, ICE-TCP) without spinning when `accept` fails.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a failing listener waits before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection. A failure (usually out of file descriptors) is logged as `what`
/// cannot be accepted, and retried after a pause instead of at once.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept {what}; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
