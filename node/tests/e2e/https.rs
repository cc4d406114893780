//! HTTPS on the HTTP port: a browser publishes its camera from the page over HTTPS (a secure
//! page is what lets a browser on another machine capture at all), and a certificate renewed
//! on disk is served after SIGHUP without a restart.

use std::time::Duration;

use crate::support::browser::ChromeDriver;
use crate::support::node::Node;
use crate::support::wait_for;

/// The SHA-256 fingerprint of the certificate `addr` serves, read by OpenSSL's client.
async fn served_fingerprint(addr: &str) -> String {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn write_certificate(dir: &std::path::Path, name: &str) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_served_over_https_publishes_the_camera_and_another_decodes_it() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&["--tls", "self-signed"]).await;
    let mut driver = ChromeDriver::start().await;
    // Only the certificate is special here (made by the node at start); WebRTC runs as in
    // any stock browser.
    let trusting = ["--ignore-certificate-errors"];
    let publisher = driver.open_with(&trusting).await;
    publisher.goto(&node.url("/?publish=secure")).await;
    publisher.wait_publishing(Duration::from_secs(20)).await;
    assert_eq!(
        publisher.eval("return window.isSecureContext").await,
        true,
        "the page is a secure context"
    );
    let watcher = driver.open_with(&trusting).await;
    watcher.goto(&node.url("/?watch=secure")).await;
    watcher.wait_decoded(30, Duration::from_secs(20)).await;
    watcher.close().await;
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup_and_a_broken_one_is_not() {
    let dir = std::env::temp_dir().join(format!("cascade-e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_certificate(&dir, "first.example");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let node = Node::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let addr = format!("{}:18080", node.ip);
    let first = served_fingerprint(&addr).await;
    assert!(
        first.contains("Fingerprint"),
        "OpenSSL read a certificate: {first:?}"
    );

    write_certificate(&dir, "second.example");
    node.hangup();
    wait_for(
        "the renewed certificate is served",
        Duration::from_secs(5),
        || async { served_fingerprint(&addr).await != first },
    )
    .await;
    let second = served_fingerprint(&addr).await;

    std::fs::write(&key, "not a key").unwrap();
    node.hangup();
    wait_for(
        "the failed reload is counted",
        Duration::from_secs(5),
        || async {
            let out = tokio::process::Command::new("curl")
                .args(["-ks", &node.url("/metrics")])
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .contains("cascade_tls_reloads_total{result=\"error\"}")
        },
    )
    .await;
    assert_eq!(
        served_fingerprint(&addr).await,
        second,
        "a broken file keeps the previous certificate"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
