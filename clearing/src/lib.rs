#![doc = include_str!("../README.md")]

pub mod api;
pub mod batch;
pub mod bench;
pub mod clock;
pub mod db;
pub mod error;
pub mod fuzzing;
pub mod grey;
pub mod ingest;
pub mod ledger;
pub mod money;
pub mod personalise;
pub mod registry;
pub mod report;
pub mod run_day;
pub mod screen;

pub use batch::{Batch, Record, RecordKind, RecordRejection};
pub use db::{Db, Dialect};
pub use error::Error;
pub use ingest::{IngestReport, ingest};
pub use money::{BusinessDay, FeeRate, fee_fen};
pub use run_day::{DaySummary, RunOptions, run_day};
