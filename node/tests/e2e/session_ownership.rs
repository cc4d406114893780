//! Only a session's owner (its `Location`, with the Bearer token that opened it) or an
//! operator (the admin token) ends it; the public API shows no session ids or addresses.

use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};

async fn delete(url: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().delete(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_owners_and_operators_end_sessions_and_visitors_see_no_session_ids() {
    let node = Node::start(&["--publish-token", "pub", "--admin-token", "adm"]).await;
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/owned"), Some("pub"))
        .await
        .expect("WHIP with the publish token");
    let viewer = Viewer::connect(&node.ip, &node.url("/whep/owned"), None)
        .await
        .expect("WHEP (play is open)");
    let publisher_id = publisher.session_url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(publisher_id.len(), 32, "128-bit ids: {publisher_id}");
    assert!(publisher_id.bytes().all(|b| b.is_ascii_hexdigit()));

    // What any visitor may read names no session and no address.
    for path in ["/api/v1/streams", "/api/v1/streams/owned"] {
        let (status, body) = get(&node.url(path), None).await;
        assert_eq!(status, 200);
        assert!(
            !body.contains(&publisher_id),
            "{path} leaks the session id: {body}"
        );
        assert!(
            !body.contains("remote_addr"),
            "{path} shows addresses: {body}"
        );
        assert!(!body.contains(&node.ip), "{path} shows addresses: {body}");
    }
    let sessions = node.url("/api/v1/streams/owned/sessions");
    assert_eq!(get(&sessions, None).await.0, 401);
    assert_eq!(get(&sessions, Some("pub")).await.0, 401);
    let (status, body) = get(&sessions, Some("adm")).await;
    assert_eq!(status, 200);
    assert!(body.contains(&publisher_id), "{body}");

    // The publisher's Location alone is not enough: it was opened with a token.
    assert_eq!(delete(&publisher.session_url, None).await, 403);
    assert_eq!(
        delete(&publisher.session_url, Some("someone-else")).await,
        403
    );
    // A Location that is not exactly the session's.
    let other_stream = publisher
        .session_url
        .replace("/whip/owned/", "/whip/other/");
    assert_eq!(delete(&other_stream, Some("pub")).await, 404);
    let as_viewer = publisher.session_url.replace("/whip/", "/whep/");
    assert_eq!(
        delete(&as_viewer, Some("pub")).await,
        404,
        "a WHIP session is not a WHEP one"
    );
    let short = format!("{}/whip/owned/{}", node.http, &publisher_id[..16]);
    assert_eq!(delete(&short, Some("pub")).await, 404);
    let (_, info) = node.json("/api/v1/streams/owned").await;
    assert_eq!(info["state"], "connecting", "still there: {info}");

    // The viewer opened without a token: its Location is enough. An operator ends anything.
    assert_eq!(delete(&viewer.session_url, None).await, 200);
    assert_eq!(delete(&publisher.session_url, Some("adm")).await, 200);
    let (counted, metrics) = node.counted_session_end("publisher", "deleted").await;
    assert!(counted, "{metrics}");
    assert!(
        metrics.contains("reason=\"not_session_owner\""),
        "refusals are counted: {metrics}"
    );

    // And the owner with its token.
    let again = Publisher::connect(&node.ip, &node.url("/whip/owned2"), Some("pub"))
        .await
        .unwrap();
    assert_eq!(delete(&again.session_url, Some("pub")).await, 200);
}
