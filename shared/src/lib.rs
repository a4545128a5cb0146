//! Everything the Aegis binaries share: configuration, database access and the
//! schema, the operator-facing tables, secrets, logging, telemetry and metrics.
//!
//! This crate depends on no Aegis binary; the coordinator, the worker and the
//! `aegis` CLI depend on it.

pub mod broker;
pub mod config;
pub mod db;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod secrets;
pub mod services;
pub mod source_http;
pub mod startup;

pub use config::Settings;
