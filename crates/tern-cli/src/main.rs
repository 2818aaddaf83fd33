//! `tern`: the MQTT broker of Tern (`tern broker`), a drop-in for Mosquitto,
//! `tern pub` and `tern sub` (mosquitto_pub and mosquitto_sub's flags), and
//! `tern passwd` for the broker's password file.
//!
//! ```text
//! tern broker                       127.0.0.1:1883, anonymous clients, safe limits
//! tern broker -p 1884 --bind 0.0.0.0 -v
//! tern broker -c tern.toml          listeners, limits, passwords, ACL, $SYS, logging
//! tern passwd -c passwd alice       create the file with user alice (password on stdin)
//! tern passwd -b passwd bob s3cret  add or replace bob, password on the command line
//! tern passwd -D passwd bob         delete bob
//! tern bench fanout -m 100 -d 10    load-test a broker (see `tern bench --help`)
//! tern sub -t 'home/#' -v           print messages (see `tern sub --help`)
//! tern pub -t home/doorbell/pressed -m 1 -q 1
//! ```
//!
//! Exit codes: 0 after a clean shutdown (SIGINT, SIGTERM) or a done
//! `passwd`; 1 when the broker cannot start or a file cannot be written;
//! 2 for usage errors and invalid configuration. `tern pub`/`tern sub`: 0
//! done, 1 refused or lost (connection, message or subscription), 2 usage
//! errors, 27 when `tern sub -W` ran out of time.

mod bench;
mod config;
mod http;
mod passwd;
mod persistence;
mod pubsub;
mod rules;

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::{Args, Parser, Subcommand};
use tern_broker::policy::{
    Acl, AllowAll, Authenticator, Authorizer, ClientInfo, Credentials, Verdict,
};
use tern_codec::{ReasonCode, TopicFilter, TopicName};
use tern_tokio::{Server, ServerConfig, TlsSettings};
use tracing::{info, warn};

use crate::passwd::PasswordFile;

/// mimalloc: shard threads free what other shards allocated (a message is
/// read on one and delivered by another), which glibc malloc serializes on
/// its arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Create or update a password file (salted Argon2id hashes).
    Passwd(PasswdArgs),
    /// Load-test an MQTT broker: conn, fanin, fanout, p2p, latency.
    Bench(bench::BenchArgs),
    /// Publish messages (mosquitto_pub's flags).
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages (mosquitto_sub's flags).
    Sub(pubsub::SubArgs),
    /// Run a rules file against any MQTT broker, or try it on a recording
    /// (`tern rules test FILE --replay FILE`).
    Rules(rules::RulesArgs),
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// TCP port to listen on (overrides the file's listeners).
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Address to listen on (with -p; 127.0.0.1 by default).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Configuration file (TOML).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Broker shards (by default one per core but one, at least one).
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
    /// Keep sessions, queued messages and retained messages in this
    /// directory, across restarts (overrides the file's [persistence] dir).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Start even if the store cannot be opened: it is renamed
    /// (tern.redb.damaged-N) and an empty one begins.
    #[arg(long)]
    start_anyway: bool,
    /// The HTTP API's address (overrides the file's http listeners), or
    /// `off`. Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR|off")]
    http: Option<String>,
    /// A rules file to run inside the broker (overrides the file's
    /// `[rules] file`).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PasswdArgs {
    /// Create a new file (replacing an existing one).
    #[arg(short = 'c')]
    create: bool,
    /// Take the password from the command line instead of standard input.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D', conflicts_with_all = ["create", "batch"])]
    delete: bool,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password (with -b).
    password: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Broker(args) => broker(args),
        Command::Passwd(args) => passwd_command(args),
        Command::Bench(args) => ExitCode::from(bench::run(args)),
        Command::Pub(args) => ExitCode::from(pubsub::publish(args)),
        Command::Sub(args) => ExitCode::from(pubsub::subscribe(args)),
        Command::Rules(args) => rules::main(args),
    }
}

fn passwd_command(a: PasswdArgs) -> ExitCode {
    let mut file = if a.create {
        PasswordFile::default()
    } else {
        match PasswordFile::load(&a.file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("tern passwd: {e} (use -c to create it)");
                return ExitCode::FAILURE;
            }
        }
    };
    if a.delete {
        if !file.delete(&a.user) {
            eprintln!("tern passwd: no user {:?} in {}", a.user, a.file.display());
            return ExitCode::FAILURE;
        }
    } else {
        let password = match (a.batch, a.password) {
            (true, Some(p)) => p,
            (true, None) => {
                eprintln!("tern passwd: -b needs the password after the user name");
                return ExitCode::from(2);
            }
            (false, Some(_)) => {
                eprintln!("tern passwd: a password on the command line needs -b");
                return ExitCode::from(2);
            }
            (false, None) => {
                let mut line = String::new();
                if std::io::stdin().lock().read_line(&mut line).is_err() || line.is_empty() {
                    eprintln!("tern passwd: no password on standard input");
                    return ExitCode::from(2);
                }
                line.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        if let Err(e) = file.set(&a.user, password.as_bytes()) {
            eprintln!("tern passwd: {e}");
            return ExitCode::from(2);
        }
    }
    match file.save(&a.file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The ACL in force, replaced on SIGHUP.
#[derive(Clone)]
struct LiveAcl(Arc<RwLock<Option<Acl>>>);

impl Authorizer for LiveAcl {
    fn publish(&mut self, c: &ClientInfo, t: &TopicName) -> Verdict {
        match &mut *self.0.write().unwrap_or_else(|e| e.into_inner()) {
            Some(acl) => acl.publish(c, t),
            None => AllowAll.publish(c, t),
        }
    }
    fn subscribe(&mut self, c: &ClientInfo, f: &TopicFilter) -> Verdict {
        match &mut *self.0.write().unwrap_or_else(|e| e.into_inner()) {
            Some(acl) => acl.subscribe(c, f),
            None => AllowAll.subscribe(c, f),
        }
    }
}

/// Passwords in force, replaced on SIGHUP.
/// Answers what needs no password hash at once, and asks for the rest
/// (`check_credentials` verifies it off the shard).
struct QuickAuth(Arc<RwLock<Passwords>>);

impl Authenticator for QuickAuth {
    fn authenticate(&mut self, c: &Credentials) -> Verdict {
        self.0.read().unwrap_or_else(|e| e.into_inner()).quick(c)
    }
}

struct Passwords {
    file: Option<PasswordFile>,
    allow_anonymous: bool,
}

impl Passwords {
    /// The verdict when no password hash is needed; `Ask` when one is.
    fn quick(&self, c: &Credentials) -> Verdict {
        if c.method.is_some() {
            return Verdict::Deny(ReasonCode::BadAuthenticationMethod);
        }
        match (&c.username, &self.file) {
            (None, _) if self.allow_anonymous => Verdict::Allow,
            (None, _) => Verdict::Deny(ReasonCode::NotAuthorized),
            (Some(_), None) if self.allow_anonymous => Verdict::Allow,
            (Some(_), None) => Verdict::Deny(ReasonCode::BadUserNameOrPassword),
            (Some(_), Some(_)) => Verdict::Ask,
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<config::File, String> {
    match path {
        Some(p) => config::load(p),
        None => Ok(config::File::default()),
    }
}

fn load_passwords(file: &config::File) -> Result<Passwords, String> {
    let pw = match &file.auth.password_file {
        Some(p) => Some(PasswordFile::load(p)?),
        None => None,
    };
    Ok(Passwords {
        file: pw,
        allow_anonymous: file.auth.allow_anonymous,
    })
}

fn broker(args: BrokerArgs) -> ExitCode {
    let file = match load_config(args.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match args.verbose {
        0 => file.log.level.clone().unwrap_or_else(|| "info".into()),
        1 => "debug".into(),
        _ => "trace".into(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tern: [log] level {level:?}: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr, like Mosquitto's; colours only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let passwords = match load_passwords(&file) {
        Ok(p) => Arc::new(RwLock::new(p)),
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    let acl = LiveAcl(Arc::new(RwLock::new(file.acl())));

    let mut config = ServerConfig::default();
    let mut tls_files = Vec::new();
    let mut http_listeners = Vec::new();
    if !file.listener.is_empty() {
        config.tcp.clear();
        for l in &file.listener {
            match l.kind {
                config::ListenerKind::Tcp => config.tcp.push(l.bind),
                config::ListenerKind::Ws => config
                    .ws
                    .push((l.bind, l.path.clone().unwrap_or_else(|| "/mqtt".into()))),
                config::ListenerKind::Http => {
                    let tls = match (&l.cert, &l.key) {
                        (Some(cert), Some(key)) => {
                            match TlsSettings::load(cert, key, None, false) {
                                Ok(t) => {
                                    tls_files.push((t.clone(), cert.clone(), key.clone(), None));
                                    Some(t)
                                }
                                Err(e) => {
                                    eprintln!("tern: listener {}: {e}", l.bind);
                                    return ExitCode::from(2);
                                }
                            }
                        }
                        _ => None,
                    };
                    http_listeners.push(http::Listener {
                        bind: l.bind,
                        tls,
                        explicit: true,
                    });
                }
                config::ListenerKind::Tls => {
                    let (cert, key) = (
                        l.cert.clone().expect("checked"),
                        l.key.clone().expect("checked"),
                    );
                    let ca = l.client_ca.clone();
                    match TlsSettings::load(&cert, &key, ca.as_deref(), l.cn_as_username) {
                        Ok(t) => {
                            tls_files.push((t.clone(), cert, key, ca));
                            config.tls.push((l.bind, t));
                        }
                        Err(e) => {
                            eprintln!("tern: listener {}: {e}", l.bind);
                            return ExitCode::from(2);
                        }
                    }
                }
            }
        }
    }
    config.max_connection_rate = file.limits.max_connection_rate;
    if args.port.is_some() || args.bind.is_some() {
        let ip = args.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        config.tcp = vec![SocketAddr::new(ip, args.port.unwrap_or(1883))];
    }
    file.apply(&mut config.broker);
    if let Some(n) = args.shards.or(file.shards) {
        config.shards = n;
    }
    if let Some(max) = args.max_packet_size {
        config.broker.max_packet_size = max;
    }
    if let Some(secs) = args.sys_interval {
        config.broker.sys_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    let check = passwords.clone();
    config.check_credentials = Some(Arc::new(move |c| {
        let p = check.read().unwrap_or_else(|e| e.into_inner());
        match p.quick(c) {
            Verdict::Allow => Ok(()),
            Verdict::Deny(code) => Err(code),
            Verdict::Ask => match (&c.username, &p.file) {
                (Some(u), Some(f)) if f.verify(u, c.password.as_deref().unwrap_or(&[])) => Ok(()),
                _ => Err(ReasonCode::BadUserNameOrPassword),
            },
        }
    }));
    let http_listeners = match http::listeners(
        args.http.as_deref(),
        http_listeners,
        !file.listener.is_empty(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    let mut http_settings = http::settings(
        &file,
        config.check_credentials.clone().expect("set above"),
        config.broker.max_packet_size,
    );
    if let Some(f) = &args.rules {
        let user = file.rules.as_ref().and_then(|r| r.user.clone());
        http_settings.rules = Some(tern_http::rules::RulesConfig {
            file: f.clone(),
            user,
        });
    }
    // Rules and dashboards learn presence from the broker's events.
    config.broker.presence_events = true;
    let data_dir = args.data.clone().or_else(|| file.persistence.dir.clone());
    http_settings.data_dir = data_dir.clone();
    http_settings.history = match http::history(&file, data_dir.as_deref()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    // The cases without a password hash are answered on the shard; only a
    // hash to verify goes to a blocking thread.
    let quick = passwords.clone();
    config.authenticator = Some(Arc::new(move || Box::new(QuickAuth(quick.clone()))));
    let acl_factory = acl.clone();
    config.authorizer = Some(Arc::new(move || Box::new(acl_factory.clone())));

    config.persistence = match persistence::open(args.data.as_deref(), args.start_anyway, &file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    };

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
    let config_path = args.config.clone();
    runtime.block_on(async move {
        // Registered before the broker says it listens: a SIGTERM right
        // after that line is a clean shutdown, not the default death.
        let stop = shutdown_signal();
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        let gateway = match tern_http::Gateway::new(server.handle(), http_settings) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
        if let Err(e) = http::start(&gateway, http_listeners, &http_stopped).await {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
        let rules = gateway.rules();
        tokio::spawn(reload_on_sighup(
            config_path,
            passwords,
            acl,
            tls_files,
            rules,
        ));
        let stop = async move {
            stop.await;
            let _ = http_stop.send(true);
            // The rules save their state while the broker still runs.
            gateway.stop().await;
        };
        match server.run(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// On SIGHUP: reread the configuration file's ACL and the password file. A
/// file that does not load leaves the old settings in force.
type TlsFiles = Vec<(TlsSettings, PathBuf, PathBuf, Option<PathBuf>)>;

async fn reload_on_sighup(
    path: Option<PathBuf>,
    passwords: Arc<RwLock<Passwords>>,
    acl: LiveAcl,
    tls: TlsFiles,
    rules: Option<tern_http::rules::Rules>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let loaded = load_config(path.as_deref()).and_then(|f| {
                let p = load_passwords(&f)?;
                Ok((f, p))
            });
            match loaded {
                Ok((f, p)) => {
                    let users = p.file.as_ref().map_or(0, PasswordFile::len);
                    *passwords.write().unwrap_or_else(|e| e.into_inner()) = p;
                    *acl.0.write().unwrap_or_else(|e| e.into_inner()) = f.acl();
                    info!(users, acl_rules = f.acl.len(), "reloaded on SIGHUP");
                }
                Err(e) => warn!(error = %e, "reload on SIGHUP failed; keeping the old settings"),
            }
            for (t, cert, key, ca) in &tls {
                match t.reload(cert, key, ca.as_deref()) {
                    Ok(()) => info!(cert = %cert.display(), "TLS certificate reloaded"),
                    Err(e) => warn!(error = %e, "TLS reload failed; keeping the old certificate"),
                }
            }
            if let Some(r) = &rules {
                match r.reload() {
                    Ok(n) => info!(rules = n, "rules reloaded"),
                    Err(e) => warn!(error = %e, "rules reload failed; the old rules go on"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, passwords, acl, tls, rules);
    }
}

/// SIGINT or SIGTERM: the handlers are registered when this is called
/// (within the runtime), the future ends at the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Some(mut one), None) | (None, Some(mut one)) => {
                    one.recv().await;
                }
                (None, None) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
