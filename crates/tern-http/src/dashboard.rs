//! The dashboard: a page at `/` for the home user, built on this API only.
//! Its files are in the binary (`assets/`, uPlot vendored with its
//! licence), so it works on a home network with no internet; about 120 KB
//! in all.
//!
//! The page signs in with `POST /api/v1/session` (the broker's users; a
//! cookie, `HttpOnly`, `SameSite=Strict`) and sends the session's CSRF
//! token with every change; a session that is not an admin's is read-only
//! (see [`crate::session`]).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const UPLOT_JS: &str = include_str!("../assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/vendor/uPlot.LICENSE");

/// What the page may load: its own files only (styles set by script are
/// inline).
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    file(INDEX, "text/html; charset=utf-8")
}

/// `GET /assets/{name}`.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => file(APP_CSS, "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => file(UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => file(UPLOT_CSS, "text/css; charset=utf-8"),
        "uPlot.LICENSE" => file(UPLOT_LICENSE, "text/plain; charset=utf-8"),
        _ => crate::ApiError::new(StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
