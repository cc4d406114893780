//! Every sample in `cluster-config/` is a valid node configuration, and a bad one is refused
//! with a message naming the key.

use std::process::Command;

#[test]
fn every_sample_config_in_cluster_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
    let mut checked = 0;
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    for path in paths {
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
    assert!(checked >= 4, "sample configs missing in {}", dir.display());
}

/// The port of a default address constant such as `"127.0.0.1:8080"`.
fn port(addr: &str) -> String {
    addr.rsplit(':').next().unwrap().to_owned()
}

#[test]
fn the_kubernetes_manifests_use_the_default_ports_and_the_probe_routes() {
    use cascade_node::config::{
        DEFAULT_HTTP_ADDR, DEFAULT_QUIC_ADDR, DEFAULT_WEBRTC_ADDR, DEFAULT_WEBRTC_INGEST_ADDR,
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cluster-config/kubernetes/cascade.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    // Each named container port is followed by its number and protocol.
    for (name, addr, protocol) in [
        ("http", DEFAULT_HTTP_ADDR, "TCP"),
        ("webrtc", DEFAULT_WEBRTC_ADDR, "UDP"),
        ("webrtc-ingest", DEFAULT_WEBRTC_INGEST_ADDR, "UDP"),
        ("quic", DEFAULT_QUIC_ADDR, "UDP"),
    ] {
        let at = lines
            .windows(3)
            .find(|w| w[0] == format!("- name: {name}") && w[1].starts_with("containerPort:"))
            .unwrap_or_else(|| panic!("container port {name} missing"));
        assert_eq!(at[1], format!("containerPort: {}", port(addr)), "{name}");
        assert_eq!(at[2], format!("protocol: {protocol}"), "{name}");
        assert!(
            yaml.contains(&format!("--{name}-addr \"${{POD_IP}}:{}\"", port(addr))),
            "the {name} flag uses the same port"
        );
    }
    for (probe, path) in [
        ("livenessProbe:", "/healthz"),
        ("readinessProbe:", "/readyz"),
    ] {
        let at = lines
            .iter()
            .position(|l| *l == probe)
            .unwrap_or_else(|| panic!("{probe}"));
        assert_eq!(lines[at + 2], format!("path: {path}"), "{probe}");
        assert_eq!(lines[at + 3], "port: http", "{probe}");
    }
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
        "--quic-addr",
        "CASCADE_QUIC_ADDR",
        "--join",
        "--token",
        "--voters",
        "--roles",
        "--region",
        "--webrtc-threads",
        "--webrtc-fast-path",
        "--webrtc-send-batch",
        "--jwt-secret",
        "--webhook-url",
        "--on-publish-url",
        "--mongodb-uri",
        "--mongodb-queue-limit",
    ] {
        assert!(help.contains(flag), "`cascade run --help` documents {flag}");
    }
}
