//! Signed tokens (JWT) as an integrator's backend issues them: the node holds an HS256 secret
//! and an ES256 public key; FFmpeg publishes RTMP with an ES256 token as its stream key, a
//! WHEP viewer and an HLS player watch with an HS256 token for `show*`. Tokens for another
//! stream, for the other operation, or expired are refused: the client hears only that its
//! token is not valid, the node's metrics say why.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

use crate::support::encoder::{Encoder, H264File};
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

const SECRET: &str = "the show platform's secret, shared with every node";

fn claims(stream: &str, ops: &[&str], expires_in_secs: i64) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    serde_json::json!({"stream": stream, "ops": ops, "exp": now + expires_in_secs})
}

fn hs256(stream: &str, ops: &[&str], expires_in_secs: i64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims(stream, ops, expires_in_secs),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// How many refusals `/metrics` counts with all of `labels` (`name="value"` each).
fn refusals(metrics: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cascade_access_refusals_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_play_token_for_show_star_admits_show1_and_refuses_other_streams_and_expired_tokens() {
    let issuer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public_key = std::env::temp_dir().join(format!("cascade-jwt-{}.pem", std::process::id()));
    std::fs::write(&public_key, issuer.public_key_pem()).unwrap();
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-public-key",
        public_key.to_str().unwrap(),
    ])
    .await;

    // The encoder's stream key is an ES256 token allowing publish on show1.
    let publish = encode(
        &Header::new(Algorithm::ES256),
        &claims("show1", &["publish"], 600),
        &EncodingKey::from_ec_pem(issuer.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let source = H264File::encode(30, "jwt-show1");
    let _encoder = Encoder::flv(
        &source.args(None),
        &node.rtmp_url(&format!("show1?key={publish}")),
    );
    node.wait_live("show1", Duration::from_secs(20)).await;

    let play = hs256("show*", &["play"], 600);
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/show1"), Some(&play))
        .await
        .expect("a play token for show* admits a viewer of show1");
    viewer
        .assert_decodable(30, "the viewer with a show* token")
        .await;

    let (status, body) = Viewer::connect(&node.ip, &node.url("/whep/other"), Some(&play))
        .await
        .err()
        .expect("the show* token does not open another stream");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let expired = hs256("show*", &["play"], -3600);
    let (status, body) = Viewer::connect(&node.ip, &node.url("/whep/show1"), Some(&expired))
        .await
        .err()
        .expect("an expired token is refused");
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.contains("expire") && !body.contains("signature"),
        "the client is not told why: {body}"
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims("show*", &["play"], 600),
        &EncodingKey::from_secret(b"a guess at the platform's secret, 32+ chars"),
    )
    .unwrap();
    let (status, _) = Viewer::connect(&node.ip, &node.url("/whep/show1"), Some(&forged))
        .await
        .err()
        .expect("a token that does not verify is refused");
    assert_eq!(status, 401);

    // A play token cannot publish.
    let (ok, said) = Encoder::try_flv(&node.rtmp_url(&format!("show2?key={play}")));
    assert!(!ok && said.contains("not valid"), "FFmpeg shows: {said}");

    // HLS takes the same token as ?token=.
    let client = reqwest::Client::new();
    let playlist = node.url("/hls/show1/index.m3u8");
    wait_for(
        "the HLS playlist with the token",
        Duration::from_secs(20),
        || async {
            client
                .get(format!("{playlist}?token={play}"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    for (query, what) in [
        (String::new(), "no token"),
        (format!("?token={expired}"), "expired"),
    ] {
        let status = client
            .get(format!("{playlist}{query}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "HLS with {what}");
    }

    let metrics = node.metrics().await;
    for (labels, what) in [
        (
            &[
                r#"action="play""#,
                r#"reason="wrong_stream""#,
                r#"via="whep""#,
            ][..],
            "another stream",
        ),
        (
            &[r#"action="play""#, r#"reason="expired""#, r#"via="whep""#],
            "expired, on WHEP",
        ),
        (
            &[r#"reason="bad_signature""#, r#"via="whep""#],
            "a forged signature",
        ),
        (
            &[
                r#"action="publish""#,
                r#"reason="wrong_operation""#,
                r#"via="rtmp""#,
            ],
            "a play token publishing",
        ),
        (
            &[r#"reason="missing_token""#, r#"via="hls""#],
            "HLS without a token",
        ),
        (
            &[r#"reason="expired""#, r#"via="hls""#],
            "HLS with an expired token",
        ),
    ] {
        assert!(
            refusals(&metrics, labels) >= 1,
            "{what} counted as {labels:?}: {}",
            metrics
                .lines()
                .filter(|l| l.starts_with("cascade_access_refusals_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let _ = std::fs::remove_file(&public_key);
}
