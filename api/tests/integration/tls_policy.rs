//! The API listener's TLS policy, checked with a client nobody here wrote (openssl), and the
//! accept path's resistance to silent connections.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestServer;

/// `openssl s_client` with `flags`, allowing every cipher and protocol on the client side
/// (SECLEVEL=0), so a refusal can only come from the server.
async fn s_client(addr: std::net::SocketAddr, flags: &'static [&'static str]) -> Output {
    let connect = addr.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-connect", &connect])
            .args(flags)
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
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
