//! `cascade node list|drain|remove`: the operator's commands, talking to the admin API of any
//! node (`GET /api/v1/cluster`, `POST .../nodes/{id}/drain`, `DELETE .../nodes/{id}`).

use clap::{Args, Subcommand};

/// Options of `cascade node`.
#[derive(Debug, Args)]
pub struct NodeOptions {
    /// HTTP address of any node of the cluster.
    #[arg(long, env = "CASCADE_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// The cluster's admin token, if it has one.
    #[arg(long, env = "CASCADE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(subcommand)]
    pub action: NodeAction,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Every node: id, addresses, Raft membership, roles, health, load.
    List,
    /// Stop sending new viewers and streams to a node; its roles are handed over.
    Drain {
        /// The node's id as `cascade node list` shows it.
        id: String,
    },
    /// Take a node out of the cluster (stop its process afterwards).
    Remove {
        /// The node's id as `cascade node list` shows it.
        id: String,
    },
}

/// Runs the command; the error is printed by `main`.
pub async fn run(options: NodeOptions) -> Result<(), String> {
    let base = if options.api.starts_with("http") {
        options.api.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", options.api)
    };
    let client = reqwest::Client::new();
    let request = match &options.action {
        NodeAction::List => client.get(format!("{base}/api/v1/cluster")),
        NodeAction::Drain { id } => client.post(format!("{base}/api/v1/cluster/nodes/{id}/drain")),
        NodeAction::Remove { id } => client.delete(format!("{base}/api/v1/cluster/nodes/{id}")),
    };
    let request = match &options.admin_token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("{status}: {}", text.trim()));
    }
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("unreadable answer: {e}"))?;
    match options.action {
        NodeAction::List => print!("{}", node_table(&json)),
        NodeAction::Drain { id } => println!("node {id} is draining"),
        NodeAction::Remove { id } => println!("node {id} was removed from the cluster"),
    }
    Ok(())
}

/// The table `cascade node list` prints, from `GET /api/v1/cluster`.
pub fn node_table(cluster: &serde_json::Value) -> String {
    let leader = cluster["leader"].as_str().unwrap_or("");
    let mut out = format!(
        "{:<16}  {:<21}  {:<21}  {:<7}  {:<7}  {:<9}  {:>5}  {:>7}  {}\n",
        "ID", "HTTP", "QUIC", "RAFT", "HEALTH", "STATE", "CPU%", "VIEWERS", "ROLES"
    );
    for node in cluster["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_str().unwrap_or("?");
        let raft = match (id == leader, node["raft"].as_str().unwrap_or("?")) {
            (true, _) => "leader",
            (false, other) => other,
        };
        let roles: Vec<&str> = node["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        out += &format!(
            "{:<16}  {:<21}  {:<21}  {:<7}  {:<7}  {:<9}  {:>5.0}  {:>7}  {}\n",
            id,
            node["http_addr"].as_str().unwrap_or("?"),
            node["quic_addr"].as_str().unwrap_or("?"),
            raft,
            if node["healthy"].as_bool() == Some(true) {
                "ok"
            } else {
                "silent"
            },
            if node["draining"].as_bool() == Some(true) {
                "draining"
            } else {
                "active"
            },
            node["load"]["cpu_pct"].as_f64().unwrap_or(0.0),
            node["load"]["viewers"].as_u64().unwrap_or(0),
            roles.join(","),
        );
    }
    out
}
