//! `cascade-loadtest`: WHIP publishers and thousands of WHEP viewers against any server that
//! speaks the standards, with the figures capacity plans are made of.
//!
//! - `publish`: one WHIP publisher (a looped clip, a file, or synthetic H.264), every frame
//!   stamped with its capture time ([`marker`]).
//! - `webrtc`: N real WebRTC viewers sharded over worker threads ([`worker`], [`viewer`]),
//!   ramped and churned phase by phase ([`scenario`], [`coordinator`]), reported as a table
//!   and JSON with SLO gates ([`report`]).
//! - `hls`: N LL-HLS players doing blocking reloads and part fetches ([`hls`]), with the same
//!   report and gates.
//!
//! Exit codes: 0 when the run measured what it should, 1 on a usage error or when no viewer
//! (or publisher) ever got media, 2 when an SLO gate was missed.

mod coordinator;
mod figures;
mod hls;
mod janus;
mod marker;
mod peer;
mod poller;
mod publish;
mod publish_rtmp;
mod report;
mod scenario;
mod signaling;
mod source;
mod viewer;
mod worker;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cascade_protocol::duration::parse_duration;
use clap::{Args, Parser, Subcommand};

/// Everything that stops a run before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("media source: {0}")]
    Source(String),
    #[error("report: {0}")]
    Report(String),
}

#[derive(Debug, Parser)]
#[command(
    name = "cascade-loadtest",
    version,
    about = "WHIP publishers and WHEP viewers at scale, with join time, glass-to-glass latency, loss and freezes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a stream over WHIP (a looped clip, a file, or synthetic H.264).
    Publish(PublishArgs),
    /// Run N WebRTC viewers over WHEP and report what they saw.
    Webrtc(WebrtcArgs),
    /// Run N LL-HLS players (blocking reloads, part fetches) and report what they saw.
    Hls(HlsArgs),
}

#[derive(Debug, Args)]
struct HlsArgs {
    /// A multivariant or media playlist, e.g. http://127.0.0.1:8080/hls/show/index.m3u8.
    #[arg(long, env = "CASCADE_LOADTEST_URL")]
    url: String,
    /// Players to run.
    #[arg(long, env = "CASCADE_LOADTEST_VIEWERS", default_value_t = 1)]
    players: usize,
    /// New players per second while ramping up.
    #[arg(long, env = "CASCADE_LOADTEST_RAMP", default_value_t = 50.0)]
    ramp: f64,
    /// How long each player plays.
    #[arg(long, env = "CASCADE_LOADTEST_DURATION", default_value = "60s", value_parser = duration_arg)]
    duration: Duration,
    /// A wait between two parts longer than this counts as a stall (a player with
    /// PART-HOLD-BACK of buffer runs dry).
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    stall_after: Duration,
    /// Bearer token sent with every request.
    #[arg(long, env = "CASCADE_LOADTEST_TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    outcome: OutcomeArgs,
}

#[derive(Debug, Args)]
struct Common {
    /// Bearer token sent with every WHIP/WHEP request.
    #[arg(long, env = "CASCADE_LOADTEST_TOKEN")]
    token: Option<String>,
    /// Local address for media sockets (ICE host candidate).
    #[arg(long, env = "CASCADE_LOADTEST_LOCAL_IP", default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// How media reaches the server: `udp`, or `tcp` to its passive ICE-TCP candidate (as
    /// clients on networks that block UDP do).
    #[arg(
        long,
        env = "CASCADE_LOADTEST_TRANSPORT",
        value_enum,
        default_value = "udp"
    )]
    transport: peer::Transport,
    /// After a session dies, request a new one through the same URL (following redirects).
    #[arg(long, env = "CASCADE_LOADTEST_RECONNECT")]
    reconnect: bool,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// WHIP endpoint, e.g. http://127.0.0.1:8080/whip/show, or an RTMP URL,
    /// rtmp://127.0.0.1:1935/live/show (video only). Several (comma-separated or repeated):
    /// any node of a cluster; a reconnect tries the next one.
    #[arg(
        long,
        env = "CASCADE_LOADTEST_URL",
        value_delimiter = ',',
        required = true
    )]
    url: Vec<String>,
    /// How long to publish (e.g. 30s, 5m).
    #[arg(long, env = "CASCADE_LOADTEST_DURATION", default_value = "60s", value_parser = duration_arg)]
    duration: Duration,
    /// `synthetic`, a media file, or nothing for the default 720p30 clip (made with FFmpeg).
    #[arg(long, env = "CASCADE_LOADTEST_SOURCE")]
    source: Option<String>,
    /// Bitrate of the synthetic source, bits per second (suffix k or M allowed).
    #[arg(long, default_value = "1500k", value_parser = bitrate_arg)]
    bitrate: u64,
    /// Keyframe interval of the synthetic source.
    #[arg(long, default_value = "2s", value_parser = duration_arg)]
    gop: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct WebrtcArgs {
    /// WHEP endpoint, e.g. http://127.0.0.1:8080/whep/show. Several (comma-separated or
    /// repeated): any node of a cluster; a reconnect tries the next one.
    #[arg(
        long,
        env = "CASCADE_LOADTEST_URL",
        value_delimiter = ',',
        required = true
    )]
    url: Vec<String>,
    /// Viewers to run (ignored with --scenario).
    #[arg(long, env = "CASCADE_LOADTEST_VIEWERS", default_value_t = 1)]
    viewers: usize,
    /// New viewers per second while ramping up.
    #[arg(long, env = "CASCADE_LOADTEST_RAMP", default_value_t = 50.0)]
    ramp: f64,
    /// How long the run lasts (ignored with --scenario).
    #[arg(long, env = "CASCADE_LOADTEST_DURATION", default_value = "60s", value_parser = duration_arg)]
    duration: Duration,
    /// Fraction of viewers that leave and rejoin per minute (0 to 1).
    #[arg(long, env = "CASCADE_LOADTEST_CHURN", default_value_t = 0.0)]
    churn: f64,
    /// A TOML file of [[phase]] entries (viewers, ramp, duration, churn).
    #[arg(long, env = "CASCADE_LOADTEST_SCENARIO")]
    scenario: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, env = "CASCADE_LOADTEST_WORKERS")]
    workers: Option<usize>,
    /// Connecting and the first keyframe must each happen within this.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    join_timeout: Duration,
    /// A joined viewer without media for this long counts its session as lost.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    media_timeout: Duration,
    /// `all`: every viewer decrypts and reassembles every frame. A number N: sampling mode,
    /// N viewers (spread over the workers) are verified and the rest count RTP headers
    /// (packets, loss, frames, freezes) without decrypting: more viewers per core.
    #[arg(long, env = "CASCADE_LOADTEST_VERIFY", default_value = "all", value_parser = verify_arg)]
    verify: Verify,
    /// `whep`: the viewer offers (Cascade, any WHEP server). `janus`: Janus's HTTP API and
    /// streaming plugin, the server offers; `--url` is the API's base (e.g.
    /// http://127.0.0.1:8088/janus). For comparing servers with the same viewers.
    #[arg(long, value_enum, default_value_t = SignallingArg::Whep)]
    signalling: SignallingArg,
    /// With `--signalling janus`: the streaming mountpoint's id.
    #[arg(long, default_value_t = 1)]
    janus_mountpoint: u64,
    #[command(flatten)]
    outcome: OutcomeArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SignallingArg {
    Whep,
    Janus,
}

/// Where the report goes and the SLO gates that decide the exit code: the same in every
/// mode.
#[derive(Debug, Args)]
struct OutcomeArgs {
    /// Write every figure as JSON to this file.
    #[arg(long, env = "CASCADE_LOADTEST_REPORT")]
    report: Option<PathBuf>,
    /// SLO gate: exit 2 if p95 glass-to-glass latency exceeds this (ms).
    #[arg(long)]
    max_p95_latency_ms: Option<f64>,
    /// SLO gate: exit 2 if frame (HLS: part) loss exceeds this (%).
    #[arg(long)]
    max_loss_pct: Option<f64>,
    /// SLO gate: exit 2 if p95 join time exceeds this (ms).
    #[arg(long)]
    max_join_p95_ms: Option<f64>,
    /// SLO gate: exit 2 if more sessions (HLS: requests) than this failed.
    #[arg(long)]
    max_failed_sessions: Option<u64>,
}

impl OutcomeArgs {
    /// Applies the gates to `report`, prints it, writes its JSON, and says the exit code:
    /// 1 when nobody got media (`nobody` says so), 2 when a gate was missed.
    fn finish(&self, mut report: report::Report, nobody: &str) -> Result<ExitCode, LoadtestError> {
        let gates = report::Gates {
            max_p95_latency_ms: self.max_p95_latency_ms,
            max_loss_pct: self.max_loss_pct,
            max_join_p95_ms: self.max_join_p95_ms,
            max_failed_sessions: self.max_failed_sessions,
        };
        report.gates_missed = gates.missed(&report);
        print!("{}", report.table());
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| LoadtestError::Report(e.to_string()))?;
            std::fs::write(path, json)
                .map_err(|e| LoadtestError::Report(format!("{}: {e}", path.display())))?;
        }
        Ok(if report.sessions_joined == 0 {
            eprintln!("cascade-loadtest: {nobody}; see the failures above");
            ExitCode::from(1)
        } else if !report.gates_missed.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn bitrate_arg(text: &str) -> Result<u64, String> {
    let (number, scale) = match text.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1_000.0),
        None => match text.strip_suffix('M') {
            Some(n) => (n, 1_000_000.0),
            None => (text, 1.0),
        },
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .map(|n| (n * scale) as u64)
        .ok_or_else(|| format!("invalid bitrate {text:?}: write e.g. 1500k or 2M"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Publish(args) => publish(args).await,
            Command::Webrtc(args) => webrtc(args).await,
            Command::Hls(args) => hls_players(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cascade-loadtest: {e}");
            ExitCode::from(1)
        }
    }
}

async fn publish(args: PublishArgs) -> Result<ExitCode, LoadtestError> {
    let gop_frames = (args.gop.as_secs_f64() * f64::from(source::FPS))
        .round()
        .max(1.0) as u32;
    let spec = source::SourceSpec::parse(args.source.as_deref(), args.bitrate, gop_frames);
    let media = tokio::task::spawn_blocking(move || source::load(&spec))
        .await
        .map_err(|e| LoadtestError::Source(e.to_string()))??;
    tracing::info!(source = %media.description, frames = media.video.len(), url = %args.url.join(","), "publishing");
    let settings = publish::PublishSettings {
        urls: signaling::Endpoints::new(args.url),
        token: args.common.token,
        local_ip: args.common.local_ip,
        transport: args.common.transport,
        duration: args.duration,
        reconnect: args.common.reconnect,
    };
    let over_rtmp = settings.urls.all().iter().all(|u| u.starts_with("rtmp://"));
    let outcome = if over_rtmp {
        publish_rtmp::run(&settings, &media).await?
    } else {
        publish::run(&settings, &media).await?
    };
    let failures: Vec<String> = outcome.failures.iter().map(|f| f.label()).collect();
    eprintln!(
        "published {} frames in {} session(s); failures: {}",
        outcome.frames_sent,
        outcome.sessions,
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        }
    );
    Ok(if outcome.frames_sent == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn webrtc(args: WebrtcArgs) -> Result<ExitCode, LoadtestError> {
    figures::run_started();
    let phases = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadtestError::Config(format!("{}: {e}", path.display())))?;
            scenario::parse(&text, args.ramp)?
        }
        None => {
            let phase = scenario::Phase {
                viewers: args.viewers,
                ramp: args.ramp,
                duration: args.duration,
                churn: args.churn,
            };
            phase.validate()?;
            vec![phase]
        }
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let settings = viewer::ViewerSettings {
        urls: signaling::Endpoints::new(args.url.clone()),
        token: args.common.token,
        local_ip: args.common.local_ip,
        transport: args.common.transport,
        reconnect: args.common.reconnect,
        join_timeout: args.join_timeout,
        media_timeout: args.media_timeout,
        verified_per_worker: match args.verify {
            Verify::All => None,
            Verify::Count(n) => Some(n.div_ceil(workers)),
        },
        signalling: match args.signalling {
            SignallingArg::Whep => viewer::Signalling::Whep,
            SignallingArg::Janus => viewer::Signalling::Janus {
                mountpoint: args.janus_mountpoint,
            },
        },
    };
    if matches!(args.signalling, SignallingArg::Janus)
        && args.common.transport != peer::Transport::Udp
    {
        return Err(LoadtestError::Config(
            "--signalling janus takes UDP viewers only".into(),
        ));
    }
    let outcome = coordinator::run(settings, &phases, workers).await;
    let report = report::Report::new(
        &args.url.join(","),
        outcome.peak_target,
        outcome.elapsed,
        workers,
        &outcome.totals,
    );
    args.outcome.finish(report, "no viewer received media")
}

async fn hls_players(args: HlsArgs) -> Result<ExitCode, LoadtestError> {
    if args.players == 0 || args.ramp <= 0.0 {
        return Err(LoadtestError::Config(
            "--players must be at least 1 and --ramp above 0".into(),
        ));
    }
    figures::run_started();
    let settings = hls::PlayerSettings {
        url: args.url.clone(),
        token: args.token.clone(),
        length: args.duration,
        stall_after: args.stall_after,
    };
    let started = std::time::Instant::now();
    let mut players = tokio::task::JoinSet::new();
    for i in 0..args.players {
        let at = Duration::from_secs_f64(i as f64 / args.ramp);
        let settings = settings.clone();
        players.spawn(async move {
            tokio::time::sleep(at).await;
            let mut totals = figures::Totals::default();
            let mut player = hls::PlayerFigures::default();
            hls::play(&settings, &mut totals, &mut player).await;
            (totals, player)
        });
    }
    let mut totals = figures::Totals::default();
    let mut requests = 0;
    let mut pdt_latency_us = Vec::new();
    while let Some(done) = players.join_next().await {
        let (t, player) = done.map_err(|e| LoadtestError::Report(e.to_string()))?;
        totals.merge(&t);
        requests += player.requests;
        pdt_latency_us.extend(player.pdt_latency_us);
    }
    let elapsed = started.elapsed();
    let mut report = report::Report::new(&args.url, args.players, elapsed, 1, &totals);
    report.hls = Some(report::HlsFigures::new(requests, elapsed, &pdt_latency_us));
    args.outcome.finish(report, "no player received a part")
}

/// Which viewers decrypt and reassemble every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    All,
    Count(usize),
}

/// `all` or a number of verified viewers.
fn verify_arg(text: &str) -> Result<Verify, String> {
    match text {
        "all" => Ok(Verify::All),
        n => n
            .parse()
            .map(Verify::Count)
            .map_err(|_| format!("expected `all` or a number of viewers, got {n:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_is_all_or_a_count() {
        assert_eq!(verify_arg("all"), Ok(Verify::All));
        assert_eq!(verify_arg("200"), Ok(Verify::Count(200)));
        assert!(verify_arg("some").is_err());
    }

    #[test]
    fn bitrates_are_written_like_encoders_write_them() {
        assert_eq!(bitrate_arg("1500k"), Ok(1_500_000));
        assert_eq!(bitrate_arg("2M"), Ok(2_000_000));
        assert_eq!(bitrate_arg("64000"), Ok(64_000));
        assert!(bitrate_arg("fast").is_err());
        assert!(bitrate_arg("-1k").is_err());
    }
}
