//! A `terminal MODE --config FILE` process driven through its standard input,
//! its standard output read line by line; killed when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a line of answer, or the process's exit, may take.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TerminalProcess {
    child: Child,
    lines: Receiver<String>,
}

impl TerminalProcess {
    /// Starts `terminal ARGS --config CONFIG` (the binary brought up to date first).
    pub fn start(args: &[&str], config: &Path) -> TerminalProcess {
        let mut child = Command::new(crate::terminal_binary())
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("terminal");
        let lines = read_lines(child.stdout.take().expect("stdout"));
        TerminalProcess { child, lines }
    }

    /// The next line of output.
    pub fn line(&self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no line from the terminal within {LINE_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the terminal closed its output"),
        }
    }

    /// The next line of output if one comes within `timeout` (`None`: quiet).
    pub fn line_within(&self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the terminal closed its output"),
        }
    }

    /// Sends a command and returns the first line of its answer.
    pub fn command(&mut self, command: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("write");
        stdin.flush().expect("flush");
        self.line()
    }

    /// Waits for the process to exit by itself (its input closed); whether it succeeded.
    pub fn finish(mut self) -> bool {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + LINE_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the terminal did not exit");
    }

    /// `quit`, and the process ends cleanly.
    pub fn command_quit(mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "quit").expect("write");
        assert!(self.finish(), "the terminal exits cleanly after quit");
    }
}

impl Drop for TerminalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: ChildStdout) -> Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}
