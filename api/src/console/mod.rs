//! The web console: static files embedded at build time (`api/console/`, see `build.rs`),
//! served on the API listener. The console is a page of its own that talks to the management
//! API with the session cookie and the CSRF header; everything it shows or changes goes
//! through the same routes, permission table and scopes as any API caller, so the console
//! holds no authority of its own.
//!
//! | route                            | what                                             |
//! |----------------------------------|--------------------------------------------------|
//! | `GET /`                          | the console's page (`console/index.html`)        |
//! | `GET /console/{version}/{*path}` | an asset; cached for good, the version changes   |
//!
//! Every response carries [`CONTENT_SECURITY_POLICY`]: scripts, styles and images from this
//! origin only, no inline script or style, no framing.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// One embedded file.
pub(crate) struct ConsoleAsset {
    /// Its path under `api/console/`, with `/` separators.
    pub(crate) path: &'static str,
    pub(crate) bytes: &'static [u8],
    pub(crate) content_type: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The policy on every response of the listener (API answers too: none of them is meant to be
/// rendered with anything but this origin's script and style).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Where assets are served from; `index.html` names them as `{{assets}}/…`.
pub(crate) fn asset_prefix() -> String {
    format!("/console/{VERSION}")
}

const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

/// `GET /`: the console's page, with the asset prefix of this build.
pub(crate) async fn page() -> Response {
    let Some(index) = find("index.html") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let html = String::from_utf8_lossy(index.bytes).replace("{{assets}}", &asset_prefix());
    let mut response = html.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(index.content_type),
    );
    response
}

/// `GET /console/{version}/{*path}`: an asset of this build, or 404 (another build's version
/// included: its bytes are not here).
pub(crate) async fn asset(Path((version, path)): Path<(String, String)>) -> Response {
    let Some(asset) = find(&path).filter(|_| version == VERSION) else {
        return ApiError::NotFound.into_response();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_FOREVER),
    );
    response
}

fn find(path: &str) -> Option<&'static ConsoleAsset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_entry_points_are_embedded() {
        for path in ["index.html", "app.js", "app.css"] {
            assert!(find(path).is_some(), "{path} is embedded");
        }
        assert_eq!(VERSION.len(), 16);
    }

    #[test]
    fn the_page_names_its_assets_under_this_builds_version() {
        let index = std::str::from_utf8(find("index.html").unwrap().bytes).unwrap();
        assert!(index.contains("{{assets}}/app.js"));
        assert!(!index.contains("<script>"), "no inline script");
        assert!(!index.contains("style="), "no inline style");
    }
}
