//! `tern`: the MQTT broker of Tern (`tern broker`), a drop-in for Mosquitto.
//!
//! ```text
//! tern broker                     127.0.0.1:1883, anonymous clients, safe limits
//! tern broker -p 1884 --bind 0.0.0.0 -v
//! ```
//!
//! Exit codes: 0 after a clean shutdown (SIGINT, SIGTERM), 1 when the broker
//! cannot start (a port in use, a bad flag), 2 for usage errors.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tern_tokio::{Server, ServerConfig};

/// MQTT for Rust, done properly.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker (3.1, 3.1.1 and 5.0).
    Broker(BrokerArgs),
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// TCP port to listen on.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Configuration file (TOML).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Broker shards (one per core by default).
    #[arg(long)]
    shards: Option<usize>,
    /// Largest packet accepted from a client, in bytes.
    #[arg(long)]
    max_packet_size: Option<u32>,
    /// Seconds between `$SYS` updates; 0 turns them off.
    #[arg(long)]
    sys_interval: Option<u64>,
    /// More logging: -v for debug, -vv for trace.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Broker(args) => broker(args),
    }
}

fn broker(args: BrokerArgs) -> ExitCode {
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Logs go to stderr, like Mosquitto's; colours only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if let Some(path) = &args.config {
        eprintln!(
            "tern: {}: configuration files are not supported yet; use the flags",
            path.display()
        );
        return ExitCode::from(2);
    }
    let mut config = ServerConfig {
        tcp: vec![SocketAddr::new(args.bind, args.port)],
        ..ServerConfig::default()
    };
    if let Some(n) = args.shards {
        config.shards = n;
    }
    if let Some(max) = args.max_packet_size {
        config.broker.max_packet_size = max;
    }
    if let Some(secs) = args.sys_interval {
        config.broker.sys_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        match server.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
