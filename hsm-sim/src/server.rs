//! The TCP server: many clients, many requests a connection, pipelined requests
//! answered in order, an idle timeout and a maximum message size. A malformed
//! frame gets an error response, or the connection is closed; never a crash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::audit::{Audit, AuditRecord};
use crate::command::Request;
use crate::error::ErrorCode;
use crate::hsm::Hsm;
use crate::wire::{Code, CommandFrame, FrameError, HEADER_LENGTH_DEFAULT, MESSAGE_MAX, encode_frame};

/// The most connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 1_024;
/// Default idle timeout of a connection (no complete request within it closes it).
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Socket buffers of a connection.
const BUFFER_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub header_length: usize,
    /// The largest message accepted (at most [`MESSAGE_MAX`]).
    pub message_max: usize,
    pub idle_timeout: Duration,
    pub connections_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_length: HEADER_LENGTH_DEFAULT,
            message_max: MESSAGE_MAX,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX,
        }
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    hsm: Arc<Hsm>,
    config: ServerConfig,
    audit: Audit,
}

impl Server {
    pub async fn bind(address: &str, hsm: Arc<Hsm>, config: ServerConfig, audit: Audit) -> std::io::Result<Server> {
        assert!(config.header_length <= crate::wire::HEADER_LENGTH_MAX, "header length is checked by the caller");
        assert!(config.message_max <= MESSAGE_MAX, "a message length is 2 bytes");
        let listener = TcpListener::bind(address).await?;
        Ok(Server { listener, hsm, config, audit })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let permits = Arc::new(Semaphore::new(self.config.connections_max));
        let connections = AtomicU64::new(0);
        let config = Arc::new(self.config);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many connections; closing this one");
                continue;
            };
            let id = connections.fetch_add(1, Ordering::Relaxed) + 1;
            let (hsm, config, audit) = (self.hsm.clone(), config.clone(), self.audit.clone());
            tokio::spawn(async move {
                tracing::debug!(connection = id, %peer, "connected");
                let reason = serve_connection(stream, peer, id, hsm, &config, audit).await;
                tracing::debug!(connection = id, %peer, reason, "closed");
                drop(permit);
            });
        }
    }

    /// Starts serving on its own task; the returned address is where.
    pub fn spawn(self) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let address = self.local_addr()?;
        Ok((address, tokio::spawn(self.run())))
    }
}

/// Reads one message (without its length), or `None` at a clean end of stream.
async fn read_message(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<()>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length[..1]).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    reader.read_exact(&mut length[1..]).await?;
    let length = usize::from(u16::from_be_bytes(length));
    buffer.resize(length, 0);
    reader.read_exact(buffer).await?;
    Ok(Some(()))
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    hsm: Arc<Hsm>,
    config: &ServerConfig,
    audit: Audit,
) -> &'static str {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(BUFFER_BYTES, write_half);
    let mut message = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    let peer_text = peer.to_string();
    loop {
        match tokio::time::timeout(config.idle_timeout, read_message(&mut reader, &mut message)).await {
            Err(_) => return "idle timeout",
            Ok(Err(_)) => return "read error or truncated frame",
            Ok(Ok(None)) => return "end of stream",
            Ok(Ok(Some(()))) => {}
        }
        let started = Instant::now();
        let frame = match CommandFrame::parse(&message, config.header_length) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(connection = id, %peer, %error, "malformed frame; closing");
                return "malformed frame";
            }
        };
        out.clear();
        let (code, error, detail) = if message.len() > config.message_max {
            let answer = frame.code.response().unwrap_or(Code::UNKNOWN);
            encode_frame(&mut out, frame.header, answer, Some(ErrorCode::DataLength), &[]);
            (frame.code, ErrorCode::DataLength, format!("message bytes={}", message.len()))
        } else {
            answer(&hsm, &frame, &mut out).await
        };
        audit
            .record(AuditRecord {
                unix_ms: unix_ms(),
                connection: id,
                peer: peer_text.clone(),
                command: code.to_string(),
                error: String::from_utf8_lossy(&error.to_ascii()).into_owned(),
                detail,
                duration_us: started.elapsed().as_micros() as u64,
            })
            .await;
        if writer.write_all(&out).await.is_err() {
            return "write error";
        }
        if reader.buffer().is_empty() && writer.flush().await.is_err() {
            return "write error";
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Runs one framed command and encodes its response into `out`. Returns what
/// the audit log records.
async fn answer(hsm: &Arc<Hsm>, frame: &CommandFrame<'_>, out: &mut Vec<u8>) -> (Code, ErrorCode, String) {
    let request = match Request::parse(frame.code, frame.body) {
        Ok(request) => request,
        Err(error) => {
            let code = if error == ErrorCode::CommandNotSupported { Code::UNKNOWN } else { response_code(frame.code) };
            encode_frame(out, frame.header, code, Some(error), &[]);
            return (frame.code, error, String::new());
        }
    };
    let detail = request.audit_detail();
    let result = if Hsm::is_slow(&request) {
        let hsm = hsm.clone();
        tokio::task::spawn_blocking(move || hsm.execute(&request)).await.unwrap_or(Err(ErrorCode::Internal))
    } else {
        hsm.execute(&request)
    };
    let code = response_code(frame.code);
    match result {
        Ok(response) => {
            let fields = response.encode();
            encode_frame(out, frame.header, code, Some(ErrorCode::Ok), &fields);
            (frame.code, ErrorCode::Ok, detail)
        }
        Err(error) => {
            encode_frame(out, frame.header, code, Some(error), &[]);
            (frame.code, error, detail)
        }
    }
}

fn response_code(code: Code) -> Code {
    code.response().unwrap_or(Code::UNKNOWN)
}

/// What a frame parse error means, for callers that parse frames themselves.
pub fn frame_error_code(error: &FrameError) -> ErrorCode {
    match error {
        FrameError::TooLong { .. } => ErrorCode::DataLength,
        FrameError::TooShort { .. } | FrameError::BadCode => ErrorCode::InputData,
    }
}
