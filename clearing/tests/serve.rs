//! `clearing serve`: the binary starts, migrates, answers health and refuses without a token.

mod support;

use std::io::{Read, Write};

fn get(address: &str, path: &str, headers: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: clearing\r\nConnection: close\r\n{headers}\r\n").expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_binary_answers() {
    let hsm = support::TestHsm::start().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let database = format!("sqlite://{}", directory.path().join("serve.db").display());
    let digest = ring::digest::digest(&ring::digest::SHA256, b"TEST-operator");
    std::fs::write(directory.path().join("tokens"), format!("# TEST\noperator {}\n", hex::encode(digest.as_ref())))
        .expect("tokens");
    // A free port: bind, read it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let address = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clearing"))
        .args(["serve", "--listen", &address, "--database", &database, "--hsm", &hsm.address.to_string()])
        .arg("--tokens")
        .arg(directory.path().join("tokens"))
        .env("RUST_LOG", "clearing=info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start clearing serve");
    let mut health = String::new();
    for _ in 0..100 {
        if std::net::TcpStream::connect(&address).is_ok() {
            health = tokio::task::block_in_place(|| get(&address, "/healthz", ""));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let day = tokio::task::block_in_place(|| get(&address, "/v1/operator/days/2026-11-24", ""));
    let allowed = tokio::task::block_in_place(|| {
        get(&address, "/v1/operator/days/2026-11-24", "Authorization: Bearer TEST-operator\r\n")
    });
    let wrong = tokio::task::block_in_place(|| {
        get(&address, "/v1/operator/days/2026-11-24", "Authorization: Bearer TEST-wrong-secret\r\n")
    });
    let unsigned =
        tokio::task::block_in_place(|| get(&address, "/v1/blacklist?since=0", "X-Terminal-Id: 310000000901\r\n"));
    let metrics = tokio::task::block_in_place(|| get(&address, "/metrics", ""));
    let _ = child.kill();
    let output = child.wait_with_output().expect("the server's log");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(day.starts_with("HTTP/1.1 401"), "{day}");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(wrong.starts_with("HTTP/1.1 401") && unsigned.starts_with("HTTP/1.1 401"), "{wrong}\n{unsigned}");
    // Each refusal is logged, saying why, and never with the secret it was given.
    let refusals: Vec<&str> = log.lines().filter(|line| line.contains("request refused")).collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(refusals[0].contains("a bearer token is required") && refusals[1].contains("unknown token"), "{log}");
    assert!(refusals[2].contains("310000000901") && refusals[2].contains("no readable X-Signature"), "{log}");
    assert!(!log.contains("TEST-wrong-secret") && !log.contains("TEST-operator"), "{log}");
    assert!(metrics.contains("clearing_credentials_refused_total 3"), "{metrics}");
}
