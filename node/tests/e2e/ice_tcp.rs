//! Clients on a network that drops every UDP datagram reach a node over ICE-TCP.
//!
//! The outer test builds a network namespace whose firewall (nftables) drops UDP both ways,
//! with a loopback and one ordinary interface (a veth end, as a host's eth0), and runs the
//! inner test, this same binary, inside it: every process the inner test starts (nodes,
//! Chromium, the load tester) inherits the namespace and its firewall. There Chromium, in its
//! default configuration, watches the page, and the load tester publishes and watches with
//! `--transport tcp`; a UDP viewer shows that the firewall really blocks UDP.

use std::time::Duration;

use crate::support::browser::ChromeDriver;
use crate::support::loadtest::{self, LoadPublisher};
use crate::support::netns::{CLIENT_IP, Namespace};
use crate::support::node::Node;

/// Set for the inner test's process: it runs only inside the namespace.
const INSIDE: &str = "CASCADE_E2E_INSIDE_UDP_BLOCKED_NAMESPACE";

#[test]
fn clients_behind_a_firewall_that_drops_udp_publish_and_watch_over_ice_tcp() {
    let namespace = Namespace::create("udp-blocked", &["meta l4proto udp drop"]);
    assert!(
        namespace.run_test("ice_tcp::inside_a_network_that_drops_udp", INSIDE),
        "the test inside the namespace failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside its namespace, started by the test above"]
async fn inside_a_network_that_drops_udp() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "run clients_behind_a_firewall_that_drops_udp_publish_and_watch_over_ice_tcp instead"
    );
    let node = Node::start(&[]).await;
    let _publisher =
        LoadPublisher::start(&node.url("/whip/tcp"), CLIENT_IP, &["--transport", "tcp"]);
    node.wait_live("tcp", Duration::from_secs(30)).await;

    // The firewall is real: a viewer over UDP never connects.
    let (_, report, output) = loadtest::webrtc(
        &node.url("/whep/tcp"),
        CLIENT_IP,
        &["--viewers", "1", "--duration", "3s", "--join-timeout", "4s"],
    )
    .await;
    assert_eq!(
        report["sessions_joined"],
        0,
        "UDP must be blocked here: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    // A stock Chromium (no flags about WebRTC) watches from the page.
    let mut driver = ChromeDriver::start().await;
    let watcher = driver.open().await;
    watcher.goto(&node.url("/")).await;
    watcher
        .eval(
            "document.getElementById('watch-stream').value = 'tcp';
             document.getElementById('watch-start').click(); return true",
        )
        .await;
    let decoding = tokio::time::timeout(Duration::from_secs(30), async {
        while watcher.frames_decoded().await <= 60 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if decoding.is_err() {
        let watch = watcher.eval("return window.cascade.watch").await;
        panic!("Chromium decodes nothing over ICE-TCP; watch: {watch}");
    }
    watcher.close().await;

    // Load-tester viewers over TCP get every frame, in order (full verification).
    let run = loadtest::webrtc(
        &node.url("/whep/tcp"),
        CLIENT_IP,
        &["--transport", "tcp", "--viewers", "5", "--duration", "6s"],
    )
    .await;
    loadtest::assert_all_watched(&run, 5, 3.0);
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("cascade_ice_tcp_connections"),
        "the node counts its ICE-TCP connections: {metrics}"
    );

    // A node bound to every interface that advertises another address (`--public-ip`, as
    // behind NAT) is reached at the advertised one.
    let advertised =
        Node::start(&["--webrtc-addr", "0.0.0.0:28443", "--public-ip", CLIENT_IP]).await;
    let _second = LoadPublisher::start(
        &advertised.url("/whip/nat"),
        CLIENT_IP,
        &["--transport", "tcp"],
    );
    advertised.wait_live("nat", Duration::from_secs(30)).await;
    let run = loadtest::webrtc(
        &advertised.url("/whep/nat"),
        CLIENT_IP,
        &["--transport", "tcp", "--viewers", "2", "--duration", "4s"],
    )
    .await;
    loadtest::assert_all_watched(&run, 2, 2.0);
}
