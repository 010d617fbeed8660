//! The wire over real TCP: framing, malformed and truncated frames, oversize
//! lengths, wrong header length, unknown commands, pipelining, concurrency,
//! the idle timeout. After every abuse the server still answers.

mod support;

use std::time::Duration;

use hsm_sim::{ClientConfig, ClientError, ErrorCode, HsmClient, ServerConfig};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn still_serves(address: std::net::SocketAddr) {
    let answer = raw_exchange(address, &frame(b"0000", b"NC", b"")).await.expect("answer");
    assert_eq!(&answer[..8], b"0000ND00");
}

#[tokio::test]
async fn response_echoes_header_and_advances_the_code() {
    let hsm = start().await;
    let answer = raw_exchange(hsm.address, &frame(b"AB12", b"B2", b"0003xyz")).await.expect("answer");
    assert_eq!(answer, b"AB12B300xyz");
    let answer = raw_exchange(hsm.address, &frame(b"9999", b"NC", b"")).await.expect("answer");
    assert_eq!(&answer[..8], b"9999ND00");
    assert_eq!(answer.len(), 8 + 16 + 9);
}

#[tokio::test]
async fn unknown_commands_and_bad_fields_get_error_codes() {
    let hsm = start().await;
    let cases: &[(&[u8; 2], &[u8], &[u8])] = &[
        // Unknown command: ZZ 68.
        (b"QQ", b"", b"ZZ68"),
        (b"A9", b"", b"ZZ68"),
        // Trailing bytes, bad hex, short fields: 15.
        (b"NC", b"X", b"ND15"),
        (b"B2", b"0005abc", b"B315"),
        (b"B2", b"00G1a", b"B315"),
        (b"N0", b"01", b"N115"),
        (b"N0", b"000", b"N180"),
        (b"BU", b"00", b"BV15"),
        (b"BU", b"05a b c", b"BV15"),
        // Unknown key type: 04. Unknown algorithm: 26.
        (b"A0", b"0XXXT0107test.mk", b"A104"),
        (b"A0", b"0MACQ0107test.mk", b"A126"),
        (b"A0", b"2MACT0107test.mk", b"A115"),
        // Key not in store: 12.
        (b"BU", b"07missing", b"BV12"),
        // TAC with a bad date, and a load type in a purchase: 15.
        (b"ZE", b"04card31000000123456780000006406310000000001000000012026133108300000000000", b"ZF15"),
        (b"ZE", b"04card3100000012345678000000640231000000000100000001202611240830000000000", b"ZF15"),
        // A batch of 0 records or over the maximum: 80; an unknown record kind: 15.
        (b"ZI", b"04card0000", b"ZJ80"),
        (b"ZI", b"04card1701", b"ZJ80"),
        (b"ZI", b"04card0001X", b"ZJ15"),
        // A maintenance function we do not know, and a bad PIN: 15.
        (b"ZK", b"04card310000001234567801020304X", b"ZL15"),
        (b"ZK", b"04card310000001234567801020304R0112", b"ZL15"),
        (b"ZK", b"04card310000001234567801020304R0212AF", b"ZL15"),
    ];
    for (code, fields, expected) in cases {
        let answer = raw_exchange(hsm.address, &frame(b"0001", code, fields)).await.expect("answer");
        assert_eq!(
            String::from_utf8_lossy(&answer[4..8]),
            String::from_utf8_lossy(expected),
            "{} {}",
            String::from_utf8_lossy(*code),
            String::from_utf8_lossy(fields)
        );
        assert_eq!(answer.len(), 8, "an error answer carries no fields");
    }
    still_serves(hsm.address).await;
}

#[tokio::test]
async fn a_malformed_record_in_a_batch_is_rejected_alone() {
    let hsm = start().await;
    let mut fields = b"04card0002".to_vec();
    let good_shape = |date: &[u8; 4]| {
        let mut record = vec![b'P'];
        record.extend_from_slice(&[0x31, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
        record.extend_from_slice(&[0, 0, 0, 100, 0x06, 0x31, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
        record.extend_from_slice(date);
        record.extend_from_slice(&[0x08, 0x30, 0x00, 1, 2, 3, 4]);
        record
    };
    fields.extend(good_shape(&[0x20, 0x26, 0x11, 0x24]));
    fields.extend(good_shape(&[0x20, 0x26, 0x13, 0x24]));
    let answer = raw_exchange(hsm.address, &frame(b"0001", b"ZI", &fields)).await.expect("answer");
    assert_eq!(answer, b"0001ZJ0000020115");
}

#[tokio::test]
async fn truncated_frames_close_at_the_idle_timeout_and_short_frames_close_at_once() {
    let hsm = start_with(short_idle(), true).await;
    // Length says 100, 10 bytes come, then nothing: closed at the idle timeout.
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    stream.write_all(&[0, 100]).await.expect("write");
    stream.write_all(b"0000NC0000").await.expect("write");
    let started = std::time::Instant::now();
    assert_eq!(read_raw(&mut stream).await, None, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Truncated and the client hangs up: the server just drops the connection.
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    stream.write_all(&[0, 50, b'0', b'0']).await.expect("write");
    drop(stream);
    // Shorter than header + code, and zero length: closed at once.
    for bytes in [&[0u8, 3, b'0', b'0', b'0'][..], &[0, 0], &[0, 5, b'0', b'0', b'0', b'0', b'N']] {
        let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let started = std::time::Instant::now();
        assert_eq!(read_raw(&mut stream).await, None);
        assert!(started.elapsed() < Duration::from_millis(250), "closed before the idle timeout");
    }
    // A control character in the command code: closed.
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    stream.write_all(&frame(b"0000", b"N\x00", b"")).await.expect("write");
    assert_eq!(read_raw(&mut stream).await, None);
    // An idle connection is closed too.
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    assert_eq!(read_raw(&mut stream).await, None);
    still_serves(hsm.address).await;
}

#[tokio::test]
async fn oversize_messages_get_a_data_length_error() {
    let config = ServerConfig { message_max: 512, ..ServerConfig::default() };
    let hsm = start_with(config, true).await;
    let mut data = b"03E8".to_vec();
    data.extend(vec![b'x'; 1000]);
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    stream.write_all(&frame(b"0007", b"B2", &data)).await.expect("write");
    let answer = read_raw(&mut stream).await.expect("answer");
    assert_eq!(answer, b"0007B380");
    // The same connection goes on.
    stream.write_all(&frame(b"0008", b"B2", b"0002ok")).await.expect("write");
    assert_eq!(read_raw(&mut stream).await.expect("answer"), b"0008B300ok");
    // The largest message the 2-byte length allows, on a default server.
    let hsm = start().await;
    let mut data = b"FFF5".to_vec();
    data.extend(vec![b'y'; 0xFFF5]);
    let message = frame(b"0009", b"B2", &data);
    assert_eq!(message.len(), 2 + 65_535);
    let answer = raw_exchange(hsm.address, &message).await.expect("answer");
    assert_eq!(answer.len(), 8 + 0xFFF5);
}

#[tokio::test]
async fn a_client_with_the_wrong_header_length_gets_a_protocol_error_not_a_hang() {
    let hsm = start().await;
    let config = ClientConfig {
        header_length: 6,
        timeout: Duration::from_secs(2),
        ..ClientConfig::new(hsm.address.to_string())
    };
    let client = HsmClient::connect(config).await.expect("connect");
    match client.diagnostics().await {
        Err(ClientError::Protocol(_)) | Err(ClientError::Hsm(_)) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let config = ClientConfig {
        header_length: 2,
        timeout: Duration::from_secs(2),
        ..ClientConfig::new(hsm.address.to_string())
    };
    let client = HsmClient::connect(config).await.expect("connect");
    assert!(client.echo(b"abc").await.is_err());
    // A server with a 6-character header serves such clients.
    let six = start_with(ServerConfig { header_length: 6, ..ServerConfig::default() }, true).await;
    let config = ClientConfig { header_length: 6, ..ClientConfig::new(six.address.to_string()) };
    let client = HsmClient::connect(config).await.expect("connect");
    assert_eq!(client.echo(b"abc").await.expect("B2"), b"abc");
    still_serves(hsm.address).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let hsm = start().await;
    let mut stream = TcpStream::connect(hsm.address).await.expect("connect");
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let header = format!("{i:04}");
        let body = format!("0004{i:04}");
        // Some good, some bad, one unknown: all answered, in order.
        let code: &[u8; 2] = match i % 5 {
            3 => b"QQ",
            4 => b"NC",
            _ => b"B2",
        };
        burst.extend(frame(header.as_bytes(), code, body.as_bytes()));
    }
    stream.write_all(&burst).await.expect("write");
    for i in 0..500u32 {
        let answer = read_raw(&mut stream).await.expect("answer");
        assert_eq!(&answer[..4], format!("{i:04}").as_bytes());
        let expected: &[u8] = match i % 5 {
            3 => b"ZZ68",
            4 => b"ND15",
            _ => b"B300",
        };
        assert_eq!(&answer[4..8], expected, "answer {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once() {
    let hsm = start().await;
    let mut tasks = Vec::new();
    for c in 0..16u8 {
        let address = hsm.address.to_string();
        tasks.push(tokio::spawn(async move {
            let client = HsmClient::connect(ClientConfig { connections: 2, ..ClientConfig::new(address) })
                .await
                .expect("connect");
            let requests: Vec<hsm_sim::Request> =
                (0..200u8).map(|i| hsm_sim::Request::Echo { data: vec![c, i] }).collect();
            for (i, result) in client.call_many(&requests).await.into_iter().enumerate() {
                assert_eq!(result.expect("echo"), hsm_sim::Response::Echo { data: vec![c, i as u8] });
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    still_serves(hsm.address).await;
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_closed_an_idle_connection() {
    let hsm = start_with(short_idle(), true).await;
    let client = HsmClient::connect(ClientConfig { connections: 1, ..ClientConfig::new(hsm.address.to_string()) })
        .await
        .expect("connect");
    assert_eq!(client.echo(b"1").await.expect("first"), b"1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The pooled connection was closed by the server; the client noticed and
    // the next request goes out on a fresh connection.
    assert_eq!(client.echo(b"2").await.expect("second, on a new connection"), b"2");
    assert_eq!(client.echo(b"3").await.expect("third"), b"3");
}

#[tokio::test]
async fn a_request_with_no_answer_times_out() {
    // A listener that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = ClientConfig { timeout: Duration::from_millis(200), ..ClientConfig::new(address.to_string()) };
    let client = HsmClient::connect(config).await.expect("connect");
    assert!(matches!(client.diagnostics().await, Err(ClientError::Timeout(_))));
    assert!(matches!(HsmClient::connect(ClientConfig::new("127.0.0.1:1")).await, Err(ClientError::Connect(_))));
    let _ = ErrorCode::ALL;
}
