//! Shadow mode's contract discovery: the `shadow_capture` filter (`capture`) records the
//! exchanges of opted-in APIs without touching them, a bounded queue hands them to one worker
//! thread (`observatory`) that masks PII (`pii`) and stores them (`store`), retention purges
//! them, and contracts are inferred from them (`infer`, `contract`), reviewed and exported
//! through the admin API (`admin`) and enforced by the `uac_validation` filter (`validate`).
//! Configured by the top-level `shadow:` section (`config`), which `prepare` builds into each
//! config version (`ShadowVersion`); the `Observatory` (store, queue, worker) is a shared
//! resource kept across reloads.

pub mod admin;
mod capture;
mod config;
pub mod contract;
pub mod infer;
pub mod metrics;
mod observatory;
pub mod pii;
pub mod store;
pub mod validate;

pub use capture::{ShadowCapture, ShadowCaptureConfig};
pub use config::{
    CaptureConfig, OptIn, PiiConfig, Reviewer, ShadowConfig, StoreConfig, UacGeneration,
    MAX_RETENTION,
};
pub use observatory::{prepare, Observatory, ShadowVersion};
