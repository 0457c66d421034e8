//! The dashboard: one HTML page, its script and its style sheet, embedded in the binary
//! (`host/fleet/dashboard/`) and served on the API's listener without authentication, because
//! they hold no data. The script asks the JSON admin API with the bearer token the user gives
//! it (a viewer's is enough; the audit log needs an admin's) and builds the page from the
//! answers with `textContent` and `createElement` only, so nothing a device sends can become
//! markup.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's script and
//! style (no inline script, no `eval`, no other origin to fetch from or post to), may not be
//! framed (`frame-ancestors 'none'`, clickjacking), is not sniffed and not cached.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page.
const INDEX: &str = include_str!("../../dashboard/index.html");
/// Its script.
const SCRIPT: &str = include_str!("../../dashboard/app.js");
/// Its style sheet.
const STYLE: &str = include_str!("../../dashboard/style.css");

/// The policy of every dashboard answer: this origin's script, style and API only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: `/dashboard`, `/dashboard/app.js`, `/dashboard/style.css`.
pub(super) fn router() -> Router {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, mime: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 7] = [
        (header::CONTENT_TYPE, mime),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        // The token is in the URL's fragment, which browsers never send; this keeps the rest
        // of the address out of other sites' logs too.
        (header::REFERRER_POLICY, "no-referrer"),
        // For browsers that predate frame-ancestors.
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    let mut response = body.into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}
