//! Wiring one node together: metrics recorder, WebRTC engine, stream registry, HTTP server.

use std::sync::Arc;

use cascade_roles::origin::StreamRegistry;
use cascade_roles::webrtc::{WebRtcEngine, WebRtcSettings};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::NodeError;
use crate::config::NodeConfig;
use crate::http::AppState;

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let metrics = install_metrics();
    let engine = WebRtcEngine::start(WebRtcSettings {
        bind: config.webrtc_addr,
        public_ip: config.public_ip,
    })
    .await?;
    let registry = StreamRegistry::new(engine, config.reconnect_grace);
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

    announce(&config, http_addr);
    let state = AppState {
        registry,
        access: Arc::new(config.access.clone()),
        metrics,
    };
    let app = crate::http::router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|source| NodeError::HttpBind {
        addr: http_addr,
        source,
    })?;
    tracing::info!("node stopped");
    Ok(())
}

fn announce(config: &NodeConfig, http_addr: std::net::SocketAddr) {
    tracing::info!(
        http = %http_addr,
        webrtc = %config.webrtc_addr,
        data_dir = %config.data_dir.display(),
        reconnect_grace_secs = config.reconnect_grace.as_secs_f64(),
        "Cascade node up: single-node cluster with every role (origin, edge)"
    );
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
    println!("Cascade is running. Open http://{http_addr}/ to publish and watch.");
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
