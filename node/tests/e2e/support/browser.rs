//! Headless Chromium driven over WebDriver (Debian's `chromedriver`), with fake camera and
//! microphone, talking to the node the way a stock browser does: no flag lets it offer loopback
//! candidates, so its checks come from the host's own address.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::wait_for;

/// A running chromedriver.
pub struct ChromeDriver {
    child: Child,
    base: String,
    profiles: Vec<std::path::PathBuf>,
}

/// One browser window.
pub struct Browser {
    base: String,
    session: String,
}

impl ChromeDriver {
    pub async fn start() -> ChromeDriver {
        // Several browser tests run at once in this process: each driver its own port.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 19000 + (std::process::id() % 500) as u16 * 8 + n % 8;
        // Its own process group, so that a failing test still takes every Chromium process
        // it started down with it (see Drop).
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (the README's test command installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        wait_for("chromedriver is up", Duration::from_secs(20), || {
            let status = status.clone();
            async move {
                reqwest::get(&status)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        ChromeDriver {
            child,
            base,
            profiles: Vec::new(),
        }
    }

    /// Opens a headless Chromium window with fake media devices.
    pub async fn open(&mut self) -> Browser {
        self.open_with(&[]).await
    }

    /// Like [`ChromeDriver::open`] with extra Chromium flags (for one test's own needs, such
    /// as accepting a test certificate; never to make WebRTC work).
    pub async fn open_with(&mut self, extra: &[&str]) -> Browser {
        // Unique per window in this process (profiles are locked by the Chromium using them).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "cascade-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        self.profiles.push(profile.clone());
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--use-fake-device-for-media-stream".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-quic".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        }}});
        let response: Value = reqwest::Client::new()
            .post(format!("{}/session", self.base))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response}"))
            .to_owned();
        Browser {
            base: self.base.clone(),
            session,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for profile in &self.profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        reqwest::Client::new()
            .post(format!("{}/session/{}/url", self.base, self.session))
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        let response: Value = reqwest::Client::new()
            .post(format!(
                "{}/session/{}/execute/sync",
                self.base, self.session
            ))
            .json(&json!({ "script": script, "args": [] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        response["value"].clone()
    }

    /// Waits until the page's publisher (opened with `/?publish=NAME`) is connected.
    pub async fn wait_publishing(&self, limit: Duration) {
        wait_for("the page publishes", limit, || async {
            self.eval("return window.cascade.publish.state").await == "connected"
        })
        .await;
    }

    /// Frames the page's player (opened with `/?watch=NAME`) has decoded so far.
    pub async fn frames_decoded(&self) -> u64 {
        self.eval("return window.cascade.watch.framesDecoded")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the page's player has decoded more than `frames` frames.
    pub async fn wait_decoded(&self, frames: u64, limit: Duration) {
        wait_for("the page decodes frames", limit, || async {
            self.frames_decoded().await > frames
        })
        .await;
    }

    pub async fn close(self) {
        let _ = reqwest::Client::new()
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}
