//! ICE-TCP (RFC 6544) for clients whose network blocks UDP: a passive candidate on a TCP port.
//!
//! The listener accepts connections and gives each a reader task that cuts the byte stream
//! into datagrams (RFC 4571, [`cascade_protocol::ice_tcp`]) and hands them to the engine,
//! which treats them like UDP datagrams from that peer address. Writing stays in the engine:
//! [`TcpPeers`] frames a session's outgoing datagrams into the connection's buffer and
//! writes it without waiting; what the kernel does not take now is retried on the engine's
//! next turn. A connection whose buffer is full loses whole datagrams, as a congested UDP
//! path would; NACK and keyframe requests repair that as they do for UDP.
//!
//! A connection is claimed by the first datagram routed to a session (a STUN check with a
//! session's ufrag); one that sends anything else first, or nothing for
//! [`UNCLAIMED_LIFETIME`], is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cascade_protocol::ice_tcp::{frame_into, next_frame};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use super::udp::Sent;

/// Bytes buffered towards one connection beyond what the kernel took; past it datagrams are
/// dropped (about a second of a 4 Mbit/s stream).
const MAX_PENDING: usize = 512 * 1024;
/// A connection not claimed by a session this long after it opened is closed.
pub(crate) const UNCLAIMED_LIFETIME: Duration = Duration::from_secs(10);
/// Datagrams from all TCP connections queued towards the engine; a full queue slows the
/// readers down (TCP flow control), it never drops.
pub(crate) const INBOUND_QUEUE: usize = 4096;
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;

/// What the TCP side tells the engine.
pub(crate) enum TcpEvent {
    Opened {
        peer: SocketAddr,
        writer: OwnedWriteHalf,
        /// Dropping it ends the reader, which closes the connection.
        close: oneshot::Sender<()>,
    },
    Datagram {
        peer: SocketAddr,
        bytes: Bytes,
    },
    Closed {
        peer: SocketAddr,
    },
}

/// Accepts connections for as long as the engine listens.
pub(crate) fn spawn_listener(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = crate::listen::accept(&listener, "an ICE-TCP connection").await;
            // Media is latency-bound: never hold a small datagram back to fill a segment.
            let _ = stream.set_nodelay(true);
            tokio::spawn(read_connection(stream, peer, events.clone()));
        }
    });
}

/// Announces a connection to the engine, then hands it every datagram read, until the peer
/// or the engine closes it. Announcing from here keeps `Opened` ahead of the datagrams.
async fn read_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
) {
    let (mut read, writer) = stream.into_split();
    let (close, mut closed) = oneshot::channel();
    if events
        .send(TcpEvent::Opened {
            peer,
            writer,
            close,
        })
        .await
        .is_err()
    {
        return; // the engine stopped
    }
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buffer.reserve(READ_CHUNK);
        tokio::select! {
            // The engine dropped the connection: leaving drops the read half too.
            _ = &mut closed => return,
            read = read.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
        while let Some(bytes) = next_frame(&mut buffer) {
            if events
                .send(TcpEvent::Datagram { peer, bytes })
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = events.send(TcpEvent::Closed { peer }).await;
}

struct Connection {
    writer: OwnedWriteHalf,
    /// Held, never sent: dropping the connection drops it, which stops its reader.
    _close: oneshot::Sender<()>,
    /// Framed datagrams the kernel has not taken yet.
    pending: Vec<u8>,
    opened: Instant,
    claimed: bool,
}

/// The engine's open TCP connections, by peer address.
#[derive(Default)]
pub(crate) struct TcpPeers {
    connections: HashMap<SocketAddr, Connection>,
    /// Connections with bytes left after a write.
    backlogged: Vec<SocketAddr>,
}

impl TcpPeers {
    pub(crate) fn open(
        &mut self,
        peer: SocketAddr,
        writer: OwnedWriteHalf,
        close: oneshot::Sender<()>,
    ) {
        metrics::gauge!("cascade_ice_tcp_connections").increment(1.0);
        self.connections.insert(
            peer,
            Connection {
                writer,
                _close: close,
                pending: Vec::new(),
                opened: Instant::now(),
                claimed: false,
            },
        );
    }

    pub(crate) fn close(&mut self, peer: SocketAddr) {
        if self.connections.remove(&peer).is_some() {
            metrics::gauge!("cascade_ice_tcp_connections").decrement(1.0);
        }
    }

    /// Marks a connection as a session's: it is no longer subject to the unclaimed limit.
    pub(crate) fn claim(&mut self, peer: SocketAddr) {
        if let Some(connection) = self.connections.get_mut(&peer) {
            connection.claimed = true;
        }
    }

    pub(crate) fn is_claimed(&self, peer: SocketAddr) -> bool {
        self.connections.get(&peer).is_some_and(|c| c.claimed)
    }

    /// Frames a datagram into the connection's buffer; [`TcpPeers::flush`] writes it.
    pub(crate) fn queue(&mut self, peer: SocketAddr, datagram: &[u8]) -> Sent {
        let Some(connection) = self.connections.get_mut(&peer) else {
            // The peer closed it; ICE consent will end the session.
            return Sent {
                failed: 1,
                ..Sent::default()
            };
        };
        if connection.pending.len() + datagram.len() > MAX_PENDING
            || !frame_into(&mut connection.pending, datagram)
        {
            metrics::counter!("cascade_ice_tcp_dropped_total", "reason" => "buffer_full")
                .increment(1);
            return Sent {
                failed: 1,
                ..Sent::default()
            };
        }
        Sent {
            datagrams: 1,
            bytes: datagram.len() as u64,
            failed: 0,
        }
    }

    /// Writes what one connection has buffered, as far as the kernel takes it now.
    pub(crate) fn flush(&mut self, peer: SocketAddr) {
        let Some(connection) = self.connections.get_mut(&peer) else {
            return;
        };
        match write_pending(connection) {
            Ok(true) => {}
            Ok(false) => {
                if !self.backlogged.contains(&peer) {
                    self.backlogged.push(peer);
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "ICE-TCP write failed; closing");
                self.close(peer);
            }
        }
    }

    /// Retries the connections the kernel did not take everything from. Called on every
    /// turn of the engine.
    pub(crate) fn retry_backlogged(&mut self) {
        if self.backlogged.is_empty() {
            return;
        }
        let mut index = 0;
        while index < self.backlogged.len() {
            let peer = self.backlogged[index];
            let done = match self.connections.get_mut(&peer) {
                None => true,
                Some(connection) => match write_pending(connection) {
                    Ok(done) => done,
                    Err(_) => {
                        self.close(peer);
                        true
                    }
                },
            };
            if done {
                self.backlogged.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// Closes connections no session claimed within [`UNCLAIMED_LIFETIME`].
    pub(crate) fn close_unclaimed(&mut self, now: Instant) {
        let before = self.connections.len();
        self.connections
            .retain(|_, c| c.claimed || now.duration_since(c.opened) < UNCLAIMED_LIFETIME);
        let closed = before - self.connections.len();
        if closed > 0 {
            metrics::gauge!("cascade_ice_tcp_connections").decrement(closed as f64);
            metrics::counter!("cascade_ice_tcp_dropped_total", "reason" => "unclaimed")
                .increment(closed as u64);
        }
    }
}

/// Writes a connection's pending bytes without waiting. `Ok(true)` once none are left.
fn write_pending(connection: &mut Connection) -> std::io::Result<bool> {
    while !connection.pending.is_empty() {
        match connection.writer.try_write(&connection.pending) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                connection.pending.drain(..written);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
