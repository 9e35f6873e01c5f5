//! Clients nobody here wrote: Debian's `mosquitto_pub`/`mosquitto_sub` and `openssl
//! s_client`, with the device's key and certificate files. Each test skips (with a
//! note) when its tool is not installed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use broker::{BrokerHooks, Refusal, RunningBroker};
use tokio::process::Command;
use tokio::time::timeout;

fn installed(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!("{tool} not installed: skipping");
    }
    found
}

/// The PEM files a command line client needs.
struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
    issuing: PathBuf,
    key: PathBuf,
    chain: PathBuf,
}

fn files(pki: &TestPki, device: &TestDevice) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    let issuing = dir.path().join("issuing.pem");
    std::fs::write(&root, pki.ca().root_pem()).unwrap();
    std::fs::write(&issuing, pki.ca().pem()).unwrap();
    let (key, chain) = device.write_pem(dir.path());
    Files {
        _dir: dir,
        root,
        issuing,
        key,
        chain,
    }
}

fn mosquitto(tool: &str, broker: &RunningBroker, files: &Files, device: &TestDevice) -> Command {
    let mut command = Command::new(tool);
    command
        .args(["-h", "127.0.0.1", "-p"])
        .arg(broker.local_addr().port().to_string())
        .arg("--cafile")
        .arg(&files.root)
        .arg("--cert")
        .arg(&files.chain)
        .arg("--key")
        .arg(&files.key)
        .args(["-i", &device.client_id(), "-q", "1"])
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn mosquitto_pub_publishes_through_the_gateway() {
    if !installed("mosquitto_pub") {
        return;
    }
    let pki = TestPki::new();
    let mut hooks = BrokerHooks::admit_all();
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let files = files(&pki, &device);
    let topic = wire::topic::events(device.id());
    let output = timeout(
        TIMEOUT,
        mosquitto("mosquitto_pub", &broker, &files, &device)
            .args(["-t", &topic, "-m", "hello from mosquitto"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let message = timeout(TIMEOUT, ingest.recv()).await.unwrap().unwrap();
    assert_eq!(message.topic, topic);
    assert_eq!(&message.payload[..], b"hello from mosquitto");

    // Another device's topic: refused, and mosquitto_pub reports the lost connection.
    let foreign = wire::topic::events(pki.device().id());
    let output = timeout(
        TIMEOUT,
        mosquitto("mosquitto_pub", &broker, &files, &device)
            .args(["-t", &foreign, "-m", "intrusion"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!output.status.success(), "{output:?}");
    eventually(&broker, |stats| stats.refused(Refusal::PublishTopic) == 1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_sub_receives_server_messages_through_the_gateway() {
    if !installed("mosquitto_sub") {
        return;
    }
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let files = files(&pki, &device);
    let subscriber = mosquitto("mosquitto_sub", &broker, &files, &device)
        .args([
            "-t",
            &wire::topic::device_subscription(device.id()),
            "-C",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = subscriber.wait_with_output();
    let publisher = async {
        // Until mosquitto_sub has subscribed, messages have nowhere to go: repeat.
        loop {
            // Not subscribed yet, or queued: either way nothing to check here.
            let _ = broker.deliver(device.id(), wire::topic::TopicKind::Ack, &b"ack 42"[..]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let output = tokio::select! {
        output = timeout(TIMEOUT, output) => output.unwrap().unwrap(),
        () = publisher => unreachable!(),
    };
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ack 42");
    broker.shutdown().await;
}

fn s_client(broker: &RunningBroker, version: &str) -> Command {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect"])
        .arg(broker.local_addr().to_string())
        .arg(version)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn tls_1_1_and_below_are_refused_by_the_server_and_1_2_with_a_certificate_works() {
    if !installed("openssl") {
        return;
    }
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let files = files(&pki, &device);

    // Control: TLS 1.2 with the device certificate completes the handshake.
    let output = timeout(
        TIMEOUT,
        s_client(&broker, "-tls1_2")
            .arg("-CAfile")
            .arg(&files.root)
            .arg("-cert")
            .arg(&files.chain)
            .arg("-cert_chain")
            .arg(&files.issuing)
            .arg("-key")
            .arg(&files.key)
            .arg("-verify_return_error")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("Protocol  : TLSv1.2") || stdout.contains("TLSv1.2"),
        "{stdout}"
    );
    eventually(&broker, |stats| stats.handshakes_completed == 1).await;

    // TLS 1.1 and 1.0: OpenSSL is allowed to offer them (security level 0), so the
    // refusal is the server's: an alert it sends, counted as a failed handshake.
    for (version, refused) in [("-tls1_1", 1), ("-tls1", 2)] {
        let output = timeout(
            TIMEOUT,
            s_client(&broker, version)
                .args(["-cipher", "DEFAULT@SECLEVEL=0"])
                .arg("-cert")
                .arg(&files.chain)
                .arg("-key")
                .arg(&files.key)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{version}: {output:?}");
        // "SSL alert number N" is how OpenSSL reports an alert it *received*; rustls
        // answers a hello without TLS 1.2 or 1.3 with handshake_failure (40).
        assert!(
            stderr.contains("SSL alert number"),
            "{version}: expected the server's alert: {stderr}"
        );
        eventually(&broker, |stats| {
            stats.refused(Refusal::TlsHandshake) == refused
        })
        .await;
    }
    assert_eq!(broker.stats().handshakes_completed, 1);
    broker.shutdown().await;
}
