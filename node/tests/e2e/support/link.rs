//! A network link between a WebRTC client and a node, emulated in userspace: datagrams from
//! the node to the client go through a bottleneck (a rate, and a queue that holds at most
//! `MAX_QUEUE_DELAY` before it drops, like `tc tbf`), client to node passes as it is. The
//! client is pointed at the link by rewriting the node's answer (its UDP candidate becomes
//! the link's address); ICE, DTLS and SRTP stay end to end, untouched. It can also lose
//! one in every N media packets of one payload type on the way down: SRTP, never RTCP or handshakes, and never
//! a frame's last packet (the marker bit): str0m writes one of those a second (the fast
//! path's Sender Report anchor), and str0m resends only to a viewer that negotiated RTX,
//! which the test's webrtc-rs viewer does not. A lost packet's retransmission passes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The most a datagram waits in the bottleneck's queue; beyond it, it is dropped.
const MAX_QUEUE_DELAY: Duration = Duration::from_millis(200);

pub struct ShapedLink {
    /// Where the client sends (the node's candidate, as the client sees it).
    pub addr: SocketAddr,
    /// The node's UDP candidate behind the link.
    pub node: SocketAddr,
    rate_kbps: Arc<AtomicU64>,
    lose_every: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ShapedLink {
    /// A link on `ip` to the node's UDP media address `node`, unlimited at first.
    pub async fn start(ip: &str, node: SocketAddr) -> ShapedLink {
        let client_side = UdpSocket::bind((ip, 0)).await.unwrap();
        let node_side = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = client_side.local_addr().unwrap();
        let rate_kbps = Arc::new(AtomicU64::new(0));
        let rate = Arc::clone(&rate_kbps);
        let lose_every = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let (every, lost_count) = (Arc::clone(&lose_every), Arc::clone(&lost));
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
            let mut free_at = Instant::now();
            let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            let mut media_packets = 0u64;
            // Sequence numbers lost: their retransmission passes (a second loss of the same
            // packet would test the peer's NACK retries, not the node).
            let mut lost_seqs = std::collections::HashSet::new();
            loop {
                let head = queue.front().map(|(at, _)| *at);
                tokio::select! {
                    received = client_side.recv_from(&mut up) => {
                        let Ok((len, from)) = received else { return };
                        client = Some(from);
                        let _ = node_side.send_to(&up[..len], node).await;
                    }
                    received = node_side.recv_from(&mut down) => {
                        let Ok((len, _)) = received else { return };
                        let is_srtp = len > 12 && down[0] >> 6 == 2 && !(192..=223).contains(&down[1]);
                        let is_srtp = is_srtp && down[1] & 0x80 == 0;
                        let setting = every.load(Ordering::Relaxed);
                        let (n, pt) = (setting >> 8, (setting & 0x7f) as u8);
                        let is_srtp = is_srtp && down[1] & 0x7f == pt;
                        let seq = u16::from_be_bytes([down[2], down[3]]);
                        if is_srtp && n > 0 && !lost_seqs.contains(&seq) {
                            media_packets += 1;
                            if media_packets.is_multiple_of(n) {
                                lost_seqs.insert(seq);
                                lost_count.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                        let now = Instant::now();
                        let kbps = rate.load(Ordering::Relaxed);
                        let at = match (len as u64 * 8 * 1000).checked_div(kbps) {
                            None => now,
                            Some(micros) => {
                                let start = free_at.max(now);
                                if start.duration_since(now) > MAX_QUEUE_DELAY {
                                    continue; // the queue is full: dropped
                                }
                                free_at = start + Duration::from_micros(micros);
                                free_at
                            }
                        };
                        queue.push_back((at, down[..len].to_vec()));
                    }
                    _ = tokio::time::sleep_until(head.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if head.is_some() => {}
                }
                let now = Instant::now();
                while queue.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, datagram) = queue.pop_front().unwrap();
                    if let Some(client) = client {
                        let _ = client_side.send_to(&datagram, client).await;
                    }
                }
            }
        });
        ShapedLink {
            addr,
            node,
            rate_kbps,
            lose_every,
            lost,
            task,
        }
    }

    /// Loses one in every `n` media packets of payload type `pt` from the node (0: none).
    pub fn lose_every(&self, n: u64, pt: u8) {
        self.lose_every
            .store(n << 8 | u64::from(pt & 0x7f), Ordering::Relaxed);
    }

    /// How many media packets the link lost.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Caps the node → client rate (0: unlimited).
    pub fn set_rate_kbps(&self, kbps: u64) {
        self.rate_kbps.store(kbps, Ordering::Relaxed);
    }

    /// The node's answer as the client behind this link sees it: media to the link, and no
    /// TCP candidate that would go around it.
    pub fn rewrite_answer(&self, answer: &str) -> String {
        let node = format!("{} {}", self.node.ip(), self.node.port());
        let link = format!("{} {}", self.addr.ip(), self.addr.port());
        answer
            .lines()
            .filter(|l| !(l.starts_with("a=candidate") && l.to_ascii_lowercase().contains(" tcp ")))
            .map(|l| {
                if l.starts_with("a=candidate") {
                    l.replace(&node, &link)
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
