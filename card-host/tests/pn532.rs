//! The PN532 emulator over a real pseudo-terminal pair, driven by a host written
//! here with the frame codec alone; and the `card-host serve --pn532` binary.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use card_host::Fen;
use card_host::pn532::command::{TypeATarget, code};
use card_host::pn532::frame::{self, ACK, NACK};
use card_host::pn532::{Decoder, Frame, Information, Pn532, Pty, Uid};

const WAIT: Duration = Duration::from_secs(5);

/// The host side of the line: sends command frames, reads frames back.
struct Host {
    port: serialport::TTYPort,
    decoder: Decoder,
}

impl Host {
    fn open(path: &Path) -> Host {
        let port = serialport::new(path.to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(10))
            .open_native()
            .expect("open the emulator's serial device");
        Host { port, decoder: Decoder::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.port.write_all(bytes).expect("write");
    }

    /// The next frame within `wait`, or `None`.
    fn frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 300];
        loop {
            match self.decoder.next_frame() {
                Some(Ok(frame)) => return Some(frame),
                Some(Err(error)) => panic!("broken frame from the emulator: {error}"),
                None => {}
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.port.read(&mut buffer) {
                Ok(count) => self.decoder.push(&buffer[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    /// Sends a command; expects its ACK, then returns the answer frame's bytes
    /// and its parameters.
    fn ask(&mut self, command: u8, parameters: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.send(&Information::command(command, parameters).expect("fits").to_bytes());
        assert_eq!(self.frame(WAIT), Some(Frame::Ack), "command {command:02X} acknowledged");
        match self.frame(WAIT) {
            Some(Frame::Information(answer)) => {
                assert_eq!(answer.code(), command + 1);
                (answer.to_bytes(), answer.parameters().to_vec())
            }
            other => panic!("answer to {command:02X}: {other:?}"),
        }
    }
}

#[test]
fn emulator_answers_a_host_on_a_pty() {
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("pn532");
    let mut pty = Pty::open(Some(&link)).expect("pty");
    assert_eq!(std::fs::read_link(&link).expect("a link"), pty.device());
    let mut chip = Pn532::new(support::new_card(0, Fen(4_200)), Uid::random_single([0xC1, 0x7C, 0x01]));
    let control = chip.control();
    let server = std::thread::spawn(move || {
        chip.serve(pty.master()).expect("serves");
        drop(pty);
    });

    let mut host = Host::open(&link);
    // libnfc's wake-up, then SAMConfiguration normal mode.
    let mut wake = vec![0x55, 0x55, 0x00, 0x00, 0x00];
    wake.extend(Information::command(code::SAM_CONFIGURATION, &[0x01]).expect("fits").to_bytes());
    host.send(&wake);
    assert_eq!(host.frame(WAIT), Some(Frame::Ack));
    assert!(matches!(host.frame(WAIT), Some(Frame::Information(answer)) if answer.data() == [0x15]));
    assert_eq!(host.ask(code::GET_FIRMWARE_VERSION, &[]).1, [0x32, 0x01, 0x06, 0x07]);
    assert_eq!(host.ask(code::DIAGNOSE, b"\x00libnfc").1, b"\x00libnfc");

    let (_, listed) = host.ask(code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]);
    let targets = TypeATarget::parse_list(&listed, true).expect("target data");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].uid, [0x08, 0xC1, 0x7C, 0x01]);
    assert_eq!(targets[0].ats[1..5], [0x78, 0x80, 0x81, 0x02], "ATS interface bytes, then the ATR's historical bytes");

    // SELECT the e-purse, GET BALANCE.
    let mut select = vec![0x01, 0x00, 0xA4, 0x04, 0x00, card_host::issue::PURSE_AID.len() as u8];
    select.extend_from_slice(&card_host::issue::PURSE_AID);
    let (_, selected) = host.ask(code::IN_DATA_EXCHANGE, &select);
    assert_eq!(selected[0], 0x00, "status");
    assert_eq!(selected[selected.len() - 2..], [0x90, 0x00]);
    let (frame_bytes, balance) = host.ask(code::IN_DATA_EXCHANGE, &[0x01, 0x80, 0x5C, 0x00, 0x02, 0x04]);
    assert_eq!(balance, [0x00, 0x00, 0x00, 0x10, 0x68, 0x90, 0x00]);

    // NACK: the same answer again, byte for byte.
    host.send(&NACK);
    assert_eq!(host.frame(WAIT).map(|frame| frame.to_bytes()), Some(frame_bytes));

    // A command with a broken checksum is not acknowledged; garbage before a
    // good one does not matter.
    let mut broken = Information::command(code::GET_FIRMWARE_VERSION, &[]).expect("fits").to_bytes();
    broken[6] ^= 0x10;
    host.send(&broken);
    assert_eq!(host.frame(Duration::from_millis(300)), None, "no ACK for a broken frame");
    host.send(&[0x13, 0x37, 0x00, 0xFF, 0x42, 0x00, 0x00]);
    assert_eq!(host.ask(code::GET_FIRMWARE_VERSION, &[]).1, [0x32, 0x01, 0x06, 0x07]);
    // An unknown command: ACK, then the error frame.
    host.send(&Information::command(0x7E, &[]).expect("fits").to_bytes());
    assert_eq!(host.frame(WAIT), Some(Frame::Ack));
    assert_eq!(host.frame(WAIT), Some(Frame::Error));
    host.send(&ACK);

    // The card leaves: InDataExchange times out (status 01).
    control.remove();
    assert_eq!(host.ask(code::IN_DATA_EXCHANGE, &[0x01, 0x80, 0x5C, 0x00, 0x02, 0x04]).1, [0x01]);
    assert_eq!(host.ask(code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]).1, [0x00]);

    control.stop();
    server.join().expect("server thread");
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed with the pty");
    assert_eq!(frame::parse(&ACK), Ok(Frame::Ack));
}

/// A host that sends and never reads fills the pty's queue; the emulator drops
/// the answers it cannot write and serves the next host.
#[test]
fn a_host_that_stops_reading_does_not_stop_the_emulator() {
    let mut pty = Pty::open(None).expect("pty");
    let device = pty.device().to_owned();
    let mut chip = Pn532::new(support::new_card(0, Fen(0)), Uid::random_single([1, 2, 3]));
    let control = chip.control();
    let server = std::thread::spawn(move || {
        let served = chip.serve(pty.master());
        drop(pty);
        served
    });
    let mut host = Host::open(&device);
    let command = Information::command(code::GET_FIRMWARE_VERSION, &[]).expect("fits").to_bytes();
    // Up to 8,000 answers of 19 bytes: more than the pty holds. The host's own
    // writes back up too once the emulator waits on its full queue.
    for _ in 0..1_000 {
        if host.port.write_all(&command.repeat(8)).is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    serialport::SerialPort::clear(&host.port, serialport::ClearBuffer::Input).expect("flush input");
    drop(host);
    let mut host = Host::open(&device);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        serialport::SerialPort::clear(&host.port, serialport::ClearBuffer::Input).expect("flush input");
        host.decoder.clear();
        host.send(&command);
        if host.frame(Duration::from_millis(200)) == Some(Frame::Ack) {
            break;
        }
        assert!(Instant::now() < deadline, "the emulator serves again");
    }
    assert!(
        matches!(host.frame(WAIT), Some(Frame::Information(answer)) if answer.parameters() == [0x32, 0x01, 0x06, 0x07])
    );
    control.stop();
    server.join().expect("server thread").expect("the emulator ends cleanly");
}

fn card_host(arguments: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_card-host"));
    command.args(arguments).env("RUST_LOG", "warn");
    command
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill").args([name, &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill {name}");
}

/// A served card-host process, killed if the test ends before it stops.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_link(link: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_link(link).is_err() {
        assert!(Instant::now() < deadline, "card-host serve made no link at {}", link.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_binary_links_the_pty_obeys_signals_and_unlinks() {
    let directory = tempfile::tempdir().expect("temp dir");
    let card = directory.path().join("card.json");
    let link = directory.path().join("ttyPN532");
    let issued =
        card_host(&["issue", "--out", card.to_str().expect("utf-8"), "--balance", "12.34"]).output().expect("issue");
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let child =
        card_host(&["serve", "--card", card.to_str().expect("utf-8"), "--pn532", link.to_str().expect("utf-8")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("serve starts");
    let mut served = Served(child);
    wait_for_link(&link);

    let mut host = Host::open(&link);
    host.send(&[0x55, 0x55, 0x00, 0x00, 0x00]);
    host.ask(code::SAM_CONFIGURATION, &[0x01]);
    assert_eq!(host.ask(code::GET_FIRMWARE_VERSION, &[]).1, [0x32, 0x01, 0x06, 0x07]);
    let targets =
        TypeATarget::parse_list(&host.ask(code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).1, true).expect("list");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].uid[0], 0x08, "a random single-size UID");

    signal(&served.0, "-USR1");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, answer) = host.ask(code::IN_DATA_EXCHANGE, &[0x01, 0x00, 0xB0, 0x95, 0x00, 0x1E]);
        if answer == [0x01] {
            break;
        }
        assert!(Instant::now() < deadline, "SIGUSR1 did not take the card out");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&served.0, "-USR2");
    let deadline = Instant::now() + WAIT;
    while host.ask(code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).1[0] != 1 {
        assert!(Instant::now() < deadline, "SIGUSR2 did not put the card back");
        std::thread::sleep(Duration::from_millis(20));
    }

    signal(&served.0, "-TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = served.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop card-host serve");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed on exit");
}

#[test]
fn serve_refuses_a_path_that_is_not_its_link() {
    let directory = tempfile::tempdir().expect("temp dir");
    let card = directory.path().join("card.json");
    let taken = directory.path().join("taken");
    std::fs::write(&taken, b"not a link").expect("file");
    assert!(card_host(&["issue", "--out", card.to_str().expect("utf-8")]).output().expect("issue").status.success());
    let output =
        card_host(&["serve", "--card", card.to_str().expect("utf-8"), "--pn532", taken.to_str().expect("utf-8")])
            .output()
            .expect("serve runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not a link"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&taken).expect("still there"), b"not a link");
    let both = card_host(&[
        "serve",
        "--card",
        card.to_str().expect("utf-8"),
        "--pn532",
        taken.to_str().expect("utf-8"),
        "--vpcd",
        "127.0.0.1:35963",
    ])
    .output()
    .expect("serve runs");
    assert!(!both.status.success(), "--pn532 and --vpcd are alternatives");
}
