//! Wiring one node together: metrics recorder, WebRTC engine, stream registry, HTTP server.

use std::sync::Arc;

use cascade_roles::origin::StreamRegistry;
use cascade_roles::webrtc::{Engines, WebRtcEngine, WebRtcSettings};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use cascade_protocol::cluster::NodeRole;
use cascade_roles::quic::{ALPN_CLUSTER, ALPN_HLS, ALPN_RELAY, NodeEndpoint, handshake};
use cascade_roles::relay::Relay;
use cascade_roles::transcoder::{TranscoderCommand, Transcoders};

use crate::NodeError;
use crate::cluster::state::NodeRecord;
use crate::cluster::{Cluster, format_id, identity, network};
use crate::config::NodeConfig;
use crate::http::AppState;
use crate::http::tls::{CertStore, ClientAddr, TlsListener, TlsSource};

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let metrics = install_metrics();
    let engine = |bind, tcp_bind, serves, threads| {
        WebRtcEngine::start(WebRtcSettings {
            bind,
            tcp_bind,
            serves,
            public_ip: config.public_ip,
            handshake_timeout: config.handshake_timeout,
            fast_path: config.webrtc_fast_path,
            send_batch: config.webrtc_send_batch,
            threads,
        })
    };
    let engines = Engines {
        egress: engine(
            config.webrtc_addr,
            config.webrtc_tcp_addr,
            "viewers",
            config.webrtc_threads,
        )
        .await?,
        ingest: engine(
            config.webrtc_ingest_addr,
            config.webrtc_ingest_tcp_addr,
            "publishers",
            1,
        )
        .await?,
    };
    let registry = StreamRegistry::new(
        engines.egress.load_handle(),
        config.reconnect_grace,
        config.limits,
    );
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| NodeError::HttpBind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| NodeError::HttpBind {
            addr: config.http_addr,
            source,
        })?;

    // Other nodes' HLS fetches are answered by this node's routes, built further down.
    let hls_router: Arc<std::sync::OnceLock<axum::Router>> = Arc::default();
    let (cluster, relay, endpoint) =
        start_cluster(&config, http_addr, registry.clone(), hls_router.clone()).await?;
    let webhooks = crate::webhooks::Webhooks::start(
        &config.webhooks,
        &config.data_dir,
        format_id(cluster.id()),
    )?;
    let history = crate::history::History::open(
        &config.data_dir,
        &format_id(cluster.id()),
        config.mongodb.as_ref().map(|m| m.queue_limit),
    )?;
    if let Some(mongodb) = &config.mongodb {
        crate::history::mongodb::start(&history, mongodb).await?;
    }
    registry.set_observer(Arc::new(crate::observer::NodeObserver {
        webhooks: webhooks.clone(),
        history: history.clone(),
        cluster: cluster.clone(),
        node: format_id(cluster.id()),
    }));
    let access = Arc::new(config.access.clone());
    let on_publish = config.on_publish.clone().map(|callback| {
        Arc::new(crate::webhooks::on_publish::OnPublish::new(
            callback,
            config.webhooks.secret.as_deref(),
        ))
    });
    let gate = crate::ingest::NodePublishGate {
        access: access.clone(),
        cluster: cluster.clone(),
        relay: relay.clone(),
        on_publish: on_publish.clone(),
    };
    let gate: Arc<dyn cascade_roles::origin::ingest::PublishGate> = Arc::new(gate);
    cascade_roles::origin::rtmp::listen(config.rtmp_addr, registry.clone(), gate.clone()).await?;
    let srt = cascade_roles::origin::srt::SrtSettings {
        bind: config.srt_addr,
        latency: config.srt_latency,
    };
    cascade_roles::origin::srt::listen(srt, registry.clone(), gate, access.clone()).await?;
    announce(&config, http_addr, &cluster);
    let transcoders = start_transcoders(&config, &registry, &relay, &cluster)?;
    let rendition_feeds = cascade_roles::origin::renditions::OriginRenditions::run(
        registry.clone(),
        relay.clone(),
        Arc::new(cluster.clone()),
        ladders(&config),
    );
    let hls_edge = crate::http::hls::edge::HlsEdge::new(endpoint.clone());
    let packagers = cascade_roles::packager::Packagers::new(
        registry.clone(),
        Some(relay.clone()),
        Some(Arc::new(crate::http::hls::edge::StandbyAligner {
            cluster: cluster.clone(),
            edge: hls_edge.clone(),
        })),
        config.hls,
    );
    let recordings = cascade_roles::packager::recording::Recordings::open(
        config.data_dir.join("recordings"),
        packagers.clone(),
        config.record.clone(),
    )?;
    record_automatically(recordings.clone(), cluster.clone());
    let events = webhooks.clone();
    let recorded = history.clone();
    let node_id = format_id(cluster.id());
    recordings.on_ready(move |info| {
        let mut data = serde_json::to_value(info).unwrap_or_default();
        data["url"] = format!("/recordings/{}/index.m3u8", info.header.id).into();
        let record = crate::observer::recording_record(&data, &node_id);
        let ended_at = record["ended_at"]
            .as_f64()
            .unwrap_or_else(cascade_protocol::clock::unix_seconds);
        recorded.record(crate::history::Table::Recordings, ended_at, record);
        events.emit("recording.ready", data);
    });
    cluster.set_webhooks(webhooks.clone());
    let state = AppState {
        packagers,
        recordings,
        hls_edge,
        transcoders,
        rendition_feeds,
        registry,
        engines,
        access,
        webhooks,
        on_publish,
        history,
        metrics,
        cluster: cluster.clone(),
        relay,
        admin_token: config.admin_token.as_deref().map(Arc::from),
        scheme: if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
    };
    let router = crate::http::router(state);
    let _ = hls_router.set(router.clone());
    let app = router.into_make_service_with_connect_info::<ClientAddr>();
    let served = match &config.tls {
        None => {
            println!("Cascade is running. Open http://{http_addr}/ to publish and watch.");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
        Some(source) => {
            let names = vec![http_addr.ip().to_string(), "localhost".to_owned()];
            let store = CertStore::load(source.clone(), &names)?;
            store.reload_on_sighup();
            let fingerprint = store.fingerprint();
            tracing::info!(%fingerprint, self_signed = (*source == TlsSource::SelfSigned), "serving HTTPS");
            println!("Cascade is running. Open https://{http_addr}/ to publish and watch.");
            if *source == TlsSource::SelfSigned {
                println!(
                    "Self-signed certificate (browsers will warn): SHA-256 fingerprint {fingerprint}"
                );
            }
            let listener =
                TlsListener::new(listener, store).map_err(|source| NodeError::HttpBind {
                    addr: http_addr,
                    source,
                })?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    };
    served.map_err(|source| NodeError::HttpBind {
        addr: http_addr,
        source,
    })?;
    cluster.shutdown().await;
    endpoint.close();
    tracing::info!("node stopped");
    Ok(())
}

/// The transcoders of streams published on this node, when it may hold the role.
/// The node's ladders, as the transcoder and the origin's renditions read them.
fn ladders(config: &NodeConfig) -> cascade_roles::transcoder::Ladders {
    cascade_roles::transcoder::Ladders {
        ladder: config.ladder.clone(),
        streams: config.stream_ladders.clone(),
    }
}

fn start_transcoders(
    config: &NodeConfig,
    registry: &StreamRegistry,
    relay: &Relay,
    cluster: &Cluster,
) -> Result<Option<Transcoders>, NodeError> {
    if !config.cluster.allowed.contains(&NodeRole::Transcoder) {
        return Ok(None);
    }
    let program = std::env::current_exe().map_err(|e| NodeError::Config {
        key: "roles",
        message: format!("the transcoder role needs this program's path: {e}"),
    })?;
    let transcoders = Transcoders::new(
        registry.clone(),
        relay.clone(),
        ladders(config),
        TranscoderCommand {
            program,
            args: vec!["transcode".into()],
        },
        Arc::new(cluster.clone()),
    );
    transcoders.run();
    Ok(Some(transcoders))
}

/// Takes this node's identity (stored, bootstrapped or joined), binds the QUIC port, starts
/// Raft and serves other nodes' connections.
async fn start_cluster(
    config: &NodeConfig,
    http_addr: std::net::SocketAddr,
    registry: StreamRegistry,
    hls_router: Arc<std::sync::OnceLock<axum::Router>>,
) -> Result<(Cluster, Relay, NodeEndpoint), NodeError> {
    let mut record = NodeRecord {
        id: identity::stored_node_id(&config.data_dir).unwrap_or_else(identity::new_node_id),
        http_addr,
        quic_addr: config.quic_addr,
        region: config.cluster.region.clone(),
        allowed: config.cluster.allowed.clone(),
        draining: false,
    };
    let prepared = identity::prepare(
        &config.data_dir,
        &record,
        config.join.as_deref(),
        config.token.as_deref(),
    )
    .await?;
    record.id = prepared.node_id;
    let endpoint = NodeEndpoint::bind(config.quic_addr, prepared.identity.clone())?;
    let cluster = Cluster::start(
        &prepared,
        record,
        config.cluster.clone(),
        endpoint.clone(),
        registry.clone(),
        &config.data_dir,
    )
    .await?;
    let relay = crate::cluster::relay(endpoint.clone(), registry, &cluster);
    cluster.run_pulls(Arc::new(crate::ingest::PullGate {
        cluster: cluster.clone(),
        relay: relay.clone(),
    }));
    tokio::spawn(accept_nodes(
        endpoint.clone(),
        cluster.clone(),
        relay.clone(),
        hls_router,
    ));
    Ok((cluster, relay, endpoint))
}

/// Starts recording the streams `--record` names once this node packages them.
fn record_automatically(
    recordings: cascade_roles::packager::recording::Recordings,
    cluster: Cluster,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            recordings.record_automatic(&cluster.packaged_here()).await;
        }
    });
}

/// Hands each node connection to the service its ALPN names.
async fn accept_nodes(
    endpoint: NodeEndpoint,
    cluster: Cluster,
    relay: Relay,
    hls_router: Arc<std::sync::OnceLock<axum::Router>>,
) {
    while let Some(incoming) = endpoint.incoming().await {
        let cluster = cluster.clone();
        let relay = relay.clone();
        let hls_router = hls_router.clone();
        tokio::spawn(async move {
            let Some((connection, alpn)) = handshake(incoming).await else {
                return;
            };
            match alpn.as_slice() {
                ALPN_RELAY => relay.accept(connection),
                ALPN_CLUSTER => network::serve(cluster, connection).await,
                ALPN_HLS => crate::http::hls::upstream::serve(connection, hls_router).await,
                other => {
                    tracing::warn!(alpn = %String::from_utf8_lossy(other), "node connection for an unknown service");
                    connection.close(0u32.into(), b"unknown ALPN");
                }
            }
        });
    }
}

fn announce(config: &NodeConfig, http_addr: std::net::SocketAddr, cluster: &Cluster) {
    let members = cluster.state().nodes.len().max(1);
    tracing::info!(
        node = %format_id(cluster.id()),
        http = %http_addr,
        webrtc = %config.webrtc_addr,
        webrtc_ingest = %config.webrtc_ingest_addr,
        ice_tcp = ?config.webrtc_tcp_addr,
        quic = %config.quic_addr,
        data_dir = %config.data_dir.display(),
        reconnect_grace_secs = config.reconnect_grace.as_secs_f64(),
        members,
        "Cascade node up"
    );
    if config.admin_token.is_none() {
        tracing::warn!(
            "OPEN ADMINISTRATION: anyone who reaches {http_addr} may drain or remove nodes, issue join tokens and list every stream's sessions with their client addresses; set --admin-token"
        );
    }
    if config.access.publish_is_open() {
        tracing::warn!(
            "OPEN PUBLISHING: anyone who reaches {http_addr} may publish any stream; set --publish-token or per-stream keys"
        );
    }
    if config.access.play_is_open() {
        tracing::warn!(
            "OPEN PLAYBACK: anyone who reaches {http_addr} may watch any stream; set --play-token or per-stream keys"
        );
    }
}

fn install_metrics() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        // Only fails if a recorder is already installed, i.e. a second node in one process.
        .expect("one metrics recorder per process");
    crate::http::metrics::describe();
    handle
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails without a runtime");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
