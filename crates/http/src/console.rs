//! The web console at `/console`: one HTML page, its script and stylesheet and the charting
//! library (Chart.js 4.5.1, MIT, vendored unchanged in `crates/http/console/vendor`), compiled
//! into the binary, so it needs no install or build step.
//!
//! The page signs in with an API key and calls the same JSON routes as any client, with the key
//! as bearer token: what it shows is what the key's roles and tenant may read (`GET /whoami`
//! says which pages to offer). The assets need no credentials; they hold no data. Every answer
//! carries a Content-Security-Policy that allows scripts, styles and requests from this server
//! only.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiErrorBody};

/// The page.
const INDEX: &str = include_str!("../console/index.html");

/// The assets under `/console/assets/`: name, content type, content.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
    (
        "chart.umd.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/vendor/chart.umd.js"),
    ),
];

/// Scripts, styles, images and requests from this server only; no frames, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn served(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated on every load: a new binary serves new assets at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's page (HTML). Needs no credentials: it signs in with an API key itself.
#[utoipa::path(get, path = "/console",
    responses((status = 200, content_type = "text/html", body = String, description = "The console's page")))]
pub async fn index() -> Response {
    served("text/html; charset=utf-8", INDEX)
}

/// One of the console's assets: `console.js`, `console.css` or `chart.umd.js` (Chart.js). 404
/// for any other name.
#[utoipa::path(get, path = "/console/assets/{file}",
    params(("file" = String, Path, description = "console.js, console.css or chart.umd.js")),
    responses((status = 200, description = "The asset: JavaScript or CSS",
            content((String = "text/javascript"), (String = "text/css"))),
        (status = 404, body = ApiErrorBody)))]
pub async fn asset(
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let found = file
        .ok()
        .and_then(|Path(name)| ASSETS.iter().find(|(n, _, _)| *n == name));
    match found {
        Some((_, content_type, body)) => served(content_type, body),
        None => ApiError::not_found("not_found", "no such console asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_asset_served_and_chart_js_is_the_vendored_release() {
        for (name, _, body) in ASSETS {
            assert!(
                INDEX.contains(&format!("/console/assets/{name}")),
                "{name} is served but the page does not load it"
            );
            assert!(!body.is_empty());
        }
        assert!(ASSETS[2].2.starts_with("/*!\n * Chart.js v4.5.1"));
    }
}
