//! `tern rules FILE -h HOST -p PORT`: a rules file run against any MQTT
//! broker (its state kept in FILE.state.json); `tern rules test FILE
//! --replay RECORDING`: what the rules would do with recorded messages,
//! replayed in virtual time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tern_client::ClientConfig;
use tern_http::rules::{self, Rules, Store};
use tern_rules::dry;
use tern_tokio::{AsyncClient, ClientOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Args)]
#[command(disable_help_flag = true, args_conflicts_with_subcommands = true)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: Option<RulesCommand>,
    /// The rules file.
    file: Option<PathBuf>,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// User name (the broker's ACL applies to what the rules publish).
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pw: Option<String>,
    /// Client id (its session keeps the rules' messages while away).
    #[arg(short = 'i', long = "id", default_value = "tern-rules")]
    id: String,
    /// Where the rules' state is kept (default: FILE.state.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Replay recorded messages through the rules in virtual time and
    /// print what would fire and when.
    Test {
        /// The rules file.
        file: PathBuf,
        /// JSON lines (`{"time": ms, "topic": ..., "payload": ...}`), or
        /// the answer of GET /api/v1/history/...
        #[arg(long)]
        replay: PathBuf,
    },
}

/// Runs the command.
pub fn main(args: RulesArgs) -> ExitCode {
    if let Some(RulesCommand::Test { file, replay }) = &args.command {
        return test(file, replay);
    }
    let Some(file) = args.file.clone() else {
        eprintln!("tern rules: give a rules file (tern rules FILE -h HOST), or tern rules test FILE --replay RECORDING");
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.state.json", file.display())));
    let rules = match Rules::load(&file, Store::read_file(&state)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern rules: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern rules: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, rules, state))
}

async fn run(args: RulesArgs, rules: Rules, state: PathBuf) -> ExitCode {
    let mut config = ClientConfig::new(&args.id);
    config.clean_start = false;
    config.session_expiry_interval = 86_400;
    config.username = match args
        .username
        .as_deref()
        .map(tern_codec::MqttString::from_str)
        .transpose()
    {
        Ok(u) => u,
        Err(e) => {
            eprintln!("tern rules: the user name: {e}");
            return ExitCode::from(2);
        }
    };
    config.password = args.pw.clone().map(bytes::Bytes::from);
    config.keep_alive = Duration::from_secs(30);
    let mut options = ClientOptions::new(config, args.host.clone(), args.port);
    options.capacity = 10_000;
    let (client, mut events) = match AsyncClient::start(options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern rules: {e}");
            return ExitCode::from(2);
        }
    };
    // The first connection's outcome is printed by the task's log; a
    // refusal for good ends the task.
    if let Err(e) = events.first_connection().await {
        eprintln!("tern rules: {}:{}: {e}", args.host, args.port);
        return ExitCode::FAILURE;
    }
    info!(
        rules = rules.list().len(),
        file = %rules.file().display(),
        broker = %format!("{}:{}", args.host, args.port),
        "rules loaded"
    );
    let stop = CancellationToken::new();
    tokio::spawn(signals(rules.clone(), stop.clone()));
    rules::run(rules, client, events, Store::File(state), stop).await;
    ExitCode::SUCCESS
}

/// SIGINT/SIGTERM stop (the state saved), SIGHUP reloads.
async fn signals(rules: Rules, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match rules.reload() {
                    Ok(n) => info!(rules = n, "rules reloaded"),
                    Err(e) => warn!(error = %e, "rules reload failed; the old rules go on"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (&rules, tokio::signal::ctrl_c().await);
    }
    stop.cancel();
}

/// `tern rules test FILE --replay RECORDING`.
fn test(file: &std::path::Path, replay: &std::path::Path) -> ExitCode {
    let name = file.display().to_string();
    let set = match std::fs::read_to_string(file)
        .map_err(|e| tern_rules::LoadError::io(&name, &e))
        .and_then(|t| tern_rules::RuleSet::parse(&t, &name))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern rules: {e}");
            return ExitCode::from(2);
        }
    };
    let recording = match std::fs::read_to_string(replay)
        .map_err(|e| e.to_string())
        .and_then(|t| dry::read_recording(&t))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern rules: {}: {e}", replay.display());
            return ExitCode::from(2);
        }
    };
    let first = recording
        .iter()
        .map(|r| match r {
            dry::Recorded::Message { time, .. } | dry::Recorded::Presence { time, .. } => *time,
        })
        .next()
        .unwrap_or(0);
    let out = dry::dry_run(set, &recording, 86_400_000);
    println!(
        "{} messages replayed; {} things happened",
        recording.len(),
        out.len()
    );
    for h in out {
        let ts = jiff::Timestamp::from_millisecond(i64::try_from(h.time).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default();
        let since = h.time.saturating_sub(first);
        println!(
            "{ts}  +{}.{:03}s  {}  {}",
            since / 1000,
            since % 1000,
            h.rule,
            h.what
        );
    }
    ExitCode::SUCCESS
}
