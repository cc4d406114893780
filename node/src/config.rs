//! The node's configuration: one struct read from the command line, `CASCADE_*` environment
//! variables and a TOML file, in that order of precedence over the defaults.
//!
//! Every key has the same name everywhere: `--http-addr`, `CASCADE_HTTP_ADDR`, `http-addr`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade_protocol::duration::parse_duration;

use crate::NodeError;

/// Default HTTP listen address (WHIP, WHEP, API, metrics, the page).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default UDP address for all WebRTC media.
pub const DEFAULT_WEBRTC_ADDR: &str = "127.0.0.1:8443";
/// Default UDP address for publishers' WebRTC media: the WebRTC address's next port.
pub const DEFAULT_WEBRTC_INGEST_ADDR: &str = "127.0.0.1:8444";
/// Default TCP port of RTMP ingest (publish to `rtmp://<this>/live/<stream>`), on the HTTP
/// address's IP.
pub const DEFAULT_RTMP_PORT: u16 = 1935;
/// Default UDP port of SRT ingest, on the HTTP address's IP.
pub const DEFAULT_SRT_PORT: u16 = 9710;
/// Default SRT receiver latency.
pub const DEFAULT_SRT_LATENCY: &str = "120ms";
/// Default UDP address for node-to-node QUIC (Raft and the media relay).
pub const DEFAULT_QUIC_ADDR: &str = "127.0.0.1:4433";
/// Default number of Raft voters.
pub const DEFAULT_VOTERS: usize = 3;
/// Default time a silent voter is given before a learner replaces it.
pub const DEFAULT_VOTER_LOST_AFTER: &str = "10s";
/// Default state directory.
pub const DEFAULT_DATA_DIR: &str = "./cascade-data";
/// Default time a dropped publisher has to come back before viewers are ended.
pub const DEFAULT_RECONNECT_GRACE: &str = "10s";
/// Default time a WebRTC session has to complete ICE and DTLS.
pub const DEFAULT_HANDSHAKE_TIMEOUT: &str = "15s";

/// Options of `cascade run`. Every field is optional here; [`NodeConfig::resolve`] fills in
/// the file's values and then the defaults.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunOptions {
    /// TOML file with any of these options (keys are the flag names without `--`).
    #[arg(long, env = "CASCADE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// HTTP listen address for WHIP, WHEP, the API, /metrics and the page [default: 127.0.0.1:8080].
    #[arg(long, env = "CASCADE_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Serve the HTTP port over TLS with this PEM certificate chain (needs --tls-key;
    /// both files are read again on SIGHUP).
    #[arg(long, env = "CASCADE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CASCADE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// `self-signed`: serve the HTTP port over TLS with a certificate made at start (for
    /// trials; its fingerprint is printed) [default: plain HTTP unless --tls-cert is given].
    #[arg(long, env = "CASCADE_TLS", value_name = "MODE")]
    pub tls: Option<String>,

    /// UDP address shared by all WebRTC media [default: 127.0.0.1:8443].
    #[arg(long, env = "CASCADE_WEBRTC_ADDR", value_name = "ADDR")]
    pub webrtc_addr: Option<SocketAddr>,

    /// UDP address for publishers' (WHIP) media, apart from viewers' so that no viewer load
    /// can delay a publisher [default: the WebRTC address with the next port, 127.0.0.1:8444].
    #[arg(long, env = "CASCADE_WEBRTC_INGEST_ADDR", value_name = "ADDR")]
    pub webrtc_ingest_addr: Option<SocketAddr>,

    /// TCP address of the viewers' passive ICE-TCP candidate, for clients whose network
    /// blocks UDP [default: the WebRTC address, on TCP].
    #[arg(long, env = "CASCADE_WEBRTC_TCP_ADDR", value_name = "ADDR")]
    pub webrtc_tcp_addr: Option<SocketAddr>,

    /// TCP address of the publishers' passive ICE-TCP candidate [default: the WebRTC ingest
    /// address, on TCP].
    #[arg(long, env = "CASCADE_WEBRTC_INGEST_TCP_ADDR", value_name = "ADDR")]
    pub webrtc_ingest_tcp_addr: Option<SocketAddr>,

    /// TCP address of RTMP ingest: encoders and OBS publish to `rtmp://ADDR/live/<stream>`
    /// [default: the HTTP address's IP, port 1935: 127.0.0.1:1935].
    #[arg(long, env = "CASCADE_RTMP_ADDR", value_name = "ADDR")]
    pub rtmp_addr: Option<SocketAddr>,

    /// UDP address of SRT ingest: encoders publish MPEG-TS to
    /// `srt://ADDR?streamid=publish:<stream>` [default: the HTTP address's IP, port 9710:
    /// 127.0.0.1:9710].
    #[arg(long, env = "CASCADE_SRT_ADDR", value_name = "ADDR")]
    pub srt_addr: Option<SocketAddr>,

    /// SRT receiver latency: how long packets may take to be retransmitted before they are
    /// given up, e.g. 120ms; raise it on lossy, long links [default: 120ms].
    #[arg(long, env = "CASCADE_SRT_LATENCY", value_name = "DURATION")]
    pub srt_latency: Option<String>,

    /// LL-HLS segment target: segments end at the first keyframe once this long (whole
    /// groups) [default: 2s].
    #[arg(long, env = "CASCADE_HLS_SEGMENT", value_name = "DURATION")]
    pub hls_segment: Option<String>,

    /// LL-HLS part target, 200ms to 2s: shorter parts lower the latency and raise the
    /// request rate [default: a third of a second].
    #[arg(long, env = "CASCADE_HLS_PART", value_name = "DURATION")]
    pub hls_part: Option<String>,

    /// How much of a live stream its playlists keep; longer than a minute makes a DVR
    /// window, held in the packager's memory (about 1 MB per Mbit/s per 8 s per rendition)
    /// [default: 60s].
    #[arg(long, env = "CASCADE_HLS_WINDOW", value_name = "DURATION")]
    pub hls_window: Option<String>,

    /// The transcoder's video ladder: `none`, or rungs `HEIGHTp:KBPS[:FPS]` separated by
    /// commas, e.g. 720p:2500,360p:800,180p:250. Rungs at or above a WebRTC-safe source's
    /// height are skipped. Without a ladder the transcoder still makes what WebRTC viewers
    /// need: Opus from AAC, and a B-frame-free H.264 rung at the source's size from sources
    /// WebRTC cannot carry [default: none].
    #[arg(long, env = "CASCADE_LADDER", value_name = "RUNGS")]
    pub ladder: Option<String>,

    /// Run a second, standby transcoder of every transcoded stream on another node, so that
    /// a transcoder's node can die without a gap in its renditions; the leader's setting
    /// counts [default: false].
    #[arg(long, env = "CASCADE_TRANSCODER_STANDBY", value_name = "BOOL")]
    pub transcoder_standby: Option<bool>,

    /// Package every stream's LL-HLS on a second, standby node too, numbered like the
    /// active packager's, so that edges switch to it when the active one stops; the
    /// leader's setting counts [default: false].
    #[arg(long, env = "CASCADE_PACKAGER_STANDBY", value_name = "BOOL")]
    pub packager_standby: Option<bool>,

    /// Streams recorded whenever they are live, on the node that packages them: names, or
    /// prefixes ending in `*`, separated by commas (e.g. `show,cam-*`); `[streams.NAME]
    /// record = true` adds one [default: none].
    #[arg(long, env = "CASCADE_RECORD", value_name = "STREAMS")]
    pub record: Option<String>,

    /// Offer ICE-TCP candidates at all (`false` offers UDP only) [default: true].
    #[arg(long, env = "CASCADE_ICE_TCP", value_name = "BOOL")]
    pub ice_tcp: Option<bool>,

    /// Send WebRTC viewers' media on the per-viewer fast path (own RTP header, SRTP sealed
    /// in place, batched sends) once their DTLS is done; `false` sends every packet through
    /// str0m, as before it, for comparison [default: true]. Viewers over ICE-TCP, with
    /// AES-CM SRTP or adapting their rendition always use str0m's path.
    #[arg(long, env = "CASCADE_WEBRTC_FAST_PATH", value_name = "BOOL")]
    pub webrtc_fast_path: Option<bool>,

    /// Threads (shards) of the viewers' WebRTC engine, each serving its own viewers behind
    /// the one media port; new viewers go to the one with the fewest [default: one per
    /// core]. Publishers have an engine thread of their own.
    #[arg(long, env = "CASCADE_WEBRTC_THREADS", value_name = "N")]
    pub webrtc_threads: Option<usize>,

    /// GSO runs (each a viewer's datagrams of one frame, or one audio packet) handed to the
    /// kernel per `sendmmsg` call, 1 to 64; 1 is one system call per run, as before
    /// batching across viewers, for comparison [default: 64].
    #[arg(long, env = "CASCADE_WEBRTC_SEND_BATCH", value_name = "N")]
    pub webrtc_send_batch: Option<usize>,

    /// IP address advertised in ICE candidates, when clients reach this node by another
    /// address than it binds (NAT, containers) [default: the bound address].
    #[arg(long, env = "CASCADE_PUBLIC_IP", value_name = "IP")]
    pub public_ip: Option<IpAddr>,

    /// Directory for the node's state [default: ./cascade-data].
    #[arg(long, env = "CASCADE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Bearer token every WHIP publisher must present (unless the stream has its own key).
    #[arg(
        long,
        env = "CASCADE_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub publish_token: Option<String>,

    /// Bearer token every WHEP viewer must present (unless the stream has its own key).
    #[arg(
        long,
        env = "CASCADE_PLAY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub play_token: Option<String>,

    /// Secret of HS256-signed tokens (JWT) the node accepts for publishing and playing;
    /// with it (or `jwt-public-key`) every stream needs a token. See docs/integrators.md.
    #[arg(
        long,
        env = "CASCADE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file of the EC P-256 public key of ES256-signed tokens (JWT) the node accepts.
    #[arg(long, env = "CASCADE_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Receiver of webhook events (stream.started, stream.ended); repeatable, or
    /// comma-separated in the environment. See docs/integrators.md.
    #[arg(
        long,
        env = "CASCADE_WEBHOOK_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub webhook_url: Option<Vec<String>>,

    /// Key of the HMAC-SHA256 `Cascade-Signature` header on every webhook delivery.
    #[arg(
        long,
        env = "CASCADE_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// Publish callback: POSTed before each publisher is admitted, which then needs a 2xx.
    #[arg(long, env = "CASCADE_ON_PUBLISH_URL", value_name = "URL")]
    pub on_publish_url: Option<String>,

    /// How long the publish callback has to answer, e.g. 2s [default: 2s].
    #[arg(long, env = "CASCADE_ON_PUBLISH_TIMEOUT", value_name = "DURATION")]
    pub on_publish_timeout: Option<String>,

    /// Admit publishers when the publish callback does not answer (times out, is
    /// unreachable, 5xx) [default: false: refuse them].
    #[arg(long, env = "CASCADE_ON_PUBLISH_FAIL_OPEN", value_name = "BOOL")]
    pub on_publish_fail_open: Option<bool>,

    /// MongoDB connection string (`mongodb://` or `mongodb+srv://`; its path names the
    /// database, `cascade` without one): history records are copied there as well. See
    /// docs/integrators.md.
    #[arg(
        long,
        env = "CASCADE_MONGODB_URI",
        value_name = "URI",
        hide_env_values = true
    )]
    pub mongodb_uri: Option<String>,

    /// History records kept on disk for MongoDB while it is unreachable; the oldest are
    /// dropped beyond it [default: 100000].
    #[arg(long, env = "CASCADE_MONGODB_QUEUE_LIMIT", value_name = "RECORDS")]
    pub mongodb_queue_limit: Option<u64>,

    /// How long viewers wait for a dropped publisher to come back, e.g. 10s [default: 10s].
    #[arg(long, env = "CASCADE_RECONNECT_GRACE", value_name = "DURATION")]
    pub reconnect_grace: Option<String>,

    /// How long a WHIP or WHEP session has to complete ICE and DTLS before it is ended,
    /// e.g. 15s [default: 15s].
    #[arg(long, env = "CASCADE_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<String>,

    /// Most WebRTC viewers this node serves at once; beyond it a WHEP request gets `503`
    /// (or a `307` to another edge with room) [default: no fixed cap; the engine's own lag
    /// guard still refuses new viewers when it falls behind].
    #[arg(long, env = "CASCADE_MAX_VIEWERS", value_name = "N")]
    pub max_viewers: Option<usize>,

    /// Most publishers this node takes at once [default: no fixed cap].
    #[arg(long, env = "CASCADE_MAX_PUBLISHERS", value_name = "N")]
    pub max_publishers: Option<usize>,

    /// UDP address for node-to-node QUIC: Raft and the media relay [default: 127.0.0.1:4433].
    #[arg(long, env = "CASCADE_QUIC_ADDR", value_name = "ADDR")]
    pub quic_addr: Option<SocketAddr>,

    /// HTTP address of any member of an existing cluster to join (needs --token).
    #[arg(long, env = "CASCADE_JOIN", value_name = "ADDR")]
    pub join: Option<String>,

    /// Join token: with --join, the cluster's; on a first node, the one to accept
    /// [default: a first node generates and prints one].
    #[arg(
        long,
        env = "CASCADE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Roles this node may hold: `auto` (all) or a list such as `origin,edge` [default: auto].
    #[arg(long, env = "CASCADE_ROLES", value_name = "ROLES")]
    pub roles: Option<String>,

    /// This node's `region` label; viewers asking for a region are sent to an edge there.
    #[arg(long, env = "CASCADE_REGION", value_name = "NAME")]
    pub region: Option<String>,

    /// Raft voters the cluster keeps: 1, 3 or 5 [default: 3]; further nodes are learners.
    #[arg(long, env = "CASCADE_VOTERS", value_name = "N")]
    pub voters: Option<usize>,

    /// How long a voter may be silent before a learner replaces it, e.g. 10s [default: 10s].
    #[arg(long, env = "CASCADE_VOTER_LOST_AFTER", value_name = "DURATION")]
    pub voter_lost_after: Option<String>,

    /// Bearer token for cluster administration (drain, remove, new join tokens)
    /// [default: none, administration is open].
    #[arg(
        long,
        env = "CASCADE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Per-stream keys, file only: `[streams.NAME]` with `publish-key` and/or `play-key`.
    #[arg(skip)]
    pub streams: Option<HashMap<String, StreamKeys>>,
}

/// Keys of one stream, from the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamKeys {
    /// Bearer token that may publish this stream.
    pub publish_key: Option<String>,
    /// Bearer token that may watch this stream.
    pub play_key: Option<String>,
    /// Passphrase SRT callers of this stream must encrypt with (10 to 79 characters).
    pub srt_passphrase: Option<String>,
    /// This stream's transcoder ladder, in `--ladder`'s form, instead of the node's.
    pub ladder: Option<String>,
    /// Record this stream whenever it is live (on the node that packages it).
    pub record: Option<bool>,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// See [`RunOptions::http_addr`].
    pub http_addr: SocketAddr,
    /// HTTPS on the HTTP port, if asked for (`--tls-cert`/`--tls-key` or `--tls self-signed`).
    pub tls: Option<crate::http::tls::TlsSource>,
    /// See [`RunOptions::webrtc_addr`].
    pub webrtc_addr: SocketAddr,
    /// See [`RunOptions::webrtc_ingest_addr`].
    pub webrtc_ingest_addr: SocketAddr,
    /// See [`RunOptions::webrtc_tcp_addr`]; `None` with `ice-tcp = false`.
    pub webrtc_tcp_addr: Option<SocketAddr>,
    /// See [`RunOptions::webrtc_ingest_tcp_addr`]; `None` with `ice-tcp = false`.
    pub webrtc_ingest_tcp_addr: Option<SocketAddr>,
    /// See [`RunOptions::rtmp_addr`].
    pub rtmp_addr: SocketAddr,
    /// See [`RunOptions::srt_addr`].
    pub srt_addr: SocketAddr,
    /// See [`RunOptions::srt_latency`].
    pub srt_latency: Duration,
    /// How LL-HLS is cut and how much is kept (`--hls-segment`, `--hls-part`, `--hls-window`).
    pub hls: cascade_protocol::hls::packager::PackagerConfig,
    /// See [`RunOptions::ladder`].
    pub ladder: Vec<cascade_protocol::transcode::Rung>,
    /// Streams recorded whenever live: names or `prefix*` (`--record`, `[streams.NAME]
    /// record = true`).
    pub record: Vec<String>,
    /// Streams with a ladder of their own (`[streams.NAME] ladder = "..."`).
    pub stream_ladders: HashMap<String, Vec<cascade_protocol::transcode::Rung>>,
    /// See [`RunOptions::public_ip`].
    pub public_ip: Option<IpAddr>,
    /// See [`RunOptions::data_dir`].
    pub data_dir: PathBuf,
    /// Who may publish and play.
    pub access: crate::access::AccessPolicy,
    /// Where events go (`--webhook-url`, `--webhook-secret`).
    pub webhooks: crate::webhooks::WebhookConfig,
    /// The publish callback, if any (`--on-publish-url`).
    pub on_publish: Option<crate::webhooks::on_publish::OnPublishConfig>,
    /// Where history records are copied, if anywhere (`--mongodb-uri`).
    pub mongodb: Option<crate::history::mongodb::MongoConfig>,
    /// See [`RunOptions::reconnect_grace`].
    pub reconnect_grace: Duration,
    /// See [`RunOptions::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// See [`RunOptions::webrtc_fast_path`].
    pub webrtc_fast_path: bool,
    /// See [`RunOptions::webrtc_threads`].
    pub webrtc_threads: usize,
    /// See [`RunOptions::webrtc_send_batch`].
    pub webrtc_send_batch: usize,
    /// See [`RunOptions::max_viewers`] and [`RunOptions::max_publishers`].
    pub limits: cascade_roles::admission::Limits,
    /// See [`RunOptions::quic_addr`].
    pub quic_addr: SocketAddr,
    /// See [`RunOptions::join`].
    pub join: Option<String>,
    /// See [`RunOptions::token`].
    pub token: Option<String>,
    /// See [`RunOptions::admin_token`].
    pub admin_token: Option<String>,
    /// Voters, region, allowed roles.
    pub cluster: crate::cluster::ClusterConfig,
}

impl NodeConfig {
    /// Combines command line/environment (`cli`), the file it names, and the defaults.
    pub fn resolve(cli: RunOptions) -> Result<Self, NodeError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => RunOptions::default(),
        };
        let default_addr = |text: &str| {
            text.parse::<SocketAddr>()
                .expect("default addresses are valid")
        };
        let http_addr = cli
            .http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| default_addr(DEFAULT_HTTP_ADDR));
        // Ingest listens where the HTTP port does unless told otherwise: several nodes on one
        // machine (one loopback address each) do not collide.
        let on_http_ip = |port: u16| SocketAddr::new(http_addr.ip(), port);
        let srt_latency = duration(
            "srt-latency",
            cli.srt_latency.clone().or(file.srt_latency.clone()),
            DEFAULT_SRT_LATENCY,
        )?;
        let reconnect_grace = duration(
            "reconnect-grace",
            cli.reconnect_grace.or(file.reconnect_grace),
            DEFAULT_RECONNECT_GRACE,
        )?;
        let handshake_timeout = duration(
            "handshake-timeout",
            cli.handshake_timeout.or(file.handshake_timeout),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let tls = tls_source(
            cli.tls.or(file.tls),
            cli.tls_cert.or(file.tls_cert),
            cli.tls_key.or(file.tls_key),
        )?;
        let streams = cli.streams.or(file.streams).unwrap_or_default();
        let mut record: Vec<String> = cli
            .record
            .or(file.record)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "none")
            .map(str::to_owned)
            .collect();
        record.extend(
            streams
                .iter()
                .filter(|(_, keys)| keys.record == Some(true))
                .map(|(name, _)| name.clone()),
        );
        let stream_ladders = streams
            .iter()
            .filter_map(|(name, keys)| {
                let ladder = keys.ladder.as_deref()?;
                Some(parse_ladder(Some(ladder)).map(|rungs| (name.clone(), rungs)))
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        for name in streams.keys() {
            cascade_protocol::StreamId::parse(name).map_err(|e| NodeError::Config {
                key: "streams",
                message: e.to_string(),
            })?;
        }
        let on_publish_url = cli.on_publish_url.or(file.on_publish_url);
        let voter_lost_after = duration(
            "voter-lost-after",
            cli.voter_lost_after.or(file.voter_lost_after),
            DEFAULT_VOTER_LOST_AFTER,
        )?;
        let allowed = parse_roles(cli.roles.or(file.roles).as_deref().unwrap_or("auto"))?;
        let cluster = crate::cluster::ClusterConfig {
            voters: cli.voters.or(file.voters).unwrap_or(DEFAULT_VOTERS),
            voter_lost_after,
            region: cli.region.or(file.region),
            allowed,
            transcoder_standby: cli
                .transcoder_standby
                .or(file.transcoder_standby)
                .unwrap_or(false),
            packager_standby: cli
                .packager_standby
                .or(file.packager_standby)
                .unwrap_or(false),
        };
        let webrtc_addr = cli
            .webrtc_addr
            .or(file.webrtc_addr)
            .unwrap_or_else(|| default_addr(DEFAULT_WEBRTC_ADDR));
        let webrtc_ingest_addr = cli
            .webrtc_ingest_addr
            .or(file.webrtc_ingest_addr)
            .unwrap_or_else(|| {
                SocketAddr::new(webrtc_addr.ip(), webrtc_addr.port().wrapping_add(1))
            });
        let ice_tcp = cli.ice_tcp.or(file.ice_tcp).unwrap_or(true);
        let webrtc_tcp_addr = ice_tcp.then(|| {
            cli.webrtc_tcp_addr
                .or(file.webrtc_tcp_addr)
                .unwrap_or(webrtc_addr)
        });
        let webrtc_ingest_tcp_addr = ice_tcp.then(|| {
            cli.webrtc_ingest_tcp_addr
                .or(file.webrtc_ingest_tcp_addr)
                .unwrap_or(webrtc_ingest_addr)
        });
        let config = Self {
            quic_addr: cli
                .quic_addr
                .or(file.quic_addr)
                .unwrap_or_else(|| default_addr(DEFAULT_QUIC_ADDR)),
            join: cli.join.or(file.join),
            token: non_empty("token", cli.token.or(file.token))?,
            admin_token: non_empty("admin-token", cli.admin_token.or(file.admin_token))?,
            cluster,
            tls,
            http_addr,
            webrtc_addr,
            webrtc_ingest_addr,
            webrtc_tcp_addr,
            webrtc_ingest_tcp_addr,
            rtmp_addr: cli
                .rtmp_addr
                .or(file.rtmp_addr)
                .unwrap_or_else(|| on_http_ip(DEFAULT_RTMP_PORT)),
            srt_addr: cli
                .srt_addr
                .or(file.srt_addr)
                .unwrap_or_else(|| on_http_ip(DEFAULT_SRT_PORT)),
            srt_latency,
            hls: hls_config(
                cli.hls_segment.or(file.hls_segment),
                cli.hls_part.or(file.hls_part),
                cli.hls_window.or(file.hls_window),
            )?,
            ladder: parse_ladder(cli.ladder.or(file.ladder).as_deref())?,
            record,
            stream_ladders,
            public_ip: cli.public_ip.or(file.public_ip),
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            access: crate::access::AccessPolicy {
                publish_token: non_empty(
                    "publish-token",
                    cli.publish_token.or(file.publish_token),
                )?,
                play_token: non_empty("play-token", cli.play_token.or(file.play_token))?,
                streams,
                jwt: jwt_keys(
                    non_empty("jwt-secret", cli.jwt_secret.or(file.jwt_secret))?.as_deref(),
                    cli.jwt_public_key.or(file.jwt_public_key).as_deref(),
                )?,
            },
            webhooks: webhook_config(
                cli.webhook_url.or(file.webhook_url).unwrap_or_default(),
                non_empty("webhook-secret", cli.webhook_secret.or(file.webhook_secret))?,
                on_publish_url.is_some(),
            )?,
            on_publish: match on_publish_url {
                None => None,
                Some(url) => Some(crate::webhooks::on_publish::OnPublishConfig {
                    url: http_url("on-publish-url", url.trim())?,
                    timeout: duration(
                        "on-publish-timeout",
                        cli.on_publish_timeout.or(file.on_publish_timeout),
                        "2s",
                    )?,
                    fail_open: cli
                        .on_publish_fail_open
                        .or(file.on_publish_fail_open)
                        .unwrap_or(false),
                }),
            },
            mongodb: mongodb_config(
                non_empty("mongodb-uri", cli.mongodb_uri.or(file.mongodb_uri))?,
                cli.mongodb_queue_limit.or(file.mongodb_queue_limit),
            )?,
            reconnect_grace,
            handshake_timeout,
            webrtc_fast_path: cli
                .webrtc_fast_path
                .or(file.webrtc_fast_path)
                .unwrap_or(true),
            webrtc_threads: cli
                .webrtc_threads
                .or(file.webrtc_threads)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                }),
            webrtc_send_batch: cli
                .webrtc_send_batch
                .or(file.webrtc_send_batch)
                .unwrap_or(cascade_roles::webrtc::SEND_BATCH_MAX),
            limits: cascade_roles::admission::Limits {
                max_viewers: cli.max_viewers.or(file.max_viewers),
                max_publishers: cli.max_publishers.or(file.max_publishers),
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), NodeError> {
        if !(1..=256).contains(&self.webrtc_threads) {
            return Err(NodeError::Config {
                key: "webrtc-threads",
                message: format!("must be 1 to 256 (got {})", self.webrtc_threads),
            });
        }
        let most = cascade_roles::webrtc::SEND_BATCH_MAX;
        if !(1..=most).contains(&self.webrtc_send_batch) {
            return Err(NodeError::Config {
                key: "webrtc-send-batch",
                message: format!("must be 1 to {most} (got {})", self.webrtc_send_batch),
            });
        }
        if ![1, 3, 5].contains(&self.cluster.voters) {
            return Err(NodeError::Config {
                key: "voters",
                message: format!("must be 1, 3 or 5 (got {})", self.cluster.voters),
            });
        }
        if self.handshake_timeout < Duration::from_secs(1) {
            return Err(NodeError::Config {
                key: "handshake-timeout",
                message: "must be at least 1s: ICE and DTLS take a few round trips".into(),
            });
        }
        if self.join.is_some() && self.token.is_none() {
            return Err(NodeError::Config {
                key: "token",
                message: "is required with --join: the join token the first node printed".into(),
            });
        }
        if self.quic_addr.port() == 0 || self.quic_addr.ip().is_unspecified() {
            return Err(NodeError::Config {
                key: "quic-addr",
                message: "needs an address and port other nodes can reach (it is recorded in the cluster)".into(),
            });
        }
        if self.http_addr.port() == 0 || self.http_addr.ip().is_unspecified() {
            return Err(NodeError::Config {
                key: "http-addr",
                message: "needs an address and port other nodes can redirect clients to".into(),
            });
        }
        if self.webrtc_addr.port() == 0 {
            return Err(NodeError::Config {
                key: "webrtc-addr",
                message: "needs a fixed port: it is advertised to every WebRTC client".into(),
            });
        }
        if self.webrtc_ingest_addr.port() == 0 || self.webrtc_ingest_addr == self.webrtc_addr {
            return Err(NodeError::Config {
                key: "webrtc-ingest-addr",
                message: "needs a fixed port of its own, other than webrtc-addr's".into(),
            });
        }
        for (key, addr) in [
            ("webrtc-tcp-addr", self.webrtc_tcp_addr),
            ("webrtc-ingest-tcp-addr", self.webrtc_ingest_tcp_addr),
        ] {
            if addr.is_some_and(|a| a.port() == 0) {
                return Err(NodeError::Config {
                    key,
                    message: "needs a fixed port: it is advertised to every WebRTC client".into(),
                });
            }
        }
        if self.webrtc_tcp_addr.is_some() && self.webrtc_tcp_addr == self.webrtc_ingest_tcp_addr {
            return Err(NodeError::Config {
                key: "webrtc-ingest-tcp-addr",
                message: "needs a port of its own, other than webrtc-tcp-addr's".into(),
            });
        }
        for (stream, keys) in &self.access.streams {
            if let Some(passphrase) = &keys.srt_passphrase
                && !(10..=79).contains(&passphrase.chars().count())
            {
                return Err(NodeError::Config {
                    key: "streams.srt-passphrase",
                    message: format!(
                        "the SRT passphrase of stream {stream} must have 10 to 79 characters (SRT's rule)"
                    ),
                });
            }
        }
        if self.public_ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(NodeError::Config {
                key: "public-ip",
                message: "must be an address clients can reach, not 0.0.0.0 or ::".into(),
            });
        }
        if self.public_ip.is_none() && self.webrtc_addr.ip().is_unspecified() {
            return Err(NodeError::Config {
                key: "public-ip",
                message: "is required when webrtc-addr binds all interfaces: say which address clients should use".into(),
            });
        }
        Ok(())
    }
}

/// A duration option (`30s`, `250ms`): its value, else its default; errors name the key.
fn duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, NodeError> {
    parse_duration(value.as_deref().unwrap_or(default)).map_err(|e| NodeError::Config {
        key,
        message: e.to_string(),
    })
}

/// `--hls-segment`, `--hls-part` and `--hls-window` together, checked.
fn hls_config(
    segment: Option<String>,
    part: Option<String>,
    window: Option<String>,
) -> Result<cascade_protocol::hls::packager::PackagerConfig, NodeError> {
    use cascade_protocol::hls::packager::PackagerConfig;
    let defaults = PackagerConfig::default();
    let seconds = |key, value: Option<String>, default: f64| match value {
        Some(text) => duration(key, Some(text), "0s").map(|d| d.as_secs_f64()),
        None => Ok(default),
    };
    PackagerConfig::checked(
        seconds("hls-segment", segment, defaults.segment_target)?,
        seconds("hls-part", part, defaults.part_target)?,
        seconds("hls-window", window, defaults.window)?,
    )
    .map_err(|e| NodeError::Config {
        key: "hls",
        message: e.to_string(),
    })
}

/// `--tls`, `--tls-cert` and `--tls-key` together.
fn tls_source(
    mode: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<crate::http::tls::TlsSource>, NodeError> {
    use crate::http::tls::TlsSource;
    match (mode.as_deref().map(str::trim), cert, key) {
        (None | Some("off"), None, None) => Ok(None),
        (Some("self-signed"), None, None) => Ok(Some(TlsSource::SelfSigned)),
        (Some("self-signed"), _, _) => Err(NodeError::Config {
            key: "tls",
            message: "self-signed makes its own certificate: leave out tls-cert and tls-key".into(),
        }),
        (Some(other), _, _) if other != "files" => Err(NodeError::Config {
            key: "tls",
            message: format!(
                "{other:?} is not a TLS mode; use self-signed, or give tls-cert and tls-key"
            ),
        }),
        (_, Some(cert), Some(key)) => Ok(Some(TlsSource::Files { cert, key })),
        (_, Some(_), None) => Err(NodeError::Config {
            key: "tls-key",
            message: "is required with tls-cert".into(),
        }),
        (_, None, _) => Err(NodeError::Config {
            key: "tls-cert",
            message: "is required with tls-key (or use --tls self-signed)".into(),
        }),
    }
}

/// `none` (the default: every rung is encoded for as long as its stream lives, so a ladder
/// is the operator's choice), or comma-separated rungs.
fn parse_ladder(text: Option<&str>) -> Result<Vec<cascade_protocol::transcode::Rung>, NodeError> {
    use cascade_protocol::transcode::Rung;
    match text.map(str::trim) {
        None | Some("none") => Ok(Vec::new()),
        Some(list) => list
            .split(',')
            .map(|rung| {
                Rung::parse(rung.trim()).map_err(|message| NodeError::Config {
                    key: "ladder",
                    message,
                })
            })
            .collect(),
    }
}

/// `auto` or a comma-separated list of role names.
fn parse_roles(
    text: &str,
) -> Result<std::collections::BTreeSet<cascade_protocol::cluster::NodeRole>, NodeError> {
    use cascade_protocol::cluster::NodeRole;
    if text.trim() == "auto" {
        return Ok(NodeRole::ALL.into_iter().collect());
    }
    text.split(',')
        .map(|name| {
            NodeRole::parse(name.trim()).ok_or_else(|| NodeError::Config {
                key: "roles",
                message: format!(
                    "{name:?} is not a role; use auto or a list of origin, transcoder, packager, edge"
                ),
            })
        })
        .collect()
}

/// The signed-token keys: the secret as given, the public key read from its file now, so
/// that a bad file stops the node at start rather than refusing every publisher later.
fn jwt_keys(
    secret: Option<&str>,
    public_key: Option<&Path>,
) -> Result<crate::access::jwt::JwtKeys, NodeError> {
    if secret.is_some_and(|s| s.len() < 32) {
        return Err(NodeError::Config {
            key: "jwt-secret",
            message: "needs at least 32 characters: HS256 is only as strong as its secret".into(),
        });
    }
    let pem = public_key
        .map(|path| {
            std::fs::read(path).map_err(|e| NodeError::Config {
                key: "jwt-public-key",
                message: format!("cannot read {}: {e}", path.display()),
            })
        })
        .transpose()?;
    crate::access::jwt::JwtKeys::new(secret, pem.as_deref()).map_err(|e| NodeError::Config {
        key: "jwt-public-key",
        message: e.to_string(),
    })
}

/// Webhook receivers must be http(s) URLs; a secret without receivers is a mistake worth
/// stopping for.
fn webhook_config(
    urls: Vec<String>,
    secret: Option<String>,
    with_publish_callback: bool,
) -> Result<crate::webhooks::WebhookConfig, NodeError> {
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    for url in &urls {
        http_url("webhook-url", url)?;
    }
    if secret.is_some() && urls.is_empty() && !with_publish_callback {
        return Err(NodeError::Config {
            key: "webhook-secret",
            message:
                "is set but neither webhook-url nor on-publish-url is: nothing would be signed"
                    .into(),
        });
    }
    Ok(crate::webhooks::WebhookConfig { urls, secret })
}

/// MongoDB's connection string is checked for its scheme here (the driver parses the rest at
/// start); a queue limit without a URI is a mistake worth stopping for.
fn mongodb_config(
    uri: Option<String>,
    queue_limit: Option<u64>,
) -> Result<Option<crate::history::mongodb::MongoConfig>, NodeError> {
    let Some(uri) = uri.map(|u| u.trim().to_owned()) else {
        return match queue_limit {
            Some(_) => Err(NodeError::Config {
                key: "mongodb-queue-limit",
                message: "is set but mongodb-uri is not".into(),
            }),
            None => Ok(None),
        };
    };
    if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") {
        // The URI may hold a password: say what is wrong without repeating it.
        return Err(NodeError::Config {
            key: "mongodb-uri",
            message: "must start with mongodb:// or mongodb+srv://".into(),
        });
    }
    let queue_limit = queue_limit.unwrap_or(crate::history::mongodb::DEFAULT_QUEUE_LIMIT);
    if queue_limit == 0 {
        return Err(NodeError::Config {
            key: "mongodb-queue-limit",
            message: "must be at least 1".into(),
        });
    }
    Ok(Some(crate::history::mongodb::MongoConfig {
        uri,
        queue_limit,
    }))
}

/// `url` if it is an http:// or https:// URL.
fn http_url(key: &'static str, url: &str) -> Result<String, NodeError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "http" || parsed.scheme() == "https" => Ok(url.to_owned()),
        _ => Err(NodeError::Config {
            key,
            message: format!("{url:?} is not an http:// or https:// URL"),
        }),
    }
}

fn non_empty(key: &'static str, value: Option<String>) -> Result<Option<String>, NodeError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(NodeError::Config {
            key,
            message: "must not be empty".into(),
        }),
        other => Ok(other),
    }
}

/// Reads a config file; errors name the file and the offending key.
pub fn read_file(path: &Path) -> Result<RunOptions, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::ConfigFile {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| NodeError::ConfigFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_beats_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("cascade-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "http-addr = \"127.0.0.2:9000\"\nwebrtc-addr = \"127.0.0.2:9443\"\n",
        )
        .unwrap();
        let cli = RunOptions {
            config: Some(file),
            http_addr: Some("127.0.0.3:7000".parse().unwrap()),
            ..Default::default()
        };
        let config = NodeConfig::resolve(cli).unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.3:7000");
        assert_eq!(config.webrtc_addr.to_string(), "127.0.0.2:9443");
        assert_eq!(
            config.webrtc_ingest_addr.to_string(),
            "127.0.0.2:9444",
            "publishers default to the next port"
        );
        assert_eq!(
            (config.webrtc_tcp_addr, config.webrtc_ingest_tcp_addr),
            (Some(config.webrtc_addr), Some(config.webrtc_ingest_addr)),
            "ICE-TCP listens on the WebRTC ports' numbers, on TCP"
        );
        let no_tcp = RunOptions {
            ice_tcp: Some(false),
            ..Default::default()
        };
        let config = NodeConfig::resolve(no_tcp).unwrap();
        assert_eq!(
            (config.webrtc_tcp_addr, config.webrtc_ingest_tcp_addr),
            (None, None)
        );
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.reconnect_grace, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cli = RunOptions {
            reconnect_grace: Some("soon".into()),
            ..Default::default()
        };
        assert!(
            NodeConfig::resolve(cli)
                .unwrap_err()
                .to_string()
                .contains("reconnect-grace")
        );
        let cli = RunOptions {
            webrtc_addr: Some("0.0.0.0:8443".parse().unwrap()),
            ..Default::default()
        };
        assert!(
            NodeConfig::resolve(cli)
                .unwrap_err()
                .to_string()
                .contains("public-ip")
        );
        for (tls, cert, key, named) in [
            (Some("self-signed"), Some("c.pem"), None, "tls"),
            (Some("on"), None, None, "tls"),
            (None, Some("c.pem"), None, "tls-key"),
            (None, None, Some("k.pem"), "tls-cert"),
        ] {
            let cli = RunOptions {
                tls: tls.map(str::to_owned),
                tls_cert: cert.map(PathBuf::from),
                tls_key: key.map(PathBuf::from),
                ..Default::default()
            };
            let err = NodeConfig::resolve(cli).unwrap_err().to_string();
            assert!(err.contains(&format!("`{named}`")), "{err}");
        }
        let err = toml::from_str::<RunOptions>("http-adr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http-adr"), "{err}");
    }

    #[test]
    fn hls_timing_and_recording_come_from_flags_and_the_file_and_bad_timing_is_refused() {
        let options: RunOptions = toml::from_str(
            "hls-part = \"200ms\"\nhls-segment = \"1s\"\nhls-window = \"2h\"\nrecord = \"cam-*\"\n[streams.show]\nrecord = true\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(options).unwrap();
        assert_eq!(
            (
                config.hls.part_target,
                config.hls.segment_target,
                config.hls.window
            ),
            (0.2, 1.0, 7200.0)
        );
        assert_eq!(config.record, vec!["cam-*".to_owned(), "show".to_owned()]);
        let defaults = NodeConfig::resolve(RunOptions::default()).unwrap();
        assert_eq!(
            defaults.hls,
            cascade_protocol::hls::packager::PackagerConfig::default()
        );
        assert!(defaults.record.is_empty());
        let cli = RunOptions {
            hls_part: Some("100ms".into()),
            ..Default::default()
        };
        let err = NodeConfig::resolve(cli).unwrap_err().to_string();
        assert!(err.contains("hls") && err.contains("0.2 to 2 s"), "{err}");
    }

    #[test]
    fn integrations_come_from_the_file_and_bad_ones_name_their_key() {
        let options: RunOptions = toml::from_str(
            "webhook-url = [\"https://a.example/hook\", \"http://b.example/hook\"]\nwebhook-secret = \"s\"\non-publish-url = \"http://a.example/may\"\non-publish-timeout = \"500ms\"\non-publish-fail-open = true\njwt-secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(options).unwrap();
        assert_eq!(config.webhooks.urls.len(), 2);
        let callback = config.on_publish.unwrap();
        assert_eq!(callback.timeout, Duration::from_millis(500));
        assert!(callback.fail_open);
        assert!(!config.access.jwt.is_empty());
        assert!(config.mongodb.is_none());
        let with_mongodb: RunOptions =
            toml::from_str("mongodb-uri = \"mongodb+srv://user:pw@cluster.example/shows\"\n")
                .unwrap();
        let mongodb = NodeConfig::resolve(with_mongodb).unwrap().mongodb.unwrap();
        assert_eq!(
            mongodb.queue_limit,
            crate::history::mongodb::DEFAULT_QUEUE_LIMIT
        );
        let secret_kept: RunOptions =
            toml::from_str("mongodb-uri = \"redis://user:hunter2@db\"\n").unwrap();
        let error = NodeConfig::resolve(secret_kept).unwrap_err().to_string();
        assert!(
            !error.contains("hunter2"),
            "a refused URI is not repeated: {error}"
        );
        let callback_only: RunOptions =
            toml::from_str("webhook-secret = \"s\"\non-publish-url = \"http://a.example/may\"\n")
                .unwrap();
        let config = NodeConfig::resolve(callback_only).unwrap();
        assert!(
            config.webhooks.secret.is_some() && config.on_publish.is_some(),
            "the secret signs the publish callback alone too"
        );
        for (toml, key) in [
            ("webhook-url = [\"ftp://x\"]", "webhook-url"),
            ("webhook-secret = \"s\"", "webhook-secret"),
            ("webhook-url = []\nwebhook-secret = \"s\"", "webhook-secret"),
            ("on-publish-url = \"nowhere\"", "on-publish-url"),
            ("jwt-secret = \"short\"", "jwt-secret"),
            ("mongodb-uri = \"postgres://db/cascade\"", "mongodb-uri"),
            ("mongodb-queue-limit = 10", "mongodb-queue-limit"),
            (
                "mongodb-uri = \"mongodb://db\"\nmongodb-queue-limit = 0",
                "mongodb-queue-limit",
            ),
        ] {
            let options: RunOptions = toml::from_str(toml).unwrap();
            let error = NodeConfig::resolve(options).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn a_stream_may_have_its_own_ladder_and_a_bad_rung_names_the_key() {
        let options: RunOptions = toml::from_str(
            "ladder = \"720p:2500,360p:800\"\n[streams.lobby]\nladder = \"none\"\n[streams.show]\nladder = \"180p:200:15\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(options).unwrap();
        assert_eq!(config.ladder.len(), 2);
        assert!(config.stream_ladders["lobby"].is_empty());
        assert_eq!(config.stream_ladders["show"][0].fps, Some(15));
        assert!(
            NodeConfig::resolve(RunOptions::default())
                .unwrap()
                .ladder
                .is_empty()
        );
        let bad: RunOptions = toml::from_str("[streams.show]\nladder = \"big\"\n").unwrap();
        let err = NodeConfig::resolve(bad).unwrap_err().to_string();
        assert!(err.contains("ladder") && err.contains("360p"), "{err}");
    }
}
