//! The tests' MongoDB: CongoDB, a MongoDB-wire server (`scripts/mongodb-test-server.mjs`,
//! installed by `scripts/install-deps.sh test`), on its own loopback address with its data in
//! files, so that it can be stopped (an outage) and started again with what it held.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// A running (or stopped) CongoDB.
pub struct MongoServer {
    child: Option<Child>,
    /// `host:port`.
    pub addr: String,
    data_dir: PathBuf,
}

impl MongoServer {
    /// Starts a server with an empty data directory and waits until it accepts connections.
    pub async fn start() -> MongoServer {
        let pid = std::process::id();
        let addr = format!("127.9.{}.{}:27017", (pid / 250) % 250, 1 + pid % 250);
        let data_dir = std::env::temp_dir().join(format!("cascade-e2e-mongodb-{pid}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut server = MongoServer {
            child: None,
            addr,
            data_dir,
        };
        server.resume().await;
        server
    }

    /// The connection string of database `database`.
    pub fn uri(&self, database: &str) -> String {
        format!("mongodb://{}/{database}", self.addr)
    }

    /// Stops the server (SIGKILL: an outage, not a goodbye).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address and data.
    pub async fn resume(&mut self) {
        self.stop();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("scripts/mongodb-test-server.mjs");
        let port = self.addr.rsplit(':').next().unwrap().to_owned();
        let host = self.addr.rsplit_once(':').unwrap().0.to_owned();
        let child = Command::new("node")
            .arg(&script)
            .args([&port, self.data_dir.to_str().unwrap()])
            .env("CONGODB_HOST", &host)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs scripts/mongodb-test-server.mjs (scripts/install-deps.sh test)");
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for(
            "CongoDB accepts connections",
            Duration::from_secs(20),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
            },
        )
        .await;
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
