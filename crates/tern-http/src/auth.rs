//! Who is asking: HTTP Basic against the broker's own credentials check
//! (the same users as MQTT), API tokens, or nobody (anonymous, where the
//! broker allows it, and by default only from loopback).
//!
//! A verified user name and password are remembered for a while (keyed by
//! a keyed hash of the password, never the password), so that a client
//! sending the same credentials with every request pays the password hash
//! once, not per request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use bytes::Bytes;
use tern_broker::policy::Credentials;
use tern_codec::ReasonCode;

use crate::error::ApiError;
use crate::HttpConfig;

/// How long a verified password is remembered.
const REMEMBER: Duration = Duration::from_secs(60);
/// How many verified passwords are remembered at most (then forgotten
/// all at once: the cost is one hash per user again).
const REMEMBER_MAX: usize = 4096;

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct User {
    /// The user name; `None`: anonymous.
    pub(crate) name: Option<String>,
    /// Named in the configuration as an admin.
    pub(crate) admin: bool,
}

/// Verified credentials, remembered.
pub(crate) struct Verified {
    hasher: RandomState,
    seen: Mutex<HashMap<(String, u64), Instant>>,
}

impl Default for Verified {
    fn default() -> Verified {
        Verified {
            hasher: RandomState::new(),
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl Verified {
    fn key(&self, user: &str, password: &[u8]) -> (String, u64) {
        (user.to_owned(), self.hasher.hash_one(password))
    }

    fn known(&self, key: &(String, u64), now: Instant) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(key).is_some_and(|&until| until > now)
    }

    fn remember(&self, key: (String, u64), now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBER_MAX {
            seen.clear();
        }
        seen.insert(key, now + REMEMBER);
    }
}

/// The clock, for the remembered credentials.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Who `headers` say is asking, checked.
pub(crate) async fn authenticate(
    config: &HttpConfig,
    verified: &Verified,
    sessions: &crate::session::Sessions,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<User, ApiError> {
    let name = match headers.get(header::AUTHORIZATION) {
        None => {
            anonymous(config, peer)?;
            None
        }
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::unauthorized("unreadable Authorization header"))?;
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                Some(basic(config, verified, rest.trim()).await?)
            } else if scheme == "Session" {
                // Set by the session layer from the cookie, or given as a
                // token: a signed-in dashboard.
                let s = sessions.get(rest.trim()).ok_or_else(|| {
                    ApiError::unauthorized("the session has ended: sign in again")
                })?;
                return Ok(User {
                    name: s.user,
                    admin: s.admin,
                });
            } else if scheme.eq_ignore_ascii_case("bearer") {
                let user = config
                    .tokens
                    .get(rest.trim())
                    .ok_or_else(|| ApiError::unauthorized("unknown API token"))?;
                Some(user.clone())
            } else {
                return Err(ApiError::unauthorized(
                    "Authorization must be Basic or Bearer",
                ));
            }
        }
    };
    let admin = is_admin(config, name.as_deref());
    Ok(User { name, admin })
}

/// Whether `user` is an admin: named in `[http] admins`. (Anonymous
/// requests never are; a dashboard session signed in anonymously may be:
/// see the session module.)
pub(crate) fn is_admin(config: &HttpConfig, user: Option<&str>) -> bool {
    user.is_some_and(|n| config.admins.iter().any(|a| a == n))
}

/// Whether anonymous requests are taken from `peer`.
pub(crate) fn anonymous(config: &HttpConfig, peer: SocketAddr) -> Result<(), ApiError> {
    if !peer.ip().is_loopback() && !config.anonymous_remote {
        return Err(ApiError::unauthorized(
            "anonymous requests are taken from loopback only",
        ));
    }
    if let Some(check) = &config.check {
        // Without a user name no password hash is involved: cheap.
        check(&credentials(None, None)).map_err(|code| {
            ApiError::refused(code, "anonymous access is not allowed").unauthorized_status()
        })?;
    }
    Ok(())
}

async fn basic(config: &HttpConfig, verified: &Verified, b64: &str) -> Result<String, ApiError> {
    let bad = || ApiError::unauthorized("malformed Basic credentials");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (user, password) = raw.split_once(':').ok_or_else(bad)?;
    if user.is_empty() {
        return Err(bad());
    }
    verify(config, verified, user, password.as_bytes()).await
}

/// Checks a user name and password with the broker's credentials check
/// (remembered a while once verified).
pub(crate) async fn verify(
    config: &HttpConfig,
    verified: &Verified,
    user: &str,
    password: &[u8],
) -> Result<String, ApiError> {
    let Some(check) = config.check.clone() else {
        return Err(ApiError::unauthorized(
            "this server takes no passwords over HTTP",
        ));
    };
    let key = verified.key(user, password);
    let now = now();
    if verified.known(&key, now) {
        return Ok(user.to_owned());
    }
    let c = credentials(
        Some(user.to_owned()),
        Some(Bytes::copy_from_slice(password)),
    );
    // The password hash is slow on purpose: off the runtime's threads.
    let result = tokio::task::spawn_blocking(move || check(&c))
        .await
        .map_err(|_| ApiError::unavailable("the credentials check failed"))?;
    match result {
        Ok(()) => {
            verified.remember(key, now);
            Ok(user.to_owned())
        }
        Err(code) => {
            Err(ApiError::refused(code, "bad user name or password").unauthorized_status())
        }
    }
}

fn credentials(username: Option<String>, password: Option<Bytes>) -> Credentials {
    Credentials {
        client_id: String::new(),
        username,
        password,
        method: None,
        data: None,
    }
}

impl ApiError {
    /// A refusal of who is asking is a 401 (which asks for credentials),
    /// whatever its reason code.
    fn unauthorized_status(mut self) -> ApiError {
        if self.reason != Some(ReasonCode::Success) {
            self.status = axum::http::StatusCode::UNAUTHORIZED;
        }
        self
    }
}
