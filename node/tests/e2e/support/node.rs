//! A real `cascade` process on its own loopback address, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::wait_for;

/// The RTMP port of test nodes: the default, on each node's own address.
pub const RTMP_PORT: u16 = 1935;

/// The SRT port of test nodes: the default, on each node's own address.
pub const SRT_PORT: u16 = 9710;

/// A running node.
pub struct Node {
    child: Child,
    pub ip: String,
    pub http: String,
    pub data_dir: std::path::PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts `cascade run` on a fresh 127.x.y.z address with `extra` arguments and waits
    /// until it is ready (a member of a cluster with a leader).
    pub async fn start(extra: &[&str]) -> Node {
        let node = Self::spawn(extra);
        node.wait_ready().await;
        node
    }

    /// Like [`Node::start`], with environment variables (e.g. `SSL_CERT_FILE`).
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let node = Self::spawn_with_env(extra, env);
        node.wait_ready().await;
        node
    }

    /// Starts `cascade run` without waiting for it (e.g. one expected to fail).
    pub fn spawn(extra: &[&str]) -> Node {
        Self::spawn_with_env(extra, &[])
    }

    fn spawn_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ip = format!("127.{}.{}.{}", 10 + (pid % 200), (pid / 200) % 250, n);
        let data_dir = std::env::temp_dir().join(format!("cascade-e2e-{pid}-{n}"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = launch(&ip, &data_dir, &extra, &env);
        let scheme = if extra.iter().any(|a| a == "--tls" || a == "--tls-cert") {
            "https"
        } else {
            "http"
        };
        Node {
            child,
            http: format!("{scheme}://{ip}:18080"),
            ip,
            data_dir,
            extra,
            env,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        if self.http.starts_with("https") {
            // The tests' HTTP client speaks no TLS: curl checks HTTPS nodes (any certificate).
            let ready = format!("{}/readyz", self.http);
            wait_for(
                &format!("{ready} answers over HTTPS"),
                Duration::from_secs(30),
                || {
                    let ready = ready.clone();
                    async move {
                        tokio::process::Command::new("curl")
                            .args(["-ksf", "-o", "/dev/null", &ready])
                            .status()
                            .await
                            .is_ok_and(|s| s.success())
                    }
                },
            )
            .await;
            return;
        }
        let client = reqwest::Client::new();
        let ready = format!("{}/readyz", self.http);
        wait_for(
            &format!("{} answers /readyz", self.http),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let ready = ready.clone();
                async move {
                    client
                        .get(&ready)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// `n` nodes on loopback: the first bootstraps, the others join it; returns once every
    /// node is listed healthy and the voters are in place.
    pub async fn cluster(n: usize, token: &str, extra: &[&str]) -> Vec<Node> {
        let mut first_args = vec!["--token", token];
        first_args.extend_from_slice(extra);
        let first = Node::start(&first_args).await;
        let join = first.join_addr();
        let mut nodes = vec![first];
        for _ in 1..n {
            let mut args = vec!["--join", join.as_str(), "--token", token];
            args.extend_from_slice(extra);
            nodes.push(Node::start(&args).await);
        }
        // The voters the cluster settles on: `--voters` when given, else the default three.
        let wanted = extra
            .windows(2)
            .find(|pair| pair[0] == "--voters")
            .and_then(|pair| pair[1].parse().ok())
            .unwrap_or(3);
        let voters = n.min(wanted);
        wait_for(
            "every node is healthy and the voters are promoted",
            Duration::from_secs(30),
            || async {
                let (_, overview) = nodes[0].json("/api/v1/cluster").await;
                let listed = overview["nodes"].as_array().map_or(0, Vec::len);
                let healthy = overview["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().all(|node| node["healthy"] == true));
                listed == n
                    && healthy
                    && overview["voters"].as_array().map_or(0, Vec::len) == voters
            },
        )
        .await;
        nodes
    }

    /// Where an encoder publishes `stream` to this node over RTMP.
    pub fn rtmp_url(&self, stream: &str) -> String {
        format!("rtmp://{}:{RTMP_PORT}/live/{stream}", self.ip)
    }

    /// Where an encoder publishes to this node over SRT, with `query` (`streamid=...`).
    pub fn srt_url(&self, query: &str) -> String {
        format!("srt://{}:{SRT_PORT}?{query}", self.ip)
    }

    /// The address other nodes join through.
    pub fn join_addr(&self) -> String {
        format!("{}:18080", self.ip)
    }

    /// SIGHUP: reload what the node reloads (its TLS certificate).
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, as a crash or a pulled plug.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again with the same address, data dir and arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = launch(&self.ip, &self.data_dir, &self.extra, &self.env);
        self.wait_ready().await;
    }

    /// Waits for the process to exit by itself; its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// This node's id as the cluster API shows it.
    pub async fn id(&self) -> String {
        let (_, cluster) = self.json("/api/v1/cluster").await;
        cluster["this_node"].as_str().unwrap_or_default().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's samples in `/metrics`, over all its labels (0 when absent).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            // An empty float sum is -0.0, which messages print as "-0".
            + 0.0
    }

    /// Whether `/metrics` counts an ended session of `kind` with `outcome`; returns the
    /// metrics text for the failure message too.
    pub async fn counted_session_end(&self, kind: &str, outcome: &str) -> (bool, String) {
        let metrics = self.metrics().await;
        let counted = metrics.lines().any(|l| {
            l.starts_with("cascade_sessions_ended_total")
                && l.contains(&format!("kind=\"{kind}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        });
        (counted, metrics)
    }

    /// Waits until `stream` is `live` here (a publisher's media arrived), up to `limit`.
    pub async fn wait_live(&self, stream: &str, limit: Duration) {
        let path = format!("/api/v1/streams/{stream}");
        wait_for(&format!("{stream} is live"), limit, || async {
            let (status, info) = self.json(&path).await;
            status == 200 && info["state"] == "live"
        })
        .await;
    }

    /// `GET` a JSON document.
    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        self.json_as(path, None).await
    }

    /// `GET` a JSON document with `Authorization: Bearer <token>`.
    pub async fn json_as(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new().get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

fn launch(
    ip: &str,
    data_dir: &std::path::Path,
    extra: &[String],
    env: &[(String, String)],
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cascade"));
    command
        .arg("run")
        .arg("--http-addr")
        .arg(format!("{ip}:18080"))
        .arg("--quic-addr")
        .arg(format!("{ip}:14433"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("CASCADE_TEST_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // A test that binds its WebRTC address itself (e.g. all interfaces in its own network
    // namespace) says so in `extra`.
    if !extra.iter().any(|a| a == "--webrtc-addr") {
        command.arg("--webrtc-addr").arg(format!("{ip}:18443"));
    }
    command.spawn().expect("spawning the cascade binary")
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
