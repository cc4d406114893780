//! WebRTC peers whose checks come from the host's own non-loopback address (what a stock
//! browser does: it offers no loopback candidates) are served by a node bound to loopback.

use std::time::Duration;

use crate::support::loadtest::{self, LoadPublisher};
use crate::support::node::Node;

/// The host's first global IPv4 address (e.g. eth0's), as `ip` lists it.
fn host_address() -> String {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("iproute2's ip is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next())
        .find(|ip| !ip.starts_with("127."))
        .map(str::to_owned)
        .expect("this test needs a non-loopback IPv4 interface (a real host has one)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_the_hosts_own_address_publish_and_watch_through_a_loopback_node() {
    let host = host_address();
    let node = Node::start(&[]).await;
    let _publisher = LoadPublisher::start(&node.url("/whip/hostaddr"), &host, &[]);
    node.wait_live("hostaddr", Duration::from_secs(60)).await;
    let run = loadtest::webrtc(
        &node.url("/whep/hostaddr"),
        &host,
        &["--viewers", "10", "--ramp", "10", "--duration", "8s"],
    )
    .await;
    loadtest::assert_all_watched(&run, 10, 4.0);
    let metrics = node.metrics().await;
    assert!(
        !metrics.contains("non_loopback_source"),
        "no datagram is dropped for its source: {metrics}"
    );
}
