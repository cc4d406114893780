//! The REST contract: a node serves its OpenAPI document, refuses in the one error shape, and
//! schemathesis (PyPI, property-based) finds no 5xx and no response outside the contract.
//!
//! The fuzzer creates pulls and restreams to whatever URLs it invents, so it runs with the
//! node inside a network namespace whose firewall drops everything not addressed to
//! 127.0.0.0/8: nothing it makes up leaves the machine.

use std::process::Command;
use std::time::Duration;

use crate::support::encoder::{Encoder, H264File};
use crate::support::netns::Namespace;
use crate::support::node::Node;

const INSIDE: &str = "CASCADE_API_CONTRACT_INSIDE";

#[test]
fn the_api_keeps_its_contract_under_property_based_requests() {
    let namespace = Namespace::create(
        "api-contract",
        &["ip daddr != 127.0.0.0/8 drop", "meta nfproto ipv6 drop"],
    );
    assert!(
        namespace.run_test(
            "api_contract::inside_a_network_that_reaches_only_loopback",
            INSIDE
        ),
        "the test inside the namespace failed"
    );
}

/// An error body: `{"error": code, "message": text}` and nothing else.
fn assert_error_shape(what: &str, body: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let fields = value.as_object().unwrap();
    assert_eq!(fields.len(), 2, "{what}: {body}");
    assert!(
        value["error"].is_string() && value["message"].is_string(),
        "{what}: {body}"
    );
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside its namespace, started by the test above"]
async fn inside_a_network_that_reaches_only_loopback() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "run the_api_keeps_its_contract_under_property_based_requests instead"
    );
    let node = Node::start(&[]).await;
    let client = reqwest::Client::new();
    // A live stream named as the contract's examples are, so that requests reach what serves
    // a stream (HLS, snapshots, WHEP, recordings) and not only its 404s.
    let source = H264File::encode(30, "api-contract");
    let _encoder = Encoder::flv(&source.args(None), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;

    let served = client
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let contract: serde_json::Value = served.json().await.unwrap();
    assert_eq!(contract["openapi"], "3.1.0");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let regenerated =
        std::env::temp_dir().join(format!("cascade-openapi-{}.json", std::process::id()));
    let status = Command::new("python3")
        .arg(root.join("scripts/openapi.py"))
        .arg(&regenerated)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&regenerated).unwrap(),
        std::fs::read_to_string(root.join("node/assets/openapi.json")).unwrap(),
        "node/assets/openapi.json is what scripts/openapi.py writes: run it and commit both"
    );
    let _ = std::fs::remove_file(&regenerated);

    // The documented example offer is one the node takes: a browser's, H.264 and Opus.
    let example = contract["paths"]["/whep/{stream}"]["post"]["requestBody"]["content"]
        ["application/sdp"]["example"]
        .as_str()
        .unwrap();
    let answered = client
        .post(node.url("/whep/show"))
        .header("content-type", "application/sdp")
        .body(example.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 201, "{}", answered.text().await.unwrap());

    // The refusals axum itself makes, in the shape every handler uses.
    let unknown = client.get(node.url("/no/such/path")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        assert_error_shape("404", &unknown.text().await.unwrap())["error"],
        "not_found"
    );
    let wrong_method = client
        .put(node.url("/api/v1/streams"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().contains_key("allow"));
    assert_error_shape("405", &wrong_method.text().await.unwrap());
    let bad_query = client
        .get(node.url("/api/v1/history/streams?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), 400);
    assert_error_shape("bad query", &bad_query.text().await.unwrap());
    let bad_body = client
        .post(node.url("/api/v1/streams"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_body.status(), 400);
    assert_error_shape("bad body", &bad_body.text().await.unwrap());
    let bad_offer = client
        .post(node.url("/whep/show"))
        .header("content-type", "application/sdp")
        .body("v=0\r\nnot an offer")
        .send()
        .await
        .unwrap();
    assert!(
        bad_offer.status().is_client_error(),
        "{}",
        bad_offer.status()
    );
    assert_error_shape("bad offer", &bad_offer.text().await.unwrap());

    let schemathesis = root.join(".venv-interop/bin/schemathesis");
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking({
        let url = node.url("");
        let root = root.clone();
        move || {
            Command::new(&schemathesis)
                .arg("run")
                .arg(format!("{url}/api/v1/openapi.json"))
                .args(["--url", &url])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_headers_conformance,response_schema_conformance",
                ])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", "25", "--seed", "1", "--workers", "1"])
                .args(["--request-timeout", "20"])
                .env("NO_COLOR", "1")
                .env("PYTHONPATH", root.join("scripts"))
                .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
                .output()
                .expect("schemathesis runs (scripts/install-deps.sh test installs it)")
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "schemathesis took {:?}; the end of its report:\n{}",
        started.elapsed(),
        report
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis found responses outside the contract:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Still serving after all that.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = node.json("/api/v1/streams").await;
    assert_eq!(status, 200);
}
