//! The clearing operator's screen at `/operator/`: one HTML page, its CSS and
//! its script, embedded in the binary (no CDN, no build step, no external
//! font). The page reads the operator API with the operator's bearer token,
//! which it keeps in the tab's `sessionStorage`; the page itself is public, as
//! it holds no data. See `docs/operator.md`.
//!
//! Served with a Content-Security-Policy that allows only this origin's script,
//! style and requests, so the page's data (put in with `textContent`) can never
//! run as script.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

pub const INDEX_HTML: &str = include_str!("screen/index.html");
pub const SCREEN_CSS: &str = include_str!("screen/screen.css");
pub const SCREEN_JS: &str = include_str!("screen/screen.js");

/// Where the screen is served.
pub const PATH: &str = "/operator/";

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The screen's routes, to merge into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/operator", get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/operator/screen.css", get(|| async { asset("text/css; charset=utf-8", SCREEN_CSS) }))
        .route("/operator/screen.js", get(|| async { asset("text/javascript; charset=utf-8", SCREEN_JS) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new build's page is fetched again, never a stale script against a newer API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/operator/screen.js""#));
        assert!(INDEX_HTML.contains(r#"href="/operator/screen.css""#));
        for text in [INDEX_HTML, SCREEN_CSS, SCREEN_JS] {
            // The only URL is SVG's namespace name, which is not fetched.
            assert_eq!(text.matches("http").count(), text.matches("http://www.w3.org/2000/svg").count());
            assert!(!text.contains("@import") && !text.contains("url("), "no external resource");
        }
        // The page's script is in its own file: the CSP forbids inline script and styles.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("onclick") && !INDEX_HTML.contains("style="));
    }
}
