//! A Mosquitto started by a test on an ephemeral port, configured as documented for production
//! external mode (ingest/README.md): TLS with client certificates from the fleet PKI,
//! `use_identity_as_username`, a pattern ACL per device, and the `fleetd-ingest` identity allowed
//! to `$share`. Never the machine's Mosquitto on 1883.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certs::{IssuingCa, ServerCertParams};

/// The ACL documented in ingest/README.md.
pub const ACL: &str = "\
# Devices: CN = device id = username; each device only its own topics.
pattern write fleet/v1/%u/up/#
pattern read fleet/v1/%u/down/#

# Ingest: consume every device's up topics through the shared group, publish acks.
user fleetd-ingest
topic read $share/fleet-ingest/fleet/v1/+/up/#
topic read fleet/v1/+/up/#
topic write fleet/v1/+/down/ack
";

/// A running Mosquitto; dropping it kills the broker.
pub struct Mosquitto {
    child: Child,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

impl Mosquitto {
    /// The broker's process id (fleet-bench reads its CPU time and memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP: Mosquitto reloads its configuration and its listeners' TLS files,
    /// `crlfile` included.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP mosquitto");
    }
}

/// Starts Mosquitto with the production external-mode configuration, its server certificate
/// issued by `ca`, and waits until it listens.
pub async fn start_mosquitto(dir: &Path, ca: &IssuingCa) -> Mosquitto {
    start(dir, ca, None).await
}

/// [`start_mosquitto`], checking device certificates against the CRL (PEM) at `crlfile`, as
/// fleetd's `pki.crl_file` writes it.
pub async fn start_mosquitto_with_crl(dir: &Path, ca: &IssuingCa, crlfile: &Path) -> Mosquitto {
    start(dir, ca, Some(crlfile)).await
}

async fn start(dir: &Path, ca: &IssuingCa, crlfile: Option<&Path>) -> Mosquitto {
    let server = ca
        .issue_server_cert(&ServerCertParams::new(
            vec!["localhost".into()],
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ))
        .unwrap();
    let cafile = write(dir, "ca.pem", &format!("{}{}", ca.root_pem(), ca.pem()));
    let certfile = write(dir, "server.pem", &server.chain_pem());
    let keyfile = write(dir, "server.key", &server.key().to_pkcs8_pem());
    let aclfile = write(dir, "acl", ACL);
    let port = free_port();
    let running_as_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let config = format!(
        "{user}per_listener_settings false
allow_anonymous false
persistence false
max_queued_messages 0
max_packet_size 1114112
log_dest stderr
log_type error
log_type warning
listener {port} 127.0.0.1
cafile {cafile}
certfile {certfile}
keyfile {keyfile}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
acl_file {aclfile}
{crl}",
        user = if running_as_root { "user root\n" } else { "" },
        crl = crlfile.map_or(String::new(), |path| format!(
            "crlfile {}\n",
            path.display()
        )),
    );
    let conf = write(dir, "mosquitto.conf", &config);
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mosquitto installed");
    // Dropping the guard kills and waits for the broker on every path, panics included.
    let broker = Mosquitto { child, port };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return broker;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mosquitto did not listen on {port}");
}
