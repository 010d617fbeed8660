//! The `hsm-sim serve` binary: a fresh store is a loud test deployment, the LMK
//! shows only as its check value, and the server answers on TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn serve_on_a_fresh_directory_is_a_loud_test_deployment() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = directory.path().join("store");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--keystore"])
        .arg(&store)
        .env("RUST_LOG", "info")
        .env_remove("HSM_SIM_LMK")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hsm-sim");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut output = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !output.contains("hsm-sim serving") && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read") == 0 {
            break;
        }
        output.push_str(&line);
    }
    assert!(output.contains("NEW TEST DEPLOYMENT"), "{output}");
    let lmk = std::fs::read_to_string(store.join("test-lmk.hex")).expect("test LMK");
    let check = hsm_sim::Lmk::parse_hex(&lmk).expect("hex").check_value_hex();
    assert!(output.contains(&check), "the LMK check value is shown: {output}");
    assert!(!output.contains(lmk.trim()), "the LMK itself is never shown");

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(&[0, 6, b'0', b'0', b'0', b'1', b'N', b'C']).expect("write");
    let mut answer = [0u8; 2 + 8 + 16 + 9];
    stream.read_exact(&mut answer).expect("read");
    assert_eq!(&answer[2..10], b"0001ND00");
    assert_eq!(&answer[10..26], check.as_bytes());
    let _ = child.kill();
    let _ = child.wait();
}
