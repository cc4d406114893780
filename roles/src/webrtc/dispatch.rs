//! Shards of the viewers' engine behind one advertised port.
//!
//! With `--webrtc-threads N` above 1 the viewers' engine runs as N shards, each an
//! [`super::engine`] on its own thread with its own sessions and its own subscriptions to
//! the tracks its viewers watch (one frame hand-off per track per shard, never per packet).
//! Every shard sends on the one media socket (a duplicate of its descriptor: UDP `sendmsg`
//! from several threads needs no lock), so viewers see one address. Only the dispatcher
//! here reads it: a datagram goes to the shard of its source address, and a datagram from an
//! unknown address (a session's first STUN check, or a peer that moved) to the shard of the
//! local ufrag in its STUN USERNAME, registered when the session was placed. Viewers send
//! little (STUN, RTCP), so the hop costs nothing on the fan-out path. ICE-TCP connections
//! are routed the same way by their first datagram.
//!
//! The routing tables are this thread's alone: sessions are registered and forgotten through
//! [`RouteUpdate`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_protocol::stun::binding_request_recipient_ufrag;
use str0m::net::Protocol;
use tokio::sync::mpsc;

use super::tcp::{TcpEvent, UNCLAIMED_LIFETIME};
use super::udp::MediaSocket;

/// Datagrams and connection events queued towards one shard; beyond it they are dropped
/// (counted), as a full socket buffer would.
pub(crate) const SHARD_QUEUE: usize = 8192;
/// Addresses remembered per session, as in the engine.
const MAX_REMOTES: usize = 8;
/// How often connections that never sent a datagram for a session are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A peer's transport address.
pub(crate) type Remote = (Protocol, SocketAddr);

/// What the dispatcher hands a shard.
pub(crate) enum Inbound {
    Datagram { from: Remote, bytes: Bytes },
    Tcp(TcpEvent),
}

/// A change to the routing tables.
pub(crate) enum RouteUpdate {
    /// A session with this local ufrag was placed on `shard`.
    Register { ufrag: String, shard: usize },
    /// The session with this local ufrag ended: forget it and the addresses learned for it.
    Forget { ufrag: String },
}

struct Route {
    shard: usize,
    remotes: Vec<Remote>,
}

/// The routing tables: pure bookkeeping, tested without sockets.
#[derive(Default)]
pub(crate) struct Routes {
    by_addr: HashMap<Remote, usize>,
    by_ufrag: HashMap<String, Route>,
}

impl Routes {
    pub(crate) fn update(&mut self, update: RouteUpdate) {
        match update {
            RouteUpdate::Register { ufrag, shard } => {
                self.by_ufrag.insert(
                    ufrag,
                    Route {
                        shard,
                        remotes: Vec::new(),
                    },
                );
            }
            RouteUpdate::Forget { ufrag } => {
                if let Some(route) = self.by_ufrag.remove(&ufrag) {
                    for remote in route.remotes {
                        if self.by_addr.get(&remote) == Some(&route.shard) {
                            self.by_addr.remove(&remote);
                        }
                    }
                }
            }
        }
    }

    /// The shard a datagram from `from` belongs to: by its address, else by the ufrag its
    /// STUN check names (the address is then remembered for that session).
    pub(crate) fn shard_of(&mut self, from: Remote, datagram: &[u8]) -> Option<usize> {
        if let Some(&shard) = self.by_addr.get(&from) {
            return Some(shard);
        }
        let ufrag = binding_request_recipient_ufrag(datagram)?;
        let route = self.by_ufrag.get_mut(ufrag)?;
        if route.remotes.len() == MAX_REMOTES {
            let oldest = route.remotes.remove(0);
            self.by_addr.remove(&oldest);
        }
        route.remotes.push(from);
        self.by_addr.insert(from, route.shard);
        Some(route.shard)
    }
}

/// Reads the media socket (and the ICE-TCP listener's events) and hands each datagram to
/// its shard, until every shard has stopped.
pub(crate) async fn run(
    mut socket: MediaSocket,
    mut tcp: Option<mpsc::Receiver<TcpEvent>>,
    mut updates: mpsc::UnboundedReceiver<RouteUpdate>,
    shards: Vec<mpsc::Sender<Inbound>>,
) {
    let mut routes = Routes::default();
    // Connections opened and not yet routed (their first datagram names the session).
    let mut pending: HashMap<SocketAddr, (Instant, TcpEvent)> = HashMap::new();
    let mut tcp_routes: HashMap<SocketAddr, usize> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let hand = |shard: usize, inbound: Inbound| match shards[shard].try_send(inbound) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("cascade_udp_dropped_total", "reason" => "shard_queue_full")
                .increment(1);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    loop {
        tokio::select! {
            biased;
            update = updates.recv() => match update {
                Some(update) => routes.update(update),
                None => break,
            },
            readable = socket.readable() => {
                if let Err(e) = readable {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
                let mut stopped = false;
                socket.try_receive(|datagram, source| {
                    let from = (Protocol::Udp, source);
                    match routes.shard_of(from, datagram) {
                        Some(shard) => {
                            let bytes = Bytes::copy_from_slice(datagram);
                            stopped |= !hand(shard, Inbound::Datagram { from, bytes });
                        }
                        None => metrics::counter!("cascade_udp_dropped_total", "reason" => "no_session").increment(1),
                    }
                });
                if stopped {
                    break;
                }
            }
            Some(event) = next_tcp_event(&mut tcp) => match event {
                TcpEvent::Opened { peer, .. } => {
                    pending.insert(peer, (Instant::now(), event));
                }
                TcpEvent::Datagram { peer, bytes } => {
                    if let Some(&shard) = tcp_routes.get(&peer) {
                        hand(shard, Inbound::Tcp(TcpEvent::Datagram { peer, bytes }));
                        continue;
                    }
                    // Its first datagram: a check for one of our sessions, or the
                    // connection is closed (dropping `Opened` drops its close handle).
                    let opened = pending.remove(&peer);
                    let shard = routes.shard_of((Protocol::Tcp, peer), &bytes);
                    tracing::debug!(%peer, routed = ?shard, opened = opened.is_some(), "first datagram of an ICE-TCP connection");
                    if let (Some((_, opened)), Some(shard)) = (opened, shard) {
                        tcp_routes.insert(peer, shard);
                        hand(shard, Inbound::Tcp(opened));
                        hand(shard, Inbound::Tcp(TcpEvent::Datagram { peer, bytes }));
                    }
                }
                TcpEvent::Closed { peer } => {
                    pending.remove(&peer);
                    if let Some(shard) = tcp_routes.remove(&peer) {
                        hand(shard, Inbound::Tcp(TcpEvent::Closed { peer }));
                    }
                }
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                pending.retain(|_, (opened, _)| now.duration_since(*opened) < UNCLAIMED_LIFETIME);
            }
        }
    }
    tracing::info!("WebRTC dispatcher stopped");
}

async fn next_tcp_event(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request whose USERNAME is `recipient:sender` (RFC 8445 §7.2.2).
    fn check(recipient: &str) -> Vec<u8> {
        let username = format!("{recipient}:peer");
        let padded = username.len().div_ceil(4) * 4;
        let mut datagram = vec![0x00, 0x01];
        datagram.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        datagram.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        datagram.extend_from_slice(&[7; 12]);
        datagram.extend_from_slice(&[0x00, 0x06]);
        datagram.extend_from_slice(&(username.len() as u16).to_be_bytes());
        datagram.extend_from_slice(username.as_bytes());
        datagram.resize(20 + 4 + padded, 0);
        datagram
    }

    fn udp(port: u16) -> Remote {
        (Protocol::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_check_routes_its_address_to_the_shard_of_its_ufrag_until_the_session_ends() {
        let mut routes = Routes::default();
        routes.update(RouteUpdate::Register {
            ufrag: "aaaa".into(),
            shard: 1,
        });
        routes.update(RouteUpdate::Register {
            ufrag: "bbbb".into(),
            shard: 0,
        });
        let dtls = [22u8, 254, 253, 0, 0];
        assert_eq!(routes.shard_of(udp(1), &dtls), None, "unknown address");
        assert_eq!(routes.shard_of(udp(1), &check("aaaa")), Some(1));
        assert_eq!(routes.shard_of(udp(1), &dtls), Some(1), "learned");
        assert_eq!(routes.shard_of(udp(2), &check("bbbb")), Some(0));
        assert_eq!(routes.shard_of(udp(3), &check("cccc")), None, "no session");
        routes.update(RouteUpdate::Forget {
            ufrag: "aaaa".into(),
        });
        assert_eq!(routes.shard_of(udp(1), &dtls), None, "forgotten");
        assert_eq!(routes.shard_of(udp(2), &dtls), Some(0), "the other stays");
    }

    #[test]
    fn a_session_heard_from_many_addresses_keeps_its_newest() {
        let mut routes = Routes::default();
        routes.update(RouteUpdate::Register {
            ufrag: "aaaa".into(),
            shard: 1,
        });
        for port in 0..(MAX_REMOTES as u16 + 2) {
            routes.shard_of(udp(port), &check("aaaa"));
        }
        assert_eq!(routes.by_addr.len(), MAX_REMOTES);
        assert_eq!(
            routes.shard_of(udp(0), &[22u8]),
            None,
            "the oldest forgotten"
        );
    }
}
