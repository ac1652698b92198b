//! The browser client at `/`: the page and the `web/` modules it loads, embedded in the binary
//! so that a fresh `threads serve` shows it. The page reads keys only from what the user pastes
//! or from the URL's fragment, which browsers never send; every response forbids inline script,
//! third-party requests and framing.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use super::AppState;

/// Every file the page may load, by its path under `web/`.
macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../web/", $path)))),*]
    };
}

const FILES: &[(&str, &str)] = embedded![
    "index.html",
    "app.js",
    "style.css",
    "src/index.js",
    "src/bytes.js",
    "src/cbor.js",
    "src/cid.js",
    "src/platform.js",
    "src/ids.js",
    "src/link.js",
    "src/record.js",
    "src/follower.js",
    "src/reader.js",
    "src/writer.js",
    "src/pool.js",
    "src/check-worker.js",
];

/// Scripts, styles and connections from this origin only; nothing inline, nothing framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route(
            "/web/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

fn file(path: &str) -> Response {
    let Some((_, text)) = FILES.iter().find(|(name, _)| *name == path) else {
        return ApiError::not_found("file").into_response();
    };
    let kind = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/javascript; charset=utf-8",
    };
    let mut response = (*text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Small files that change with the binary: always revalidated, never stale after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    const INDEX: &str = include_str!("../../web/index.html");

    /// A module left out of the list would be a 404 the page cannot get past.
    #[test]
    fn every_module_of_the_client_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/web/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".js") {
                let path = format!("src/{name}");
                assert!(
                    super::FILES.iter().any(|(p, _)| *p == path),
                    "{path} is not in FILES"
                );
                // The page asks for its modules at once; the worker's own loads in the worker.
                let preload = format!(r#"<link rel="modulepreload" href="/web/{path}">"#);
                assert_eq!(
                    INDEX.contains(&preload),
                    name != "check-worker.js",
                    "index.html and its preload of {path}"
                );
            }
        }
    }
}
