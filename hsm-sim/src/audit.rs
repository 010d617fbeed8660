//! The audit log: one JSON line per command (who, what, result, how long), never
//! key or PIN material and never a whole card number. Written by one task from a
//! bounded queue, so a slow disk slows the HSM down instead of losing records.

use std::path::Path;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Records waiting to be written; a full queue makes commands wait.
pub const AUDIT_QUEUE_MAX: usize = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub unix_ms: u64,
    pub connection: u64,
    pub peer: String,
    pub command: String,
    pub error: String,
    pub detail: String,
    pub duration_us: u64,
}

/// Where audit records go: a file (JSON lines) and the `hsm_sim::audit` tracing target.
#[derive(Debug, Clone)]
pub struct Audit {
    sender: Option<mpsc::Sender<AuditRecord>>,
}

impl Audit {
    /// An audit log appended to `path`.
    pub async fn to_file(path: &Path) -> std::io::Result<Audit> {
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
        let (sender, mut receiver) = mpsc::channel::<AuditRecord>(AUDIT_QUEUE_MAX);
        tokio::spawn(async move {
            let mut buffer = Vec::with_capacity(64 * 1024);
            while let Some(record) = receiver.recv().await {
                write_record(&mut buffer, &record);
                while let Ok(record) = receiver.try_recv() {
                    write_record(&mut buffer, &record);
                    if buffer.len() > 1024 * 1024 {
                        break;
                    }
                }
                if let Err(error) = file.write_all(&buffer).await.and(file.flush().await) {
                    tracing::error!(%error, "audit log write failed");
                }
                buffer.clear();
            }
        });
        Ok(Audit { sender: Some(sender) })
    }

    /// Records only through tracing (tests, benchmarks).
    pub fn tracing_only() -> Audit {
        Audit { sender: None }
    }

    pub async fn record(&self, record: AuditRecord) {
        tracing::debug!(
            target: "hsm_sim::audit",
            connection = record.connection,
            peer = %record.peer,
            command = %record.command,
            error = %record.error,
            detail = %record.detail,
            duration_us = record.duration_us,
        );
        if let Some(sender) = &self.sender {
            // The writer task only ends with the runtime.
            let _ = sender.send(record).await;
        }
    }
}

fn write_record(buffer: &mut Vec<u8>, record: &AuditRecord) {
    if serde_json::to_writer(&mut *buffer, record).is_ok() {
        buffer.push(b'\n');
    }
}
