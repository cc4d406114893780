use std::path::PathBuf;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The HTTPS certificate or key could not be used; the message names the file.
    #[error("TLS: {0}")]
    Tls(String),
    /// A configuration value is invalid; `key` is its name in flags, env and file.
    #[error("invalid configuration: `{key}` {message}")]
    Config {
        /// The key, e.g. `reconnect-grace`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The config file could not be read or parsed.
    #[error("cannot use config file {path}: {message}")]
    ConfigFile {
        /// The file given with `--config`.
        path: PathBuf,
        /// What went wrong (TOML errors name the key and line).
        message: String,
    },
    /// The data directory could not be created.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The directory from `data-dir`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on http-addr {addr}: {source}")]
    HttpBind {
        /// The address from `http-addr`.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The node could not bootstrap, join or start Raft.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A role failed to start.
    #[error(transparent)]
    Role(#[from] cascade_roles::RoleError),
}
