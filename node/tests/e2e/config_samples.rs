//! Every sample in `cluster-config/` is a valid node configuration, and a bad one is refused
//! with a message naming the key.

use std::process::Command;

#[test]
fn every_sample_config_in_cluster_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let options = cascade_node::config::read_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cascade_node::config::NodeConfig::resolve(cascade_node::config::RunOptions {
                config: Some(path.clone()),
                ..options
            })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no sample configs found in {}", dir.display());
}

#[test]
fn invalid_config_exits_non_zero_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("cascade-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "http-addr = \"not an address\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http-addr"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["run", "--reconnect-grace", "soon"])
        .env("CASCADE_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("reconnect-grace"));

    let output = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--http-addr",
        "--webrtc-addr",
        "--public-ip",
        "--data-dir",
        "--config",
        "CASCADE_HTTP_ADDR",
    ] {
        assert!(help.contains(flag), "`cascade run --help` documents {flag}");
    }
}
