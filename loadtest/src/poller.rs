//! One readiness poll per worker for all its counting viewers.
//!
//! A counting viewer does little per datagram (it reads an RTP header), so waking its task
//! for every datagram made the wake-up the cost: a context switch, tokio's readiness and
//! timer bookkeeping, then a few hundred nanoseconds of work. Here a small thread waits on
//! an epoll set of all the worker's counting sockets (edge-triggered, through mio) and
//! hands the ready ones to the worker in batches at most every [`ROUND_INTERVAL`]; the
//! worker's one driver task then serves, in one round, every socket in the batch and every
//! session whose timeout passed. (The epoll fd is not handed to tokio itself: that needs
//! `AsyncFd::register`, which is `unsafe`, and the workspace forbids unsafe code.)
//!
//! Verified viewers keep their own tasks: their latency is measured per frame arrival, and
//! a round's coalescing would add up to [`ROUND_INTERVAL`] to it. Counted viewers measure
//! no latency; their freezes (> 3 frame intervals, ~100 ms) and join times are late by at
//! most one interval.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::sync::{mpsc, oneshot};

use crate::viewer::{Live, SessionEnd, StopFlag};
use crate::worker::WorkerContext;

/// The shortest time between two rounds.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(2);
/// Readiness events read per `epoll_wait`.
const EVENTS_PER_POLL: usize = 1_024;
/// The poll thread looks at least this often whether its worker is gone.
const IDLE_ROUND: Duration = Duration::from_millis(100);

/// The sessions a worker's shared poll drives.
pub struct SharedPoller {
    registry: Registry,
    /// Batches of ready slots from the poll thread, until [`SharedPoller::run`] takes them.
    ready: RefCell<Option<mpsc::UnboundedReceiver<Vec<usize>>>>,
    slots: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    /// When each slot next needs a round without readiness (peer timeout or media/join
    /// deadline); kept apart from the entries so that finding the earliest stays a scan
    /// of a small array.
    deadlines: Vec<Instant>,
    free: Vec<usize>,
}

struct Entry {
    live: Live,
    /// Where the session's end goes, once, to the viewer's task.
    ended: Option<oneshot::Sender<SessionEnd>>,
    raw_fd: RawFd,
}

impl SharedPoller {
    /// Creates the epoll set and starts its thread, which ends once the poller is dropped.
    pub fn new(name: &str) -> std::io::Result<SharedPoller> {
        let mut poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let (batches, ready) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("{name}-poll"))
            .spawn(move || {
                let mut events = Events::with_capacity(EVENTS_PER_POLL);
                while !batches.is_closed() {
                    if let Err(e) = poll.poll(&mut events, Some(IDLE_ROUND)) {
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(error = %e, "shared poll failed");
                        return;
                    }
                    let batch: Vec<usize> = events.iter().map(|event| event.token().0).collect();
                    if !batch.is_empty() {
                        if batches.send(batch).is_err() {
                            return;
                        }
                        // Let more sockets become ready before the next batch.
                        std::thread::sleep(ROUND_INTERVAL);
                    }
                }
            })?;
        Ok(SharedPoller {
            registry,
            ready: RefCell::new(Some(ready)),
            slots: RefCell::new(Slots::default()),
        })
    }

    /// Drives `live` from the shared poll until the session ends or `stop` is asked for,
    /// then gives it back with how it ended.
    pub async fn drive(&self, mut live: Live, stop: &StopFlag) -> (Live, SessionEnd) {
        let raw_fd = match live.peer.detach_socket() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot move a socket to the shared poll");
                return (
                    live,
                    SessionEnd::Failed(crate::figures::FailureReason::Unreachable),
                );
            }
        };
        let (ended, end) = oneshot::channel();
        let slot = {
            let mut slots = self.slots.borrow_mut();
            let slot = slots.free.pop().unwrap_or_else(|| {
                slots.entries.push(None);
                slots.deadlines.push(Instant::now());
                slots.entries.len() - 1
            });
            // Registering an fd that is already readable reports it once: nothing queued
            // before the hand-over is missed.
            if let Err(e) =
                self.registry
                    .register(&mut SourceFd(&raw_fd), Token(slot), Interest::READABLE)
            {
                slots.free.push(slot);
                drop(slots);
                tracing::warn!(error = %e, "cannot register a socket with the shared poll");
                return (
                    live,
                    SessionEnd::Failed(crate::figures::FailureReason::Unreachable),
                );
            }
            slots.deadlines[slot] = Instant::now();
            slots.entries[slot] = Some(Entry {
                live,
                ended: Some(ended),
                raw_fd,
            });
            slot
        };
        let end = tokio::select! {
            biased;
            _ = stop.notify.notified() => SessionEnd::Stopped,
            end = end => end.unwrap_or(SessionEnd::Stopped),
        };
        let entry = {
            let mut slots = self.slots.borrow_mut();
            let entry = slots.entries[slot]
                .take()
                .expect("a driven session stays in its slot until its task takes it");
            slots.free.push(slot);
            entry
        };
        let _ = self.registry.deregister(&mut SourceFd(&entry.raw_fd));
        (entry.live, end)
    }

    /// The worker's task for its counting viewers: runs rounds until the worker ends.
    pub async fn run(&self, ctx: &WorkerContext) {
        let Some(mut ready) = self.ready.borrow_mut().take() else {
            return; // already running
        };
        let mut readable = Vec::new();
        loop {
            let now = Instant::now();
            // Timeouts are served in the rounds readiness brings anyway, unless they come
            // due between them.
            let next = self.earliest_deadline().max(now + ROUND_INTERVAL);
            tokio::select! {
                biased;
                batch = ready.recv() => match batch {
                    Some(batch) => readable.extend(batch),
                    None => return,
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            while let Ok(batch) = ready.try_recv() {
                readable.extend(batch);
            }
            self.round(ctx, &readable, Instant::now());
            readable.clear();
        }
    }

    /// Serves the readable slots, then every slot whose deadline passed.
    fn round(&self, ctx: &WorkerContext, readable: &[usize], now: Instant) {
        let mut slots = self.slots.borrow_mut();
        for &slot in readable {
            slots.serve(ctx, slot, true, now);
        }
        for slot in 0..slots.deadlines.len() {
            if slots.deadlines[slot] <= now {
                slots.serve(ctx, slot, false, now);
            }
        }
    }

    fn earliest_deadline(&self) -> Instant {
        let slots = self.slots.borrow();
        slots
            .deadlines
            .iter()
            .zip(&slots.entries)
            .filter(|(_, entry)| entry.as_ref().is_some_and(|e| e.ended.is_some()))
            .map(|(deadline, _)| *deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_ROUND)
    }
}

impl Slots {
    fn serve(&mut self, ctx: &WorkerContext, slot: usize, readable: bool, now: Instant) {
        let Some(entry) = self.entries.get_mut(slot).and_then(Option::as_mut) else {
            return; // left between the event and this round
        };
        if entry.ended.is_none() {
            return; // ended; its task takes it back
        }
        match entry.live.receive_and_step(ctx, readable, now) {
            Ok(check_at) => {
                self.deadlines[slot] = check_at.min(entry.live.peer.next_timeout());
            }
            Err(end) => {
                if let Some(ended) = entry.ended.take() {
                    let _ = ended.send(end);
                }
                self.deadlines[slot] = now + Duration::from_secs(3_600);
            }
        }
    }
}
