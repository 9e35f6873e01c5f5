//! The agent's one URL parser: `scheme://host[:port][/path]`, for the API server
//! (`https://`, given to `enroll`) and the broker (`mqtts://`, from the enrollment answer).
//!
//! Only the TLS schemes exist: the token and the CSR never travel in clear text, and the
//! device authenticates to the broker with its certificate. The host is a name, an IPv4
//! address or a bracketed IPv6 address (`[::1]`, stored without the brackets); the port
//! defaults to the scheme's. User info, queries and fragments are refused, and so is a
//! path on a broker URL.

/// Which kind of URL is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `https://`, port 443 by default, with an optional path prefix: the API server.
    Https,
    /// `mqtts://`, port 8883 by default, no path: the broker.
    Mqtts,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Self::Https => "https://",
            Self::Mqtts => "mqtts://",
        }
    }

    /// The port when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Https => 443,
            Self::Mqtts => 8883,
        }
    }

    /// What the URL is, for messages.
    fn what(self) -> &'static str {
        match self {
            Self::Https => "server URL",
            Self::Mqtts => "broker URL",
        }
    }
}

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port (the scheme's default when not given).
    pub port: u16,
    /// Path prefix, starting with `/` and without a trailing slash; empty for none (always
    /// empty for a broker).
    pub base_path: String,
}

impl Url {
    /// Parses `url`, which must be of `scheme`; the error is one line naming the URL.
    pub fn parse(url: &str, scheme: Scheme) -> Result<Self, String> {
        let what = scheme.what();
        let refuse = |why: &str| format!("{what} {url:?} {why}");
        let rest = url
            .strip_prefix(scheme.prefix())
            .ok_or_else(|| refuse(&format!("must start with {}", scheme.prefix())))?;
        if rest.contains(['?', '#']) {
            return Err(refuse("must not have a query or a fragment"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = split_host_port(authority, scheme.default_port())
            .ok_or_else(|| refuse("has no valid host and port"))?;
        let path = path.trim_end_matches('/');
        if scheme == Scheme::Mqtts && !path.is_empty() {
            return Err(refuse("must not have a path"));
        }
        Ok(Self {
            host,
            port,
            base_path: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }

    /// The request path for `endpoint` (`/v1/enroll`) under the base path.
    pub fn path(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.base_path)
    }

    /// `host:port`, with an IPv6 host in brackets (for a `Host` header).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host:port`, `[v6]:port` or a bare host; `None` when malformed (empty host,
/// user info, a port that is not 1 to 65535).
fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_both_schemes_parse() {
        use Scheme::{Https, Mqtts};
        let cases = [
            ("https://fleet.example", Https, "fleet.example", 443, ""),
            ("https://[::1]:8443/fleet/", Https, "::1", 8443, "/fleet"),
            ("https://10.0.0.1:9/", Https, "10.0.0.1", 9, ""),
            ("https://h/a/b", Https, "h", 443, "/a/b"),
            (
                "mqtts://broker.example:8884",
                Mqtts,
                "broker.example",
                8884,
                "",
            ),
            ("mqtts://[::1]", Mqtts, "::1", 8883, ""),
            ("mqtts://127.0.0.1:1/", Mqtts, "127.0.0.1", 1, ""),
        ];
        for (text, scheme, host, port, base_path) in cases {
            let expected = Url {
                host: host.into(),
                port,
                base_path: base_path.into(),
            };
            assert_eq!(Url::parse(text, scheme), Ok(expected), "{text}");
        }
        let prefixed = Url::parse("https://[::1]:8443/fleet/", Scheme::Https).unwrap();
        assert_eq!(prefixed.path("/v1/enroll"), "/fleet/v1/enroll");
        assert_eq!(prefixed.authority(), "[::1]:8443");
        let plain = Url::parse("https://h:1", Scheme::Https).unwrap();
        assert_eq!(
            (plain.authority(), plain.path("/v1/renew")),
            ("h:1".into(), "/v1/renew".into())
        );
    }

    #[test]
    fn refusals_say_what_is_wrong_with_which_url() {
        let cases = [
            (
                "http://fleet.example",
                Scheme::Https,
                "server URL",
                "must start with https://",
            ),
            (
                "mqtts://b",
                Scheme::Https,
                "server URL",
                "must start with https://",
            ),
            (
                "https://",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://host:0",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://host:99999",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://user@host",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://[::1",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://[::1]x",
                Scheme::Https,
                "server URL",
                "no valid host and port",
            ),
            (
                "https://h/x?y=1",
                Scheme::Https,
                "server URL",
                "query or a fragment",
            ),
            (
                "mqtt://b:1883",
                Scheme::Mqtts,
                "broker URL",
                "must start with mqtts://",
            ),
            (
                "tcp://b",
                Scheme::Mqtts,
                "broker URL",
                "must start with mqtts://",
            ),
            (
                "mqtts://",
                Scheme::Mqtts,
                "broker URL",
                "no valid host and port",
            ),
            (
                "mqtts://b:x",
                Scheme::Mqtts,
                "broker URL",
                "no valid host and port",
            ),
            (
                "mqtts://b/path",
                Scheme::Mqtts,
                "broker URL",
                "must not have a path",
            ),
            (
                "mqtts://b#f",
                Scheme::Mqtts,
                "broker URL",
                "query or a fragment",
            ),
        ];
        for (text, scheme, what, why) in cases {
            let err = Url::parse(text, scheme).unwrap_err();
            assert!(err.starts_with(&format!("{what} {text:?} ")), "{err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
