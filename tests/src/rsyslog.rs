//! An rsyslog (Debian's `rsyslog` with `rsyslog-openssl`) started by a test as a SIEM collector:
//! RFC 5425 syslog over TLS on an ephemeral port of 127.0.0.1, its server certificate issued by
//! the test's CA, every received message written as one line of rsyslog's own parse (protocol
//! version, APP-NAME, MSGID, structured data, MSG) to a file in the test's directory. In the
//! foreground (`-n`), with its pid and work files in that directory, never the machine's syslog.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certs::{IssuingCa, ServerCertParams};

/// A running rsyslog; dropping it kills it.
pub struct Rsyslog {
    child: Option<Child>,
    conf: PathBuf,
    dir: PathBuf,
    output: PathBuf,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as rsyslog parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// `1` for an RFC 5424 message (rsyslog's `protocol-version`).
    pub protocol_version: String,
    /// APP-NAME.
    pub app_name: String,
    /// MSGID.
    pub msgid: String,
    /// The SD-ID of the first structured-data element.
    pub sd_id: String,
    /// Its parameters, unescaped.
    pub params: BTreeMap<String, String>,
    /// MSG.
    pub msg: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

impl Rsyslog {
    /// Starts rsyslog in `dir` with a server certificate for `localhost` and 127.0.0.1 issued
    /// by `ca`, and waits (at most 10 s) until it listens. Clients need no certificate.
    pub async fn start(dir: &Path, ca: &IssuingCa) -> Self {
        Self::start_with(dir, ca, "anon").await
    }

    /// [`Rsyslog::start`], requiring every client to present a certificate issued by `ca`
    /// (mutual TLS: rsyslog's `x509/certvalid`).
    pub async fn start_requiring_client_certificates(dir: &Path, ca: &IssuingCa) -> Self {
        Self::start_with(dir, ca, "x509/certvalid").await
    }

    async fn start_with(dir: &Path, ca: &IssuingCa, auth_mode: &str) -> Self {
        let server = ca
            .issue_server_cert(&ServerCertParams::new(
                vec!["localhost".into()],
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ))
            .unwrap();
        let cafile = write(dir, "ca.pem", &format!("{}{}", ca.root_pem(), ca.pem()));
        let certfile = write(dir, "server.pem", &server.chain_pem());
        let keyfile = write(dir, "server.key", &server.key().to_pkcs8_pem());
        let port = free_port();
        let output = dir.join("received.log");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let config = format!(
            r#"global(
    workDirectory="{work}"
    maxMessageSize="64k"
    defaultNetstreamDriver="ossl"
    defaultNetstreamDriverCAFile="{cafile}"
    defaultNetstreamDriverCertFile="{certfile}"
    defaultNetstreamDriverKeyFile="{keyfile}"
)
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="{auth_mode}")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="parsed" type="string"
         string="%protocol-version%\t%app-name%\t%msgid%\t%structured-data%\t%msg%\n")
if $app-name == "fleetplane" then {{
    action(type="omfile" file="{output}" template="parsed")
}}
"#,
            work = work.display(),
            cafile = cafile.display(),
            certfile = certfile.display(),
            keyfile = keyfile.display(),
            output = output.display(),
        );
        let conf = write(dir, "rsyslog.conf", &config);
        let mut rsyslog = Self {
            child: None,
            conf,
            dir: dir.to_owned(),
            output,
            port,
        };
        rsyslog.restart().await;
        rsyslog
    }

    /// Kills rsyslog at once (SIGKILL: what it had received but not written is lost) and waits
    /// for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops rsyslog (SIGSTOP) without closing anything: connections stay open and the kernel
    /// keeps accepting bytes for it that it does not read.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("rsyslogd running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }

    /// Starts rsyslog (again) on the same port and configuration; waits at most 10 s until it
    /// listens.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            // Its own errors (the readiness probe below is one: a TCP connect without TLS).
            .stderr(std::fs::File::create(self.dir.join("rsyslogd.stderr")).unwrap())
            .spawn()
            .expect("rsyslogd installed (Debian: rsyslog rsyslog-openssl)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let stderr = std::fs::read_to_string(self.dir.join("rsyslogd.stderr"));
                panic!("rsyslogd exited: {status}: {}", stderr.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rsyslogd did not listen on {}", self.port);
    }

    /// Every message written so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| parse_line(line).unwrap_or_else(|| panic!("unparsable line: {line}")))
            .collect()
    }

    /// Waits (at most `limit`) until `done` holds for what was received; returns it either way.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let received = self.received();
            if done(&received) || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn parse_line(line: &str) -> Option<Received> {
    let mut fields = line.splitn(5, '\t');
    let protocol_version = fields.next()?.to_owned();
    let app_name = fields.next()?.to_owned();
    let msgid = fields.next()?.to_owned();
    let (sd_id, params) = parse_sd(fields.next()?)?;
    let msg = fields.next()?.trim_start().to_owned();
    Some(Received {
        protocol_version,
        app_name,
        msgid,
        sd_id,
        params,
        msg,
    })
}

/// One SD-ELEMENT (RFC 5424 section 6.3): `[ID name="value" ...]`, `\"`, `\\` and `\]`
/// unescaped in values.
pub fn parse_sd(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let rest = text.strip_prefix('[')?;
    let end_of_id = rest.find([' ', ']'])?;
    let id = rest[..end_of_id].to_owned();
    let mut chars = rest[end_of_id..].chars().peekable();
    let mut params = BTreeMap::new();
    loop {
        match chars.next()? {
            ']' => return chars.next().is_none().then_some((id, params)),
            ' ' => {}
            _ => return None,
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    c @ ('"' | '\\' | ']') => value.push(c),
                    // RFC 5424: a backslash before anything else is kept.
                    c => {
                        value.push('\\');
                        value.push(c);
                    }
                },
                '"' => break,
                ']' => return None,
                c => value.push(c),
            }
        }
        params.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_data_is_unescaped() {
        let (id, params) = parse_sd(r#"[x@1 a="q\"b\\s\]" c="" d="\n"]"#).unwrap();
        assert_eq!(id, "x@1");
        assert_eq!(params["a"], r#"q"b\s]"#);
        assert_eq!(params["c"], "");
        assert_eq!(params["d"], r"\n");
        assert!(parse_sd(r#"[x@1 a="b]"]"#).is_none());
        assert!(parse_sd(r#"[x@1 a="b"] trailing"#).is_none());
    }
}
