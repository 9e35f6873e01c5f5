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
    fn other_schemes_are_refused_without_echoing_the_text() {
        let err = DatabaseUrl::parse("mysql://root:hunter2@db/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
