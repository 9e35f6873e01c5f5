//! The database URL as a secret: it may carry the owner role's password (`user:password@` or a
//! `password=` query parameter), so it has no `Debug` or `Display` that shows it.

use std::fmt;

use zeroize::Zeroizing;

/// Shown in place of a password.
const REDACTED: &str = "<redacted>";

/// A `postgres://` or `postgresql://` URL whose password never reaches a log line, an error
/// message or a panic: `Debug` and [`DatabaseUrl::redacted`] replace it with `<redacted>`, there
/// is no `Display`, and the text is wiped from memory when dropped. [`DatabaseUrl::expose`] is
/// for the one place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Zeroizing<String>);

/// Why a text is not a database URL. Carries nothing of the text itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be a postgres:// or postgresql:// URL")]
pub struct NotADatabaseUrl;

impl DatabaseUrl {
    /// Checks the scheme and wraps the URL.
    pub fn parse(text: impl Into<String>) -> Result<Self, NotADatabaseUrl> {
        let text = Zeroizing::new(text.into());
        match text.split_once("://") {
            Some(("postgres" | "postgresql", _)) => Ok(Self(text)),
            _ => Err(NotADatabaseUrl),
        }
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password, percent-decoded: of the user information, else of a `password` query
    /// parameter. For the environment of pg_dump and pg_restore (never their arguments).
    pub(crate) fn password(&self) -> Option<Zeroizing<String>> {
        let (_, rest) = self.0.split_once("://")?;
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                return Some(percent_decode(password));
            }
        }
        let (_, query) = rest.split_once('?')?;
        let query = query.split('#').next().unwrap_or("");
        query
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((key, value)) if key.eq_ignore_ascii_case("password") => {
                    Some(percent_decode(value))
                }
                _ => None,
            })
    }

    /// The URL with any password replaced by `<redacted>`: safe to log.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        // The password ends at the last `@`, whatever it contains ('/', '?', '@' unescaped):
        // cutting there may hide more than the password, never less.
        let (userinfo, after) = match rest.rsplit_once('@') {
            Some((userinfo, after)) => (Some(userinfo), after),
            None => (None, rest),
        };
        let userinfo = match userinfo {
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{REDACTED}@"),
                None => format!("{userinfo}@"),
            },
            None => String::new(),
        };
        format!("{scheme}://{userinfo}{}", redact_query_password(after))
    }
}

fn percent_decode(text: &str) -> Zeroizing<String> {
    let bytes = text.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Zeroizing::new(String::from_utf8_lossy(&out).into_owned())
}

/// `tail` (path, query, fragment) with the value of every `password` query parameter redacted.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    format!("{path}?{}{fragment}", pairs.join("&"))
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = NotADatabaseUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_redacted_wherever_the_url_carries_it() {
        for (url, shown) in [
            (
                "postgres://owner:hunter2@db:5432/fleet",
                "postgres://owner:<redacted>@db:5432/fleet",
            ),
            (
                "postgresql://owner:p%40ss:word@db/fleet?sslmode=require",
                "postgresql://owner:<redacted>@db/fleet?sslmode=require",
            ),
            (
                "postgres://db/fleet?user=o&password=hunter2&sslmode=require",
                "postgres://db/fleet?user=o&password=<redacted>&sslmode=require",
            ),
            (
                "postgres://owner@db/fleet?host=/run/pg",
                "postgres://owner@db/fleet?host=/run/pg",
            ),
            (
                "postgres://owner:hun/ter?2@db/fleet",
                "postgres://owner:<redacted>@db/fleet",
            ),
        ] {
            let parsed = DatabaseUrl::parse(url).unwrap();
            assert_eq!(parsed.redacted(), shown);
            assert_eq!(parsed.expose(), url);
            let debug = format!("{parsed:?}");
            assert!(
                !debug.contains("hunter2") && !debug.contains("word@") && !debug.contains("ter?2"),
                "{debug}"
            );
        }
    }

    #[test]
    fn the_password_is_found_and_decoded_for_the_tools_environment() {
        for (url, password) in [
            ("postgres://owner:p%40ss%3Aw@db/fleet", Some("p@ss:w")),
            (
                "postgres://db/fleet?user=o&password=hun%20ter",
                Some("hun ter"),
            ),
            ("postgres://owner@db/fleet?host=/run/pg", None),
            ("postgres://db/fleet", None),
        ] {
            let parsed = DatabaseUrl::parse(url).unwrap();
            assert_eq!(
                parsed.password().as_deref().map(String::as_str),
                password,
                "{url}"
            );
        }
    }

    #[test]
    fn other_schemes_are_refused_without_echoing_the_text() {
        let err = DatabaseUrl::parse("mysql://root:hunter2@db/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
