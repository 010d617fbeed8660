//! Where a software card keeps its non-volatile memory: a card image file written
//! atomically, so that a card killed at any moment reloads either the state before
//! a command or the state after it, never a mixture.
//!
//! A save writes the whole image to a temporary file beside the image, flushes it
//! to disk (`fsync`), renames it over the image, and flushes the directory, so the
//! rename itself is durable.
//!
//! For crash tests the environment variable `CARD_HOST_FAILPOINT` names a point in
//! a save at which the process aborts (as `kill -9` would): `before-temp-sync`,
//! `before-rename`, or `before-directory-sync`. `CARD_HOST_FAILPOINT_SKIP=N` lets N
//! saves pass first.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest card image read back.
pub const IMAGE_SIZE_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("card image {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("card image {path} is larger than {IMAGE_SIZE_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("card image {path} is not a valid image: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

/// A point in a save at which a crash test may abort the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    BeforeTempSync,
    BeforeRename,
    BeforeDirectorySync,
}

impl FailPoint {
    fn from_env() -> Option<(FailPoint, u64)> {
        let point = match std::env::var("CARD_HOST_FAILPOINT").ok()?.as_str() {
            "before-temp-sync" => FailPoint::BeforeTempSync,
            "before-rename" => FailPoint::BeforeRename,
            "before-directory-sync" => FailPoint::BeforeDirectorySync,
            _ => return None,
        };
        let skip = std::env::var("CARD_HOST_FAILPOINT_SKIP").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
        Some((point, skip))
    }
}

/// The non-volatile memory of a software card.
#[derive(Debug)]
pub enum Storage {
    /// Kept in memory only (in-process tests and benchmarks).
    Memory,
    /// Kept in an image file, saved atomically after every change.
    File { path: PathBuf, fail_point: Option<(FailPoint, u64)>, saves: AtomicU64 },
}

impl Storage {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Storage::File { path: path.into(), fail_point: FailPoint::from_env(), saves: AtomicU64::new(0) }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Storage::Memory => None,
            Storage::File { path, .. } => Some(path),
        }
    }

    /// Saves the whole image durably. On error the image file still holds the
    /// previous state.
    pub fn save<T: Serialize>(&self, image: &T) -> Result<(), StorageError> {
        let Storage::File { path, fail_point, saves } = self else {
            return Ok(());
        };
        let save_number = saves.fetch_add(1, Ordering::Relaxed);
        let crash_at = |point: FailPoint| {
            if let Some((at, skip)) = fail_point
                && *at == point
                && save_number >= *skip
            {
                tracing::warn!(?point, "fail point reached: aborting as a crash would");
                std::process::abort();
            }
        };
        let io = |source| StorageError::Io { path: path.clone(), source };
        let bytes =
            serde_json::to_vec_pretty(image).map_err(|source| StorageError::Format { path: path.clone(), source })?;
        let temporary = temporary_path(path);
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        crash_at(FailPoint::BeforeTempSync);
        file.sync_all().map_err(io)?;
        drop(file);
        crash_at(FailPoint::BeforeRename);
        fs::rename(&temporary, path).map_err(io)?;
        crash_at(FailPoint::BeforeDirectorySync);
        let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(directory).and_then(|directory| directory.sync_all()).map_err(io)?;
        Ok(())
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads an image file. A leftover temporary file from an interrupted save is
/// ignored: the image file is always the last complete save.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, StorageError> {
    let io = |source| StorageError::Io { path: path.to_owned(), source };
    let size = fs::metadata(path).map_err(io)?.len();
    if size > IMAGE_SIZE_MAX {
        return Err(StorageError::TooLarge { path: path.to_owned() });
    }
    let bytes = fs::read(path).map_err(io)?;
    serde_json::from_slice(&bytes).map_err(|source| StorageError::Format { path: path.to_owned(), source })
}

/// Writes a new image file (issuance); refuses to overwrite unless asked.
pub fn create<T: Serialize>(path: &Path, image: &T, overwrite: bool) -> Result<(), StorageError> {
    if !overwrite && path.exists() {
        return Err(StorageError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists (use --force to replace it)",
            ),
        });
    }
    Storage::File { path: path.to_owned(), fail_point: None, saves: AtomicU64::new(0) }.save(image)
}
