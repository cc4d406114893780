//! The command line as users meet it: help that lists every option, and usage errors that say
//! what is wrong. (Runs against real servers live in `node/tests/e2e/loadtest.rs`; building
//! this test also builds the binary those tests drive.)

use std::process::Command;

fn loadtest(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cascade-loadtest"))
        .args(args)
        .output()
        .expect("cascade-loadtest runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn help_lists_every_viewer_option_with_its_environment_variable() {
    let (code, text) = loadtest(&["webrtc", "--help"]);
    assert_eq!(code, 0, "{text}");
    for option in [
        "--viewers",
        "--ramp",
        "--duration",
        "--churn",
        "--reconnect",
        "--scenario",
        "--report",
        "--max-p95-latency-ms",
        "--max-loss-pct",
        "--max-join-p95-ms",
        "CASCADE_LOADTEST_URL",
    ] {
        assert!(text.contains(option), "{option} missing from:\n{text}");
    }
    let (code, text) = loadtest(&["publish", "--help"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("--source") && text.contains("synthetic"),
        "{text}"
    );
}

#[test]
fn a_bad_duration_or_churn_is_a_usage_error_that_says_why() {
    let (code, text) = loadtest(&[
        "webrtc",
        "--url",
        "http://127.0.0.1:9/whep/x",
        "--duration",
        "soon",
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("invalid duration"), "{text}");
    let (code, text) = loadtest(&[
        "webrtc",
        "--url",
        "http://127.0.0.1:9/whep/x",
        "--churn",
        "2",
    ]);
    assert_eq!(code, 1);
    assert!(text.contains("churn"), "{text}");
}
