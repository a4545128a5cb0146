//! Vendor integrations, one module per vendor, behind the traits jobs use:
//! [`scanner`] (Qualys, Nexpose) and [`ticketing`] (JIRA). Jobs depend on the
//! traits, so a test or a simulator can stand in without changing job code.
//! Every HTTP request goes through `aegis_shared::source_http` (fleet-wide
//! rate limits, retries, credentials that never reach a log).

pub mod jira;
pub mod nexpose;
pub mod qualys;
pub mod scanner;
pub mod scans;
pub mod ticketing;
