//! `cascade`: run a node of a Cascade live-streaming cluster.

use clap::{Parser, Subcommand};

use cascade_node::config::{NodeConfig, RunOptions};

/// Cascade: a distributed live-video streaming cluster.
#[derive(Debug, Parser)]
#[command(name = "cascade", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a node. With no options: a single-node cluster with every role, HTTP on
    /// 127.0.0.1:8080, WebRTC media on UDP 127.0.0.1:8443, state in ./cascade-data.
    /// Every option can also be set as CASCADE_<NAME> or as a key in the --config file.
    Run(Box<RunOptions>),
    /// Operate a cluster through any node's admin API: list, drain or remove nodes.
    Node(cascade_node::node_cli::NodeOptions),
    /// Internal: a node starts one of these per transcoded stream. Reads source frames on
    /// stdin, writes renditions on stdout (docs/transcoder.md); `job` is its JSON.
    #[command(hide = true)]
    Transcode {
        /// The job, as JSON.
        job: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,str0m=warn,ractor=warn,openraft=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = match cli.command {
        Command::Run(options) => options,
        Command::Node(options) => return run_node_command(options),
        Command::Transcode { job } => return run_transcoder(&job),
    };
    let config = match NodeConfig::resolve(*options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cascade: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cascade: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cascade_node::node::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cascade: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_node_command(options: cascade_node::node_cli::NodeOptions) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cascade: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cascade_node::node_cli::run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cascade node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_transcoder(job: &str) -> std::process::ExitCode {
    let job = match serde_json::from_str(job) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("cascade transcode: the job is not valid JSON: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match cascade_roles::transcoder::pipeline::run(&job) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cascade transcode: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
