//! The engine's media socket: batched receive (`recvmmsg`, GRO) and batched send (GSO
//! runs, several at a time with `sendmmsg`).
//!
//! Each viewer gets every packet of a frame at once, and those packets are the same size
//! except the last fragment of each NAL unit (`cascade_protocol::rtp_payload`). Consecutive
//! datagrams to one destination are therefore coalesced into one UDP GSO run: one trip
//! through the IP stack per run instead of per packet. Where the kernel has no GSO, runs
//! are one datagram long. Runs to different viewers (a frame's fan-out, every viewer's
//! audio packet) wait and leave together, up to [`SEND_RUNS`] in one `sendmmsg` call;
//! the driver sends what waits at the end of every turn of its loop ([`MediaSocket::flush`]).
//!
//! A shard of the engine ([`MediaSocket::send_only`]) shares the socket to send on and does
//! not register it with its runtime: every registration is one more epoll callback the
//! kernel runs each time a sent datagram's memory is freed (measured: two shards on one
//! core cost 29 % more CPU while each registered the shared socket).
//!
//! The side that reads registers for readability only. Nothing here waits to write (a full
//! send buffer drops, see [`MediaSocket::flush`]), and a registration that also asks for
//! writability is woken by every freed datagram: with shards on two cores, the dispatcher
//! was woken on the other core for each datagram the shards sent (a context switch and an
//! inter-processor interrupt each, a quarter of the node's time in a KVM guest).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

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
    Read(AsyncFd<UdpSocket>),
    SendOnly(UdpSocket),
}

/// Runs of datagrams sent by one `sendmmsg`.
pub(crate) const SEND_RUNS: usize = 64;

/// One GSO run waiting to be sent: `segments` datagrams of `segment` bytes (the last may be
/// shorter) at `start..start + len` of the send buffer, to one destination.
#[derive(Debug, Clone, Copy)]
struct Run {
    to: SocketAddr,
    start: usize,
    len: usize,
    segment: usize,
    segments: usize,
    /// A shorter datagram ended the run: the next one starts a new run.
    closed: bool,
}

/// One UDP socket with batched I/O.
pub(crate) struct MediaSocket {
    io: Io,
    state: UdpSocketState,
    receive: Vec<Vec<u8>>,
    /// The runs waiting to be sent, the last one still open, and their bytes back to back.
    runs: Vec<Run>,
    buffer: Vec<u8>,
    /// The socket is IPv6: IPv4 destinations are written as IPv4-mapped addresses.
    v6: bool,
    max_segments: usize,
    /// Runs per `sendmmsg`, 1..=`SEND_RUNS`.
    send_batch: usize,
    headers: SendHeaders,
}

/// What was queued or sent, for the caller's counters.
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
    /// runtime for reading only).
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let v6 = socket.local_addr()?.is_ipv6();
        // tokio's `UdpSocket` always registers for writability too; `AsyncFd` lets us choose.
        // Its constructor is deprecated because a type whose `as_raw_fd` changed or closed
        // its descriptor would be unsound; a `std::net::UdpSocket` owns its descriptor for its
        // whole life. The replacement is an `unsafe fn`, which the workspace forbids.
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(socket, Interest::READABLE);
        let io = Io::Read(registered?);
        Ok(Self::with(io, state, v6))
    }

    /// A socket this side only sends on: never read, never registered with a runtime.
    pub(crate) fn send_only(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let v6 = socket.local_addr()?.is_ipv6();
        Ok(Self::with(Io::SendOnly(socket), state, v6))
    }

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.io {
            Io::Read(socket) => socket.get_ref().as_raw_fd(),
            Io::SendOnly(socket) => socket.as_raw_fd(),
        }
    }

    fn with(io: Io, state: UdpSocketState, v6: bool) -> Self {
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
            runs: Vec::with_capacity(SEND_RUNS),
            buffer: Vec::new(),
            v6,
            max_segments,
            send_batch: SEND_RUNS,
            headers: SendHeaders::new(),
        }
    }

    /// Sets how many runs one `sendmmsg` takes (clamped to 1..=`SEND_RUNS`).
    pub(crate) fn set_send_batch(&mut self, runs: usize) {
        self.send_batch = runs.clamp(1, SEND_RUNS);
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.io {
            Io::Read(socket) => socket.get_ref().local_addr(),
            Io::SendOnly(socket) => socket.local_addr(),
        }
    }

    /// Resolves when datagrams may be waiting; never for a send-only socket. The readiness
    /// stays until [`MediaSocket::try_receive`] finds nothing.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match &self.io {
            Io::Read(socket) => socket
                .readable()
                .await
                .map(|mut ready| ready.retain_ready()),
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
        // Finding nothing clears the readiness, so that the next `readable` waits.
        let received = socket.try_io(Interest::READABLE, |socket| {
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

    /// Queues one datagram; it leaves with the run it joins (see [`batching`]).
    pub(crate) fn queue(&mut self, destination: SocketAddr, datagram: &[u8]) -> Sent {
        let (sent, Ok(())) = self.queue_with(destination, datagram.len(), |batch| {
            batch.extend_from_slice(datagram);
            Ok::<(), std::convert::Infallible>(())
        });
        sent
    }

    /// Queues the `len`-byte datagram that `write` appends to the send buffer: written in
    /// place, with no copy of its own (the fast path seals its packets there). A `write`
    /// that fails must leave the buffer as it found it; nothing is queued then. Returns the
    /// datagram as queued (send errors are counted when the runs leave).
    pub(crate) fn queue_with<E>(
        &mut self,
        destination: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> (Sent, Result<(), E>) {
        let current = self
            .runs
            .last()
            .map(|run| (run.to, run.segment, run.segments, run.closed));
        let append = batching(current, destination, len, self.max_segments) == Batching::Append;
        if !append && self.runs.len() >= self.send_batch {
            self.flush();
        }
        let written = write(&mut self.buffer);
        if written.is_err() {
            return (Sent::default(), written);
        }
        match self.runs.last_mut() {
            Some(run) if append => {
                run.closed = len < run.segment;
                run.segments += 1;
                run.len += len;
            }
            _ => self.runs.push(Run {
                to: destination,
                start: self.buffer.len() - len,
                len,
                segment: len,
                segments: 1,
                closed: false,
            }),
        }
        let sent = Sent {
            datagrams: 1,
            bytes: len as u64,
            failed: 0,
        };
        (sent, written)
    }

    /// Sends every run waiting, up to `send_batch` per system call. Returns the datagrams that
    /// could not be sent (also counted in `cascade_udp_send_errors_total`).
    pub(crate) fn flush(&mut self) -> u64 {
        let mut failed = 0;
        let mut at = 0;
        while at < self.runs.len() {
            let fd = self.fd();
            let runs = &self.runs[at..];
            match send_runs(
                fd,
                &self.buffer,
                runs,
                self.send_batch,
                self.v6,
                &mut self.headers,
            ) {
                Ok(0) => {
                    // Not expected of a non-empty call; counted, not retried forever.
                    failed += self.runs[at].segments as u64;
                    at += 1;
                }
                Ok(sent) => at += sent,
                Err(e) => {
                    let run = self.runs[at];
                    if e.raw_os_error() == Some(nix::libc::EIO) && self.max_segments > 1 {
                        // A device that cannot segment (quinn-udp falls back the same way).
                        tracing::warn!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one from now on");
                        self.max_segments = 1;
                    }
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The socket buffer is full: what waits is dropped, as a full
                        // router queue would.
                        failed += self.runs[at..]
                            .iter()
                            .map(|r| r.segments as u64)
                            .sum::<u64>();
                        tracing::trace!(error = %e, runs = self.runs.len() - at, "UDP send buffer full");
                        break;
                    }
                    tracing::trace!(error = %e, destination = %run.to, "UDP send failed");
                    failed += run.segments as u64;
                    at += 1;
                }
            }
        }
        self.runs.clear();
        self.buffer.clear();
        if failed > 0 {
            metrics::counter!("cascade_udp_send_errors_total").increment(failed);
        }
        failed
    }
}

/// The runs at the head of `runs` that one `sendmmsg` can take, and the GSO segment size
/// they share (`None`: every run is one datagram, no control message). nix's `sendmmsg`
/// gives every message the same control messages, so runs go together while one segment
/// size fits them all: several-datagram runs cut at exactly that size, single datagrams no
/// longer than it (the kernel sends a datagram shorter than the segment size whole).
fn compatible_runs(runs: &[Run], limit: usize) -> (usize, Option<u16>) {
    let mut segment: Option<usize> = None;
    let mut longest_single = 0;
    for (count, run) in runs.iter().take(limit).enumerate() {
        if run.segments > 1 {
            match segment {
                None if longest_single <= run.segment => segment = Some(run.segment),
                Some(s) if s == run.segment => {}
                _ => return (count, segment.map(|s| s as u16)),
            }
        } else if segment.is_some_and(|s| run.len > s) {
            return (count, segment.map(|s| s as u16));
        } else {
            longest_single = longest_single.max(run.len);
        }
    }
    (runs.len().min(limit), segment.map(|s| s as u16))
}

/// Preallocated `mmsghdr`s for `sendmmsg`: with room for one `UDP_SEGMENT` control message
/// each, and without (a zeroed control buffer would be refused).
struct SendHeaders {
    segmented: MultiHeaders<SockaddrStorage>,
    whole: MultiHeaders<SockaddrStorage>,
    addresses: Vec<Option<SockaddrStorage>>,
}

impl SendHeaders {
    fn new() -> Self {
        SendHeaders {
            segmented: MultiHeaders::preallocate(SEND_RUNS, Some(nix::cmsg_space!(u16))),
            whole: MultiHeaders::preallocate(SEND_RUNS, None),
            addresses: Vec::with_capacity(SEND_RUNS),
        }
    }
}

/// Hands the kernel the first runs of `runs` that can go together (at most `limit`) in
/// one `sendmmsg`. Returns how many runs went; an error is the first run's.
fn send_runs(
    fd: std::os::fd::RawFd,
    buffer: &[u8],
    runs: &[Run],
    limit: usize,
    v6: bool,
    headers: &mut SendHeaders,
) -> io::Result<usize> {
    let (count, segment) = compatible_runs(runs, limit.min(SEND_RUNS));
    headers.addresses.clear();
    headers.addresses.extend(runs[..count].iter().map(|run| {
        let to = match (run.to, v6) {
            (SocketAddr::V4(v4), true) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            (to, _) => to,
        };
        Some(SockaddrStorage::from(to))
    }));
    let slices: [[IoSlice<'_>; 1]; SEND_RUNS] = std::array::from_fn(|index| {
        [IoSlice::new(
            runs.get(index)
                .filter(|_| index < count)
                .map_or(&[][..], |run| &buffer[run.start..run.start + run.len]),
        )]
    });
    // Counting the results reads each sent message's header back (what the kernel wrote
    // in it): how many went, when the socket buffer filled part-way.
    let result = match segment {
        Some(segment) => {
            let control = [ControlMessage::UdpGsoSegments(&segment)];
            sendmmsg(
                fd,
                &mut headers.segmented,
                &slices[..count],
                &headers.addresses,
                control,
                MsgFlags::empty(),
            )
            .map(Iterator::count)
        }
        None => sendmmsg(
            fd,
            &mut headers.whole,
            &slices[..count],
            &headers.addresses,
            [],
            MsgFlags::empty(),
        )
        .map(Iterator::count),
    };
    result.map_err(io::Error::from)
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
        for d in &datagrams {
            socket.queue(to, d);
        }
        assert_eq!(socket.flush(), 0, "nothing failed");
        let mut buf = [0u8; 2_000];
        for d in &datagrams {
            let (len, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(from, socket.local_addr().unwrap());
            assert_eq!(&buf[..len], &d[..]);
        }
    }

    fn run(len: usize, segment: usize, segments: usize) -> Run {
        Run {
            to: addr(1),
            start: 0,
            len,
            segment,
            segments,
            closed: false,
        }
    }

    #[test]
    fn runs_share_a_sendmmsg_while_one_segment_size_fits_them_all() {
        let video = run(3_000, 1_200, 3);
        let audio = run(180, 180, 1);
        let other_video = run(2_000, 1_000, 2);
        let long_single = run(1_300, 1_300, 1);
        // (runs waiting, runs per call) -> (runs in the first call, their segment size)
        type Case<'a> = (&'a [Run], usize, (usize, Option<u16>));
        let cases: [Case; 7] = [
            (&[audio, audio, audio], 64, (3, None)),
            (&[audio, video, audio, video], 64, (4, Some(1_200))),
            (&[video, other_video], 64, (1, Some(1_200))),
            (&[video, long_single], 64, (1, Some(1_200))),
            (&[long_single, video], 64, (1, None)),
            (&[audio, audio, audio], 2, (2, None)),
            (&[], 64, (0, None)),
        ];
        for (runs, limit, expected) in cases {
            assert_eq!(compatible_runs(runs, limit), expected, "{runs:?}");
        }
    }

    #[tokio::test]
    async fn runs_to_many_viewers_leave_in_few_system_calls_each_datagram_intact_and_in_order() {
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                r.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                r
            })
            .collect();
        let mut socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        socket.set_send_batch(2);
        // Three frames' worth to each viewer in turn, more runs than one call takes.
        let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); receivers.len()];
        for round in 0..3u8 {
            for (index, receiver) in receivers.iter().enumerate() {
                let to = receiver.local_addr().unwrap();
                for (at, len) in [1_200, 1_200, 400].into_iter().enumerate() {
                    let datagram = vec![round * 16 + index as u8 * 4 + at as u8; len];
                    socket.queue(to, &datagram);
                    expected[index].push(datagram);
                }
            }
        }
        assert_eq!(socket.flush(), 0, "nothing failed");
        let mut buf = [0u8; 2_000];
        for (receiver, expected) in receivers.iter().zip(&expected) {
            for datagram in expected {
                let (len, _) = receiver.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..len], &datagram[..]);
            }
        }
    }
}
