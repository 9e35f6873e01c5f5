//! The API listener's TLS policy, checked with a client nobody here wrote (openssl), and the
//! accept path's resistance to silent connections.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestServer;

/// `openssl s_client` with `flags`, allowing every cipher and protocol on the client side
/// (SECLEVEL=0), so a refusal can only come from the server.
async fn s_client(addr: std::net::SocketAddr, flags: &'static [&'static str]) -> Output {
    let mut args: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    args.extend(["-cipher".into(), "DEFAULT@SECLEVEL=0".into()]);
    s_client_with(addr, args).await
}

/// `openssl s_client` with exactly `args` (and the server name).
async fn s_client_with(addr: std::net::SocketAddr, args: Vec<String>) -> Output {
    let connect = addr.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-connect", &connect])
            .args(&args)
            .args(["-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn tls_1_1_is_refused_by_the_server_while_1_2_and_1_3_are_accepted() {
    if fleet_tests::openssl::openssl().is_none() {
        return;
    }
    let server = TestServer::start().await;

    let old = s_client(server.addr, &["-tls1_1"]).await;
    let old_text = text(&old);
    assert!(!old.status.success(), "TLS 1.1 was accepted:\n{old_text}");
    // The refusal is the server's: openssl sent its TLS 1.1 hello and received a fatal alert
    // (rustls answers handshake_failure, 40; protocol_version, 70, would do too). A refusal on
    // the client side would read "no protocols available" and send nothing.
    assert!(
        old_text.contains("SSL alert number 40") || old_text.contains("SSL alert number 70"),
        "TLS 1.1 failed without an alert from the server:\n{old_text}"
    );
    assert!(!old_text.contains("no protocols available"), "{old_text}");

    let cases: [(&'static [&'static str], &str); 3] = [
        (&["-tls1_2"], "TLSv1.2"),
        (&["-tls1_3"], "TLSv1.3"),
        // No version asked for: the server prefers 1.3.
        (&[], "TLSv1.3"),
    ];
    for (flag, protocol) in cases {
        let out = s_client(server.addr, flag).await;
        let out_text = text(&out);
        assert!(out.status.success(), "{flag:?} failed:\n{out_text}");
        assert!(
            out_text.contains(&format!("Protocol  : {protocol}"))
                || out_text.contains(&format!("New, {protocol}")),
            "{flag:?} did not negotiate {protocol}:\n{out_text}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn only_aead_suites_are_negotiated_and_the_chain_verifies_to_the_fleet_root() {
    if fleet_tests::openssl::openssl().is_none() {
        return;
    }
    let server = TestServer::start().await;
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|a| (*a).to_owned()).collect() };
    // CBC and unauthenticated-key-exchange suites, offered alone: refused by the server.
    let legacy = "AES128-SHA:AES256-SHA:AES128-SHA256:ECDHE-ECDSA-AES128-SHA:\
                  ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:\
                  ECDHE-RSA-AES128-SHA:DES-CBC3-SHA:RC4-SHA:NULL-SHA256:@SECLEVEL=0";
    let out = s_client_with(server.addr, args(&["-tls1_2", "-cipher", legacy])).await;
    let out_text = text(&out);
    assert!(
        !out.status.success(),
        "a legacy suite was accepted:\n{out_text}"
    );
    assert!(
        out_text.contains("SSL alert number 40"),
        "refused without the server's alert:\n{out_text}"
    );
    // Each AEAD suite of TLS 1.2 works; TLS 1.3 has only AEAD suites.
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let out = s_client_with(server.addr, args(&["-tls1_2", "-cipher", suite])).await;
        let out_text = text(&out);
        assert!(out.status.success(), "{suite} failed:\n{out_text}");
        assert!(
            out_text.contains(suite),
            "{suite} not negotiated:\n{out_text}"
        );
    }
    // The chain the server sends verifies to the fleet root alone, for the name it serves.
    let root = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(root.path(), server.ca.root_pem()).unwrap();
    let out = s_client_with(
        server.addr,
        vec![
            "-CAfile".into(),
            root.path().display().to_string(),
            "-verify_return_error".into(),
            "-verify_hostname".into(),
            "localhost".into(),
        ],
    )
    .await;
    let out_text = text(&out);
    assert!(out.status.success(), "{out_text}");
    assert!(
        out_text.contains("Verify return code: 0 (ok)"),
        "{out_text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn silent_tcp_connections_do_not_delay_a_real_client() {
    let server = TestServer::start().await;
    let mut silent = Vec::new();
    // From 127.0.0.2: from the client's own address, all but the first 32 (the per-address
    // handshake cap) would be closed at once and the client's own handshake refused.
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 2], 0).into()).unwrap();
        silent.push(socket.connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    let response = server.request("GET", "/healthz", &[], b"").await;
    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?} behind silent connections",
        started.elapsed()
    );
    drop(silent);
    server.stop().await;
}
