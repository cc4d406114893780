//! The engine's media socket: batched receive (`recvmmsg`, GRO) and batched send (GSO).
//!
//! Each viewer gets every packet of a frame at once, and those packets are the same size
//! except the last fragment of each NAL unit (`cascade_protocol::rtp_payload`). Consecutive
//! datagrams to one destination are therefore coalesced and handed to the kernel as one
//! UDP GSO send: one system call and one trip through the IP stack per batch instead of
//! per packet. Where the kernel has no GSO, batches are one datagram long.
//!
//! A shard of the engine ([`MediaSocket::send_only`]) shares the socket to send on and does
//! not register it with its runtime: every registration is one more epoll callback the
//! kernel runs each time a sent datagram's memory is freed (measured: two shards on one
//! core cost 29 % more CPU while each registered the shared socket).

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

/// Datagrams taken per `recvmmsg`.
const RECEIVE_SLOTS: usize = 8;
/// The largest datagram we expect; GRO buffers hold up to the kernel's segment limit of these.
const MAX_DATAGRAM: usize = 1_500;

/// Where the next datagram goes relative to the batch being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batching {
    /// Append it: same destination, same size (or shorter, which then ends the batch).
    Append,
    /// Send what is batched first, then start a new batch with it.
    FlushFirst,
}

/// The batching rule of UDP GSO: every segment has the batch's segment size except the last,
/// which may be shorter; one destination; at most `max_segments`.
pub(crate) fn batching(
    batch: Option<(SocketAddr, usize, usize, bool)>,
    destination: SocketAddr,
    len: usize,
    max_segments: usize,
) -> Batching {
    match batch {
        Some((to, segment, count, closed))
            if to == destination && !closed && len <= segment && count < max_segments =>
        {
            Batching::Append
        }
        _ => Batching::FlushFirst,
    }
}

/// How the socket is read: by this `MediaSocket` (registered with the runtime), or not at
/// all (a shard sends on a socket that the dispatcher reads).
enum Io {
    Read(tokio::net::UdpSocket),
    SendOnly(UdpSocket),
}

/// One UDP socket with batched I/O.
pub(crate) struct MediaSocket {
    io: Io,
    state: UdpSocketState,
    receive: Vec<Vec<u8>>,
    /// The batch being built: contiguous datagrams to `batch_to`.
    batch: Vec<u8>,
    batch_to: Option<SocketAddr>,
    segment: usize,
    segments: usize,
    /// A shorter datagram ended the batch: the next one starts a new batch.
    closed: bool,
    max_segments: usize,
}

/// What one flush did, for the caller's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    pub failed: u64,
}

impl Sent {
    pub(crate) fn add(&mut self, other: Sent) {
        self.datagrams += other.datagrams;
        self.bytes += other.bytes;
        self.failed += other.failed;
    }
}

impl MediaSocket {
    /// A socket this side reads and sends on (non-blocking; registered with the current
    /// runtime for reading).
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let io = Io::Read(tokio::net::UdpSocket::from_std(socket)?);
        Ok(Self::with(io, state))
    }

    /// A socket this side only sends on: never read, never registered with a runtime.
    pub(crate) fn send_only(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self::with(Io::SendOnly(socket), state))
    }

    fn sock_ref(&self) -> quinn_udp::UdpSockRef<'_> {
        match &self.io {
            Io::Read(socket) => socket.into(),
            Io::SendOnly(socket) => socket.into(),
        }
    }

    fn with(io: Io, state: UdpSocketState) -> Self {
        let slot = MAX_DATAGRAM * state.gro_segments().max(1);
        let max_segments = state.max_gso_segments().max(1);
        tracing::debug!(
            gso_segments = max_segments,
            gro_segments = state.gro_segments(),
            "media socket offloads"
        );
        let slots = match io {
            Io::Read(_) => RECEIVE_SLOTS,
            Io::SendOnly(_) => 0,
        };
        Self {
            io,
            state,
            receive: (0..slots).map(|_| vec![0; slot]).collect(),
            batch: Vec::with_capacity(MAX_DATAGRAM * max_segments),
            batch_to: None,
            segment: 0,
            segments: 0,
            closed: false,
            max_segments,
        }
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.io {
            Io::Read(socket) => socket.local_addr(),
            Io::SendOnly(socket) => socket.local_addr(),
        }
    }

    /// Resolves when datagrams may be waiting; never for a send-only socket.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match &self.io {
            Io::Read(socket) => socket.readable().await,
            Io::SendOnly(_) => std::future::pending().await,
        }
    }

    /// Reads what is queued (up to `RECEIVE_SLOTS` buffers, each possibly several coalesced
    /// datagrams) and hands every datagram to `each`. Returns how many datagrams were read;
    /// 0 when nothing was waiting.
    pub(crate) fn try_receive(&mut self, mut each: impl FnMut(&[u8], SocketAddr)) -> usize {
        let mut meta = [RecvMeta::default(); RECEIVE_SLOTS];
        let mut slices: Vec<IoSliceMut<'_>> = self
            .receive
            .iter_mut()
            .map(|b| IoSliceMut::new(b))
            .collect();
        let Io::Read(socket) = &self.io else {
            return 0;
        };
        let state = &self.state;
        let received = socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut slices, &mut meta)
        });
        let count = match received {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                return 0;
            }
        };
        let mut datagrams = 0;
        for (slice, meta) in slices.iter().zip(&meta).take(count) {
            let stride = meta.stride.max(1);
            for datagram in slice[..meta.len].chunks(stride) {
                datagrams += 1;
                each(datagram, meta.addr);
            }
        }
        datagrams
    }

    /// Queues one datagram; it leaves with the batch it joins (see [`batching`]).
    pub(crate) fn queue(&mut self, destination: SocketAddr, datagram: &[u8]) -> Sent {
        let (sent, Ok(())) = self.queue_with(destination, datagram.len(), |batch| {
            batch.extend_from_slice(datagram);
            Ok::<(), std::convert::Infallible>(())
        });
        sent
    }

    /// Queues the `len`-byte datagram that `write` appends to the batch: written in place,
    /// with no copy of its own (the fast path seals its packets there). A `write` that fails
    /// must leave the batch as it found it; nothing is queued then.
    pub(crate) fn queue_with<E>(
        &mut self,
        destination: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> (Sent, Result<(), E>) {
        let current = self
            .batch_to
            .map(|to| (to, self.segment, self.segments, self.closed));
        let mut sent = Sent::default();
        if batching(current, destination, len, self.max_segments) == Batching::FlushFirst {
            sent = self.flush();
            self.batch_to = Some(destination);
            self.segment = len;
        }
        let written = write(&mut self.batch);
        if written.is_ok() {
            self.closed = len < self.segment;
            self.segments += 1;
        } else if self.segments == 0 {
            self.batch_to = None;
        }
        (sent, written)
    }

    /// Sends the batch being built, if any.
    pub(crate) fn flush(&mut self) -> Sent {
        let Some(destination) = self.batch_to.take() else {
            return Sent::default();
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.batch,
            segment_size: (self.segments > 1).then_some(self.segment),
            src_ip: None,
        };
        let result = self.state.try_send(self.sock_ref(), &transmit);
        let sent = match result {
            Ok(()) => Sent {
                datagrams: self.segments as u64,
                bytes: self.batch.len() as u64,
                failed: 0,
            },
            Err(e) => {
                tracing::trace!(error = %e, %destination, "UDP send failed");
                Sent {
                    failed: self.segments as u64,
                    ..Sent::default()
                }
            }
        };
        self.batch.clear();
        self.segments = 0;
        self.closed = false;
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_destination_share_a_batch() {
        let batch = Some((addr(1), 1_200, 3, false));
        assert_eq!(batching(batch, addr(1), 1_200, 64), Batching::Append);
    }

    #[test]
    fn a_shorter_datagram_joins_and_closes_the_batch() {
        assert_eq!(
            batching(Some((addr(1), 1_200, 3, false)), addr(1), 700, 64),
            Batching::Append
        );
        assert_eq!(
            batching(Some((addr(1), 1_200, 4, true)), addr(1), 1_200, 64),
            Batching::FlushFirst
        );
    }

    #[test]
    fn a_longer_datagram_another_destination_or_a_full_batch_starts_a_new_one() {
        let batch = Some((addr(1), 1_000, 3, false));
        assert_eq!(batching(batch, addr(1), 1_001, 64), Batching::FlushFirst);
        assert_eq!(batching(batch, addr(2), 1_000, 64), Batching::FlushFirst);
        assert_eq!(
            batching(Some((addr(1), 1_000, 64, false)), addr(1), 1_000, 64),
            Batching::FlushFirst
        );
        assert_eq!(batching(None, addr(1), 1_000, 64), Batching::FlushFirst);
    }

    #[tokio::test]
    async fn batched_datagrams_arrive_separately_and_in_order() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let mut socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let datagrams: Vec<Vec<u8>> = [1_200, 1_200, 1_200, 500, 1_200, 30]
            .iter()
            .enumerate()
            .map(|(i, &len)| vec![i as u8; len])
            .collect();
        let mut sent = 0;
        for d in &datagrams {
            sent += socket.queue(to, d).datagrams;
        }
        sent += socket.flush().datagrams;
        assert_eq!(sent, datagrams.len() as u64);
        let mut buf = [0u8; 2_000];
        for d in &datagrams {
            let (len, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(from, socket.local_addr().unwrap());
            assert_eq!(&buf[..len], &d[..]);
        }
    }
}
