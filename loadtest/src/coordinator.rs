//! Drives a viewer run: starts the workers, ramps viewers up and down phase by phase, applies
//! churn, prints the live status line, and merges the workers' totals at the end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::figures::Totals;
use crate::scenario::Phase;
use crate::viewer::ViewerSettings;
use crate::worker::{self, WorkerCommand, WorkerReport};

/// How often the coordinator adjusts the viewer count.
const STEP: Duration = Duration::from_millis(100);
/// Status lines when stderr is not a terminal (logs, CI) come this often.
const PLAIN_STATUS_EVERY: Duration = Duration::from_secs(5);

/// The merged outcome of a run.
#[derive(Debug)]
pub struct Outcome {
    pub totals: Totals,
    pub elapsed: Duration,
    pub peak_target: usize,
}

struct WorkerState {
    commands: mpsc::UnboundedSender<WorkerCommand>,
    active: usize,
    connected: u64,
    failures: u64,
    bytes: u64,
    recent_latency_us: Histogram<u64>,
}

/// Runs every phase in order and returns the merged figures.
pub async fn run(settings: ViewerSettings, phases: &[Phase], workers: usize) -> Outcome {
    let certificate = crate::peer::shared_certificate();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut states = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        threads.push(worker::spawn(
            index,
            settings.clone(),
            certificate.clone(),
            rx,
            reports_tx.clone(),
        ));
        states.push(WorkerState {
            commands: tx,
            active: 0,
            connected: 0,
            failures: 0,
            bytes: 0,
            recent_latency_us: Totals::default().latency_us,
        });
    }
    drop(reports_tx);

    let started = Instant::now();
    let mut status = StatusLine::new(started);
    let mut peak_target = 0;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    'phases: for (number, phase) in phases.iter().enumerate() {
        tracing::info!(phase = number + 1, viewers = phase.viewers, ramp = phase.ramp, duration = ?phase.duration, churn = phase.churn, "phase starts");
        peak_target = peak_target.max(phase.viewers);
        let phase_end = Instant::now() + phase.duration;
        let mut ramp_budget = 0.0f64;
        let mut churn_budget = 0.0f64;
        let mut step = tokio::time::interval(STEP);
        while Instant::now() < phase_end {
            tokio::select! {
                _ = step.tick() => {}
                _ = &mut interrupted => {
                    tracing::warn!("interrupted: stopping viewers and reporting what was measured");
                    break 'phases;
                }
                Some(report) = reports.recv() => {
                    absorb(&mut states, report);
                    continue;
                }
            }
            let dt = STEP.as_secs_f64();
            let active: usize = states.iter().map(|s| s.active).sum();
            if active < phase.viewers {
                ramp_budget += phase.ramp * dt;
                let start = (ramp_budget.floor() as usize).min(phase.viewers - active);
                ramp_budget -= start as f64;
                for _ in 0..start {
                    let least = least_loaded(&states);
                    let _ = states[least].commands.send(WorkerCommand::Start(1));
                    states[least].active += 1;
                }
            } else if active > phase.viewers {
                for _ in 0..active - phase.viewers {
                    let most = most_loaded(&states);
                    let _ = states[most].commands.send(WorkerCommand::Stop(1));
                    states[most].active -= 1;
                }
            }
            churn_budget += phase.churn * active as f64 / 60.0 * dt;
            while churn_budget >= 1.0 {
                churn_budget -= 1.0;
                let most = most_loaded(&states);
                let _ = states[most].commands.send(WorkerCommand::Stop(1));
                let _ = states[most].commands.send(WorkerCommand::Start(1));
            }
            status.maybe_print(&mut states, phase.viewers);
        }
    }
    for state in &states {
        let _ = state.commands.send(WorkerCommand::Finish);
    }
    let elapsed = started.elapsed();
    let mut totals = Totals::default();
    let mut finished = 0;
    while finished < workers {
        match reports.recv().await {
            Some(WorkerReport::Final { totals: t, .. }) => {
                totals.merge(&t);
                finished += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    status.finish();
    for thread in threads {
        let _ = thread.join();
    }
    Outcome {
        totals,
        elapsed,
        peak_target,
    }
}

fn absorb(states: &mut [WorkerState], report: WorkerReport) {
    if let WorkerReport::Status {
        worker,
        connected,
        failures,
        bytes,
        recent_latency_us,
    } = report
        && let Some(state) = states.get_mut(worker)
    {
        state.connected = connected;
        state.failures = failures;
        state.bytes = bytes;
        let _ = state.recent_latency_us.add(&recent_latency_us);
    }
}

fn least_loaded(states: &[WorkerState]) -> usize {
    (0..states.len())
        .min_by_key(|&i| states[i].active)
        .unwrap_or(0)
}

fn most_loaded(states: &[WorkerState]) -> usize {
    (0..states.len())
        .max_by_key(|&i| states[i].active)
        .unwrap_or(0)
}

/// The live status: rewritten in place on a terminal, plain periodic lines otherwise.
struct StatusLine {
    terminal: bool,
    started: Instant,
    last_print: Instant,
    last_bytes: u64,
}

impl StatusLine {
    fn new(started: Instant) -> StatusLine {
        StatusLine {
            terminal: std::io::stderr().is_terminal(),
            started,
            last_print: started,
            last_bytes: 0,
        }
    }

    fn maybe_print(&mut self, states: &mut [WorkerState], target: usize) {
        let every = if self.terminal {
            Duration::from_secs(1)
        } else {
            PLAIN_STATUS_EVERY
        };
        let since = self.last_print.elapsed();
        if since < every {
            return;
        }
        let connected: u64 = states.iter().map(|s| s.connected).sum();
        let failures: u64 = states.iter().map(|s| s.failures).sum();
        let bytes: u64 = states.iter().map(|s| s.bytes).sum();
        let mut latency = Totals::default().latency_us;
        for state in states.iter_mut() {
            let _ = latency.add(&state.recent_latency_us);
            state.recent_latency_us.reset();
        }
        let p95 = if latency.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1} ms", latency.value_at_quantile(0.95) as f64 / 1000.0)
        };
        let mbps = (bytes.saturating_sub(self.last_bytes)) as f64 * 8.0 / since.as_secs_f64() / 1e6;
        self.last_bytes = bytes;
        self.last_print = Instant::now();
        let line = format!(
            "[{:>5.0}s] viewers {connected}/{target} connected, {failures} failures, p95 latency {p95}, {mbps:.1} Mbit/s",
            self.started.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
