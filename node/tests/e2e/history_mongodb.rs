//! History in MongoDB (CongoDB, a real MongoDB-wire server): a run's stream record and session
//! summaries land in the documented collections, equal to the node's own records field for
//! field, with the documented indexes; MongoDB stopped for 20 s while another run happens and
//! the node restarts loses no record and stores none twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};

use crate::support::encoder::{Encoder, H264File};
use crate::support::mongodb::MongoServer;
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

const DATABASE: &str = "cascade_history_test";

/// A publisher and a viewer of `stream` come and go; returns once the node has the run.
async fn one_run(node: &Node, source: &H264File, stream: &str) {
    let encoder = Encoder::flv(&source.args(None), &node.rtmp_url(stream));
    node.wait_live(stream, Duration::from_secs(20)).await;
    let viewer = Viewer::connect(&node.ip, &node.url(&format!("/whep/{stream}")), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(viewer.delete().await, 200);
    drop(encoder);
    let path = format!("/api/v1/history/streams?stream={stream}");
    wait_for("the run is recorded", Duration::from_secs(15), || async {
        let (_, runs) = node.json(&path).await;
        runs["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;
}

/// Every record the node's API lists, by collection.
async fn api_records(node: &Node) -> Vec<(&'static str, serde_json::Value)> {
    let mut records = Vec::new();
    for (table, collection) in [("streams", "stream_runs"), ("sessions", "sessions")] {
        let (status, page) = node
            .json(&format!("/api/v1/history/{table}?limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            records.push((collection, item.clone()));
        }
    }
    records
}

/// The documents of `collection`, as JSON without MongoDB's `_id`.
async fn documents(db: &mongodb::Database, collection: &str) -> Vec<serde_json::Value> {
    let mut cursor = db
        .collection::<Document>(collection)
        .find(doc! {})
        .await
        .unwrap();
    let mut found = Vec::new();
    while cursor.advance().await.unwrap() {
        let mut document: Document = cursor.deserialize_current().unwrap();
        document.remove("_id");
        found.push(mongodb::bson::deserialize_from_document(document).unwrap());
    }
    found
}

/// Whether `a` and `b` are equal, numbers by value: a JavaScript server (CongoDB) stores a
/// whole double such as `1796201867.0` as an integer, which MongoDB itself keeps a double.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Every API record is in MongoDB exactly once and equal field for field.
async fn assert_all_stored_once(node: &Node, db: &mongodb::Database) {
    let expected = api_records(node).await;
    for collection in ["stream_runs", "sessions"] {
        let stored = documents(db, collection).await;
        let ids: HashSet<&str> = stored
            .iter()
            .map(|d| d["record_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            stored.len(),
            "a record stored twice in {collection}"
        );
        let wanted: Vec<&serde_json::Value> = expected
            .iter()
            .filter(|(c, _)| *c == collection)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(stored.len(), wanted.len(), "{collection}: {stored:#?}");
        for record in wanted {
            let document = stored
                .iter()
                .find(|d| d["record_id"] == record["record_id"])
                .unwrap_or_else(|| panic!("{collection} lacks {record}"));
            assert!(
                same(document, record),
                "{collection}: the document and the API differ:\n{document}\n{record}"
            );
        }
    }
}

/// Waits until MongoDB holds `runs` stream runs and `sessions` sessions.
async fn wait_for_documents(db: &mongodb::Database, runs: u64, sessions: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let have = (
            db.collection::<Document>("stream_runs")
                .count_documents(doc! {})
                .await,
            db.collection::<Document>("sessions")
                .count_documents(doc! {})
                .await,
        );
        if let (Ok(r), Ok(s)) = have
            && r >= runs
            && s >= sessions
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "MongoDB holds {have:?}, wanted {runs} runs and {sessions} sessions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_sessions_reach_mongodb_once_each_through_an_outage_and_a_restart() {
    let mut mongo = MongoServer::start().await;
    let uri = mongo.uri(DATABASE);
    let mut node = Node::start(&["--reconnect-grace", "1s", "--mongodb-uri", &uri]).await;
    let db = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .database(DATABASE);
    let source = H264File::encode(30, "history-mongodb");

    one_run(&node, &source, "before").await;
    wait_for_documents(&db, 1, 2, Duration::from_secs(30)).await;
    assert_all_stored_once(&node, &db).await;
    for (collection, wanted) in [
        (
            "stream_runs",
            &["record_id_1", "stream_1_ended_at_-1", "ended_at_-1"][..],
        ),
        (
            "sessions",
            &[
                "record_id_1",
                "stream_1_ended_at_-1",
                "ended_at_-1",
                "kind_1_ended_at_-1",
            ][..],
        ),
    ] {
        let names = db
            .collection::<Document>(collection)
            .list_index_names()
            .await
            .unwrap();
        for name in wanted {
            assert!(names.iter().any(|n| n == name), "{collection}: {names:?}");
        }
    }

    // The outage: a whole run and a node restart happen while MongoDB is away.
    let outage = Instant::now();
    mongo.stop();
    one_run(&node, &source, "during").await;
    wait_for(
        "the records are queued",
        Duration::from_secs(15),
        || async { node.metric_sum("cascade_history_mongodb_queued").await >= 3.0 },
    )
    .await;
    node.restart().await;
    assert!(
        node.metric_sum("cascade_history_mongodb_queued").await >= 3.0,
        "the queue survives the restart"
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    mongo.resume().await;

    wait_for_documents(&db, 2, 4, Duration::from_secs(60)).await;
    wait_for("the queue drains", Duration::from_secs(30), || async {
        node.metric_sum("cascade_history_mongodb_queued").await == 0.0
    })
    .await;
    assert_all_stored_once(&node, &db).await;
    assert_eq!(
        node.metric_sum("cascade_history_mongodb_dropped_total")
            .await,
        0.0
    );
    assert!(
        node.metric_sum("cascade_history_mongodb_written_total")
            .await
            >= 3.0
    );
}
