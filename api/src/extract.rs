//! Request input, parsed into types at the edge: JSON bodies whose errors name the field, and
//! query strings where every parameter is known, single and well typed.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json`). Unknown fields are refused by the body
/// types themselves (`deny_unknown_fields`); every refusal names the field as a JSON path.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: application/json".into(),
            ));
        }
        let bytes = body_bytes(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The whole body, within the router's body limit.
async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else {
                ApiError::InvalidRequest(rejection.body_text())
            }
        })
}

/// For routes that take no body: none, or an empty JSON object (what generic clients send), is
/// accepted; anything else is refused, since it would be ignored and what the caller meant by it
/// (a reason, an option) silently lost.
pub(crate) struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(request, state).await?;
        if bytes.trim_ascii().is_empty() {
            return Ok(NoBody);
        }
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
            Ok(object) if object.is_empty() => Ok(NoBody),
            _ => Err(ApiError::InvalidField {
                field: "body".into(),
                reason: "this route takes no body: send none, or {}".into(),
            }),
        }
    }
}

/// Parses a JSON document into `T`, naming the failing field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = without_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            ApiError::InvalidRequest(format!("the body is not valid JSON: {reason}"))
        } else {
            ApiError::InvalidField {
                field: if path == "." { "body".into() } else { path },
                reason,
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde_json's messages end in " at line 1 column 12", which means nothing to a caller that
/// sees the field name.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The query string, parameter by parameter. Handlers take what they know; [`Query::finish`]
/// refuses anything left over, so a misspelt filter is an error, not silently ignored.
#[derive(Debug, Default)]
pub(crate) struct Query {
    params: BTreeMap<String, Vec<String>>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            params
                .entry(name.into_owned())
                .or_default()
                .push(value.into_owned());
        }
        Self { params }
    }

    /// A single-valued text parameter.
    pub(crate) fn text(&mut self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.params.remove(name) {
            None => Ok(None),
            Some(mut values) if values.len() == 1 => Ok(values.pop()),
            Some(_) => Err(invalid(name, "given more than once")),
        }
    }

    /// Every value of a repeatable parameter; commas also separate values.
    pub(crate) fn list(&mut self, name: &'static str) -> Vec<String> {
        self.params
            .remove(name)
            .unwrap_or_default()
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A single-valued parameter parsed with `FromStr`.
    pub(crate) fn parsed<T: FromStr>(
        &mut self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ApiError> {
        self.text(name)?
            .map(|text| {
                text.parse()
                    .map_err(|_| invalid(name, &format!("expected {expected}, got {text:?}")))
            })
            .transpose()
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, ApiError> {
        self.parsed(name, "true or false")
    }

    /// An RFC 3339 time.
    pub(crate) fn time(&mut self, name: &'static str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.text(name)?
            .map(|text| {
                OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    invalid(
                        name,
                        &format!(
                            "expected an RFC 3339 time such as 2026-12-01T09:30:00Z, got {text:?}"
                        ),
                    )
                })
            })
            .transpose()
    }

    /// A duration such as `5m` or `7d`.
    pub(crate) fn duration(
        &mut self,
        name: &'static str,
    ) -> Result<Option<std::time::Duration>, ApiError> {
        self.text(name)?
            .map(|text| {
                humantime::parse_duration(&text).map_err(|_| {
                    invalid(
                        name,
                        &format!("expected a duration such as 5m or 7d, got {text:?}"),
                    )
                })
            })
            .transpose()
    }

    /// The page parameters of a list.
    pub(crate) fn page(&mut self) -> Result<PageRequest, ApiError> {
        let limit = self
            .parsed::<i64>("limit", "a whole number")?
            .unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(invalid(
                "limit",
                &format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        let cursor = self.text("cursor")?;
        Ok(PageRequest { limit, cursor })
    }

    /// Refuses parameters no one took.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        match self.params.into_keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::InvalidField {
                field: name,
                reason: "unknown query parameter".into(),
            }),
        }
    }
}

/// For routes that take no query parameters: any given is refused, naming the first, as
/// [`Query::finish`] does for routes that take some.
pub(crate) struct NoQuery;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        Query::parse(parts.uri.query()).finish().map(|()| NoQuery)
    }
}

/// A kind of resource the management API addresses by id in its paths.
pub(crate) trait Resource: FromStr + Send {
    /// How refusals name it: "device", "API key".
    const NAME: &'static str;

    /// The 404 of this kind of resource.
    fn not_found() -> ApiError {
        ApiError::ResourceNotFound(Self::NAME)
    }
}

impl Resource for store::DeviceId {
    const NAME: &'static str = "device";
}
impl Resource for store::ApiKeyId {
    const NAME: &'static str = "API key";
}
impl Resource for store::EnrollmentTokenId {
    const NAME: &'static str = "enrollment token";
}
impl Resource for store::DeviceGroupId {
    const NAME: &'static str = "device group";
}

/// The `{id}` of a route's path, parsed. A malformed id names nothing, so it is that
/// resource's 404, the answer for an unknown one.
pub(crate) struct PathId<T>(pub(crate) T);

impl<S: Send + Sync, T: Resource> axum::extract::FromRequestParts<S> for PathId<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| T::not_found())?;
        text.parse().map(PathId).map_err(|_| T::not_found())
    }
}

pub(crate) fn invalid(field: &str, reason: &str) -> ApiError {
    ApiError::InvalidField {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Items per page when `limit` is not given.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// The largest `limit`.
pub const MAX_PAGE_SIZE: i64 = 500;

/// `limit` and `cursor` of a list request.
#[derive(Debug)]
pub(crate) struct PageRequest {
    pub(crate) limit: i64,
    cursor: Option<String>,
}

const CURSOR_VERSION: &str = "c1:";

impl PageRequest {
    /// The position after which the page starts, decoded from the cursor.
    pub(crate) fn after<T: FromStr>(&self) -> Result<Option<T>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| ApiError::InvalidCursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::InvalidCursor)?;
        let key = text
            .strip_prefix(CURSOR_VERSION)
            .ok_or(ApiError::InvalidCursor)?;
        key.parse().map(Some).map_err(|_| ApiError::InvalidCursor)
    }

    /// A page of `items`, with the cursor of the next page when this one is full.
    pub(crate) fn page<T, K: std::fmt::Display>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> Page<T> {
        let full = i64::try_from(items.len()).unwrap_or(i64::MAX) >= self.limit;
        let next_cursor = if full {
            items.last().map(|last| cursor_for(&key(last)))
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// The cursor text for a position.
pub(crate) fn cursor_for(key: &impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}{key}"))
}

/// One page of a list.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items, in the list's stable order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u32,
    }

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidField { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"name": "a", "count": "x"}"#).unwrap_err();
        assert_eq!(field_of(e), "count");
        let e = parse_json::<Body>(br#"{"name": "a", "count": 1, "extra": 1}"#).unwrap_err();
        assert!(matches!(e, ApiError::InvalidField { .. }), "{e:?}");
        let e = parse_json::<Body>(br#"{"name": "a"}"#).unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest(_)), "{e:?}");
        let e = parse_json::<Body>(br#"{"name": "a", "count": 1} x"#).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest(_)), "{e:?}");
    }

    #[test]
    fn unknown_and_repeated_query_parameters_are_refused() {
        let mut q = Query::parse(Some("limit=5&bogus=1"));
        assert_eq!(q.page().unwrap().limit, 5);
        assert_eq!(field_of(q.finish().unwrap_err()), "bogus");
        let mut q = Query::parse(Some("online=true&online=false"));
        assert_eq!(field_of(q.boolean("online").unwrap_err()), "online");
        let mut q = Query::parse(Some("online=yes"));
        assert_eq!(field_of(q.boolean("online").unwrap_err()), "online");
        for bad in ["limit=0", "limit=501", "limit=x"] {
            let mut q = Query::parse(Some(bad));
            assert_eq!(field_of(q.page().unwrap_err()), "limit", "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let mut q = Query::parse(Some("limit=2"));
        let page = q.page().unwrap();
        let next = page.page(vec![1u32, 7], |n| *n).next_cursor.unwrap();
        let mut q = Query::parse(Some(&format!("cursor={next}")));
        assert_eq!(q.page().unwrap().after::<u32>().unwrap(), Some(7));
        for bad in ["x", "Yzk6Nw", "YzE6eA"] {
            let mut q = Query::parse(Some(&format!("cursor={bad}")));
            let page = q.page().unwrap();
            assert!(
                matches!(page.after::<u32>(), Err(ApiError::InvalidCursor)),
                "{bad}"
            );
        }
        // A page shorter than the limit is the last.
        let mut q = Query::parse(Some("limit=3"));
        assert!(q
            .page()
            .unwrap()
            .page(vec![1u32], |n| *n)
            .next_cursor
            .is_none());
    }
}
