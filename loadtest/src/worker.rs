//! Worker threads: each runs a single-threaded tokio runtime holding a shard of the viewers,
//! so that one process drives thousands of sessions on every core without sharing state
//! between threads. Figures are kept per worker and merged once at the end; a status snapshot
//! goes to the coordinator every second.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use str0m::crypto::dtls::DtlsCert;
use tokio::sync::mpsc;

use crate::figures::Totals;
use crate::poller::SharedPoller;
use crate::viewer::{self, StopFlag, ViewerSettings};

/// How long leaving viewers get to close and DELETE their sessions at the end of a run.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// What the coordinator asks of a worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Start this many more viewers.
    Start(usize),
    /// Stop this many viewers (the oldest first).
    Stop(usize),
    /// Stop everything and report.
    Finish,
}

/// What a worker tells the coordinator.
#[derive(Debug)]
pub enum WorkerReport {
    Status {
        worker: usize,
        connected: u64,
        failures: u64,
        bytes: u64,
        /// Latency samples since the previous status.
        recent_latency_us: Histogram<u64>,
    },
    Final {
        totals: Box<Totals>,
    },
}

/// Counters read by the status line (single-threaded: `Cell`s).
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub connected: Cell<u64>,
    pub failures: Cell<u64>,
    pub bytes: Cell<u64>,
}

impl LiveCounters {
    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.set(self.bytes.get() + bytes);
    }
}

/// What the viewers of one worker share.
pub struct WorkerContext {
    pub settings: ViewerSettings,
    pub http: reqwest::Client,
    pub certificate: DtlsCert,
    pub totals: RefCell<Totals>,
    pub live: LiveCounters,
    recent_latency: RefCell<Histogram<u64>>,
    /// Verified viewers this worker may still start (sampling mode).
    verify_slots: Cell<usize>,
    /// Drives the counting viewers' sessions (sampling mode).
    pub counting_peers: SharedPoller,
}

impl WorkerContext {
    /// True when the next viewer is to be fully verified.
    pub fn take_verify_slot(&self) -> bool {
        let free = self.verify_slots.get();
        self.verify_slots.set(free.saturating_sub(1));
        free > 0
    }

    /// A verified viewer left: the next viewer to start takes its place.
    pub fn release_verify_slot(&self) {
        self.verify_slots
            .set(self.verify_slots.get().saturating_add(1));
    }

    pub fn record_latency(&self, micros: u64) {
        Totals::record(&mut self.totals.borrow_mut().latency_us, micros);
        Totals::record(&mut self.recent_latency.borrow_mut(), micros);
    }
}

/// Starts worker `index` on its own thread.
pub fn spawn(
    index: usize,
    settings: ViewerSettings,
    certificate: DtlsCert,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    reports: mpsc::UnboundedSender<WorkerReport>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("viewers-{index}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &runtime,
                run(index, settings, certificate, commands, reports),
            );
        })
        .expect("the OS starts a worker thread")
}

async fn run(
    index: usize,
    settings: ViewerSettings,
    certificate: DtlsCert,
    mut commands: mpsc::UnboundedReceiver<WorkerCommand>,
    reports: mpsc::UnboundedSender<WorkerReport>,
) {
    let settings_verify_slots = settings.verified_per_worker.unwrap_or(usize::MAX);
    let ctx = Rc::new(WorkerContext {
        settings,
        http: crate::signaling::client(),
        certificate,
        totals: RefCell::new(Totals::default()),
        live: LiveCounters::default(),
        recent_latency: RefCell::new(Totals::default().latency_us),
        verify_slots: Cell::new(settings_verify_slots),
        counting_peers: SharedPoller::new(&format!("viewers-{index}"))
            .expect("the OS creates an epoll instance and its thread"),
    });
    let driver = {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move { ctx.counting_peers.run(&ctx).await })
    };
    let mut running: VecDeque<(Rc<StopFlag>, tokio::task::JoinHandle<()>)> = VecDeque::new();
    let mut leaving: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(WorkerCommand::Start(count)) => {
                    for _ in 0..count {
                        let stop = Rc::new(StopFlag::default());
                        let task = tokio::task::spawn_local(viewer::run(ctx.clone(), stop.clone()));
                        running.push_back((stop, task));
                    }
                }
                Some(WorkerCommand::Stop(count)) => {
                    for _ in 0..count {
                        if let Some((stop, task)) = running.pop_front() {
                            stop.stop();
                            leaving.push(task);
                        }
                    }
                    leaving.retain(|task| !task.is_finished());
                }
                Some(WorkerCommand::Finish) | None => break,
            },
            _ = tick.tick() => {
                let recent = std::mem::replace(
                    &mut *ctx.recent_latency.borrow_mut(),
                    Totals::default().latency_us,
                );
                let _ = reports.send(WorkerReport::Status {
                    worker: index,
                    connected: ctx.live.connected.get(),
                    failures: ctx.live.failures.get(),
                    bytes: ctx.live.bytes.get(),
                    recent_latency_us: recent,
                });
            }
        }
    }
    for (stop, task) in running.drain(..) {
        stop.stop();
        leaving.push(task);
    }
    let _ = tokio::time::timeout(LEAVE_GRACE, async {
        for task in leaving {
            let _ = task.await;
        }
    })
    .await;
    driver.abort();
    let totals = ctx.totals.borrow().clone();
    let _ = reports.send(WorkerReport::Final {
        totals: Box::new(totals),
    });
}
