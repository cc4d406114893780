//! The `cascade-loadtest` binary as the tests' publisher and viewer crowd.
//!
//! `cargo test --workspace` builds it before any test runs; [`binary`] makes sure, once per
//! test run, that it is this source's build (for a narrower `cargo test -p cascade-node` too).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Path to the `cascade-loadtest` binary of this build, brought up to date once per test run
/// (a no-op when it is: only building it when missing ran an old load tester against a new
/// node after a change to either).
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cascade = PathBuf::from(env!("CARGO_BIN_EXE_cascade"));
            let path = cascade.with_file_name("cascade-loadtest");
            let mut build = Command::new(env!("CARGO"));
            build.args([
                "build",
                "--locked",
                "-p",
                "cascade-loadtest",
                "--bin",
                "cascade-loadtest",
            ]);
            // The same profile as the node under test, so that the binary lands beside it.
            if cascade
                .parent()
                .and_then(|dir| dir.file_name())
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building cascade-loadtest failed");
            assert!(path.exists(), "cargo built no {}", path.display());
            path
        })
        .clone()
}

/// A `cascade-loadtest publish` running in the background, killed when dropped.
pub struct LoadPublisher(std::process::Child);

impl LoadPublisher {
    /// Publishes to `url` from `local_ip` with extra arguments (e.g. `--source synthetic`).
    pub fn start(url: &str, local_ip: &str, extra: &[&str]) -> LoadPublisher {
        let child = Command::new(binary())
            .args(["publish", "--url", url, "--local-ip", local_ip])
            .args(extra)
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cascade-loadtest starts");
        LoadPublisher(child)
    }
}

impl LoadPublisher {
    /// SIGKILLs the publisher: no DELETE, no DTLS close, it just stops sending.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for LoadPublisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_filter() -> String {
    std::env::var("CASCADE_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs `cascade-loadtest webrtc` to completion; returns its exit code, its JSON report (if
/// it wrote one) and its output.
pub async fn webrtc(url: &str, local_ip: &str, extra: &[&str]) -> (i32, serde_json::Value, Output) {
    let mut args = vec!["--local-ip", local_ip];
    args.extend_from_slice(extra);
    run("webrtc", url, &args).await
}

/// Runs `cascade-loadtest hls` to completion, as [`webrtc`] does.
pub async fn hls(url: &str, extra: &[&str]) -> (i32, serde_json::Value, Output) {
    run("hls", url, extra).await
}

async fn run(mode: &str, url: &str, extra: &[&str]) -> (i32, serde_json::Value, Output) {
    let report = std::env::temp_dir().join(format!(
        "cascade-loadtest-report-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    let mut command = tokio::process::Command::new(binary());
    command
        .args([mode, "--url", url, "--report"])
        .arg(&report)
        .args(extra)
        .env("RUST_LOG", log_filter())
        .kill_on_drop(true);
    let output = command.output().await.expect("cascade-loadtest runs");
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&report);
    (output.status.code().unwrap_or(-1), json, output)
}

/// Asserts a `webrtc` run where every one of `viewers` joined and none failed, each expected
/// more than `seconds` of 30 fps video, and at least 98 % of the frames arrived. Returns the
/// frames received.
pub fn assert_all_watched(
    (code, report, output): &(i32, serde_json::Value, Output),
    viewers: u64,
    seconds: f64,
) -> f64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(*code, 0, "{stdout}");
    assert_eq!(report["sessions_joined"], viewers, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    let expected = report["frames_expected"].as_f64().unwrap();
    let received = report["frames_received"].as_f64().unwrap();
    assert!(expected > viewers as f64 * 30.0 * seconds, "{stdout}");
    assert!(received >= expected * 0.98, "{stdout}");
    received
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
