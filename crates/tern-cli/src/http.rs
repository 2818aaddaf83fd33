//! `tern broker`'s HTTP API: which listeners, with what settings, and
//! starting them beside the broker (tern-http).

use std::net::SocketAddr;

use tern_codec::TopicFilter;
use tern_http::history::api::duration_of;
use tern_http::{Gateway, HistoryConfig, HttpConfig};
use tern_store::history::Rule;
use tern_tokio::{CredentialCheck, TlsSettings};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config;

/// The HTTP API's address with zero configuration.
pub const DEFAULT: &str = "127.0.0.1:8080";

/// One HTTP listener.
pub struct Listener {
    /// Address and port.
    pub bind: SocketAddr,
    /// HTTPS.
    pub tls: Option<TlsSettings>,
    /// Asked for (a failure to bind stops the broker); the zero
    /// configuration default only warns.
    pub explicit: bool,
}

/// The listeners: `--http` (an address, or `off`), else the file's, else
/// the default (when the file names no listener at all).
pub fn listeners(
    arg: Option<&str>,
    from_file: Vec<Listener>,
    file_has_listeners: bool,
) -> Result<Vec<Listener>, String> {
    match arg {
        Some("off") => Ok(Vec::new()),
        Some(a) => {
            let bind = a
                .parse()
                .map_err(|e| format!("--http {a:?}: an address and port, or off ({e})"))?;
            Ok(vec![Listener {
                bind,
                tls: None,
                explicit: true,
            }])
        }
        None if file_has_listeners => Ok(from_file),
        None => Ok(vec![Listener {
            bind: DEFAULT.parse().expect("a valid address"),
            tls: None,
            explicit: false,
        }]),
    }
}

/// The HTTP API's settings from the file: users through the broker's own
/// credentials check.
pub fn settings(file: &config::File, check: CredentialCheck, max_packet_size: u32) -> HttpConfig {
    let h = &file.http;
    let mut c = HttpConfig {
        check: Some(check),
        admins: h.admins.clone(),
        anonymous_remote: h.anonymous_remote,
        max_body: max_packet_size as usize,
        tokens: h
            .token
            .iter()
            .map(|t| (t.token.clone(), t.user.clone()))
            .collect(),
        ..HttpConfig::default()
    };
    c.webhooks = file.webhook.clone();
    // A broker without users trusts its own machine: anonymous requests
    // from loopback may manage it (the dashboard's controls included).
    c.anonymous_admin = file.auth.password_file.is_none();
    c.rules = file.rules.as_ref().map(|r| tern_http::rules::RulesConfig {
        file: r.file.clone(),
        user: r.user.clone(),
    });
    if let Some(n) = h.max_streams {
        c.max_streams = n;
    }
    if let Some(n) = h.stream_buffer {
        c.stream_buffer = n.max(1);
    }
    c
}

/// The history's settings: the file's `[[history]]` rules, kept in the
/// data directory, which they need.
pub fn history(
    file: &config::File,
    data: Option<&std::path::Path>,
) -> Result<Option<HistoryConfig>, String> {
    if file.history.is_empty() {
        return Ok(None);
    }
    let Some(dir) = data else {
        return Err("[[history]] needs a data directory (--data DIR, or [persistence] dir)".into());
    };
    let mut rules = Vec::new();
    for h in &file.history {
        rules.push(Rule {
            filter: TopicFilter::new(&h.filter)
                .map_err(|e| format!("history {:?}: {e}", h.filter))?,
            keep: duration_of(&h.keep)?,
            value: h.value.clone(),
        });
    }
    Ok(Some(HistoryConfig {
        path: dir.join("history.redb"),
        rules,
    }))
}

/// Binds every listener and serves it until `stop` turns true. A listener
/// asked for that cannot bind is an error; the default one is a warning.
pub async fn start(
    gateway: &Gateway,
    listeners: Vec<Listener>,
    stop: &watch::Receiver<bool>,
) -> Result<(), String> {
    for l in listeners {
        let tcp = match tokio::net::TcpListener::bind(l.bind).await {
            Ok(t) => t,
            Err(e) if !l.explicit => {
                warn!(addr = %l.bind, error = %e, "the HTTP API is off: cannot listen (--http ADDR picks another address)");
                continue;
            }
            Err(e) => return Err(format!("cannot listen on {} (http): {e}", l.bind)),
        };
        let kind = if l.tls.is_some() { "https" } else { "http" };
        // Said before the broker says it listens: the port is known then.
        info!(kind, addr = %tcp.local_addr().map_err(|e| e.to_string())?, "HTTP listener");
        let (g, mut stop) = (gateway.clone(), stop.clone());
        let until = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let served = match l.tls {
            Some(tls) => tokio::spawn(g.serve_tls(tcp, tls, until)),
            None => tokio::spawn(g.serve(tcp, until)),
        };
        tokio::spawn(async move {
            if let Ok(Err(e)) = served.await {
                warn!(error = %e, "HTTP listener failed");
            }
        });
    }
    Ok(())
}
