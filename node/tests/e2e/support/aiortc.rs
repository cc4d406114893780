//! aiortc (Python, from PyPI) as an independent, non-Rust WebRTC peer, driven through
//! `node/tests/interop/aiortc_peer.py` in its default configuration.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiortc_peer.py")
}

/// The Python with aiortc: `CASCADE_INTEROP_PYTHON`, else the venv the README's test command
/// makes (`.venv-interop`), else `python3`.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("CASCADE_INTEROP_PYTHON") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-interop/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

fn command() -> Command {
    let python = python();
    let check = std::process::Command::new(&python)
        .args(["-c", "import aiortc"])
        .status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "{} cannot import aiortc: run scripts/install-deps.sh test (it makes .venv-interop)",
        python.display()
    );
    let mut command = Command::new(python);
    command.arg(script()).kill_on_drop(true);
    command
}

/// An aiortc publisher sending numbered frames and a tone until dropped.
pub struct AiortcPublisher(#[allow(dead_code)] Child);

impl AiortcPublisher {
    /// Publishes to `url` with `codec` (`vp8` or `h264`) for `seconds`; returns once the
    /// offer was answered.
    pub async fn start(url: &str, codec: &str, seconds: u32) -> AiortcPublisher {
        let mut child = command()
            .args(["publish", url, "--codec", codec, "--seconds"])
            .arg(seconds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("aiortc answers within 30 s")
            .unwrap()
            .unwrap_or_default();
        assert!(
            first.contains("\"published\": true"),
            "aiortc publish: {first}"
        );
        AiortcPublisher(child)
    }
}

/// Watches `url` with aiortc for `seconds`; its JSON summary (frames decoded, numbers and
/// presentation times in order, audio frames).
pub async fn watch(url: &str, seconds: u32) -> serde_json::Value {
    let output = command()
        .args(["watch", url, "--seconds"])
        .arg(seconds.to_string())
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("python runs");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("aiortc watch printed no summary ({e}): {text}"))
}
