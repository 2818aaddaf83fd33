//! Dashboard sessions: `POST /api/v1/session` with a user name and
//! password (the broker's users), or with nothing where anonymous access
//! is allowed, sets a cookie (`tern_session`, `HttpOnly`,
//! `SameSite=Strict`) and answers the session's CSRF token;
//! `GET /api/v1/session` says who the cookie is; `DELETE` signs out.
//!
//! A request with the cookie (and no `Authorization`) acts as its user.
//! A change (any method but GET and HEAD) must carry the token in
//! `X-CSRF-Token`, and is refused (403) unless the session is an admin's:
//! a session of any other user is read-only, whatever the ACL lets that
//! user publish. Sessions end after an hour unused or 12 hours in all; at
//! most [`MAX_SESSIONS`] exist (the oldest goes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::listen::Peer;
use crate::State;

/// Unused this long, a session ends.
pub const IDLE: Duration = Duration::from_secs(3600);
/// A session ends this long after sign-in, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions at most.
pub const MAX_SESSIONS: usize = 10_000;
/// Sessions of one user at most (the oldest of theirs goes): no user can
/// push everyone else's sessions out.
pub const MAX_PER_USER: usize = 20;
const COOKIE: &str = "tern_session";

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user: Option<String>,
    pub(crate) admin: bool,
    csrf: String,
    created: Instant,
    used: Instant,
}

/// The sessions.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    random: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
        }
    }
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

impl Sessions {
    fn token(&self) -> Result<String, ApiError> {
        let mut b = [0u8; 24];
        self.random
            .fill(&mut b)
            .map_err(|_| ApiError::unavailable("no randomness"))?;
        Ok(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    fn create(&self, user: Option<String>, admin: bool) -> Result<(String, Session), ApiError> {
        let (token, csrf) = (self.token()?, self.token()?);
        let t = now();
        let s = Session {
            user,
            admin,
            csrf,
            created: t,
            used: t,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| alive(s, t));
        let theirs: Vec<(&String, &Session)> =
            map.iter().filter(|(_, x)| x.user == s.user).collect();
        if theirs.len() >= MAX_PER_USER {
            if let Some(oldest) = theirs
                .iter()
                .min_by_key(|(_, x)| x.created)
                .map(|(k, _)| (*k).clone())
            {
                map.remove(&oldest);
            }
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(token.clone(), s.clone());
        Ok((token, s))
    }

    /// The session of `token`, if it is alive (it is used now).
    pub(crate) fn get(&self, token: &str) -> Option<Session> {
        let t = now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(token)?;
        if !alive(s, t) {
            map.remove(token);
            return None;
        }
        s.used = t;
        Some(s.clone())
    }

    fn remove(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

fn alive(s: &Session, t: Instant) -> bool {
    t.duration_since(s.used) < IDLE && t.duration_since(s.created) < MAX_AGE
}

/// The session cookie's token.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

/// Before the API's handlers: a request with the session cookie acts as
/// its user (as `Authorization: Session TOKEN`), with the CSRF check and
/// the read-only rule for changes.
pub(crate) async fn layer(
    AxState(state): AxState<Arc<State>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    if headers.contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let Some(token) = cookie(headers) else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let signing = path == "/api/v1/session";
    let Some(s) = state.sessions.get(&token) else {
        if signing {
            return next.run(req).await;
        }
        return ApiError::unauthorized("the session has ended: sign in again").into_response();
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if sent != Some(s.csrf.as_str()) {
            return ApiError::new(StatusCode::FORBIDDEN, "the CSRF token is missing or wrong")
                .into_response();
        }
        if !s.admin && !signing {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "this session is read-only: only admins change anything from the dashboard",
            )
            .into_response();
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Session {token}")) {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    next.run(req).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    username: Option<String>,
    password: Option<String>,
}

fn answer(s: &Session) -> Value {
    json!({ "user": s.user, "admin": s.admin, "csrf": s.csrf })
}

/// `GET /api/v1/session`.
pub(crate) async fn whoami(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Session "));
    match token.and_then(|t| state.sessions.get(t)) {
        Some(s) => Json(answer(&s)).into_response(),
        None => {
            let anonymous = crate::auth::anonymous(&state.config, peer.0).is_ok();
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "not signed in", "anonymous": anonymous })),
            )
                .into_response()
        }
    }
}

/// Whether the request names this machine as its host (`localhost`, a
/// loopback address): a page served under another name that resolves to
/// 127.0.0.1 (DNS rebinding) does not.
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `POST /api/v1/session`. Signed in anonymously, the session is an
/// admin's only where the configuration trusts this machine
/// (`anonymous_admin`: a broker without users), from loopback, with a
/// loopback `Host`.
pub(crate) async fn sign_in(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = match (b.username.filter(|u| !u.is_empty()), b.password) {
        (Some(u), Some(p)) => {
            Some(crate::auth::verify(&state.config, &state.verified, &u, p.as_bytes()).await?)
        }
        (Some(_), None) => return Err(ApiError::bad_request("a password goes with the user name")),
        (None, _) => {
            crate::auth::anonymous(&state.config, peer.0)?;
            None
        }
    };
    let admin = match &user {
        Some(_) => crate::auth::is_admin(&state.config, user.as_deref()),
        None => {
            state.config.anonymous_admin && peer.0.ip().is_loopback() && host_is_local(&headers)
        }
    };
    let (token, s) = state.sessions.create(user, admin)?;
    // Over HTTPS the cookie is never sent in the clear.
    let secure = if peer.1 { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        MAX_AGE.as_secs()
    );
    let mut r = Json(answer(&s)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `DELETE /api/v1/session`.
pub(crate) async fn sign_out(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Session "))
    {
        state.sessions.remove(t);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tern_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}
