//! The request journal: one entry per vendor request, with method, path and query, start and
//! end time (wall clock with ms in RFC 3339 plus a monotonic microsecond counter), status, the
//! number of requests of the same vendor already in flight when it started, and the faults
//! that fired. Rate-limit tests read it to prove pacing and concurrency limits.
//!
//! Invariant: ids are consecutive, so an entry is found by `id - first_id` in the ring.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use crate::faults::Vendor;

/// Entries kept before the oldest are dropped.
const CAPACITY: usize = 200_000;

fn ms_rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn opt_ms_rfc3339<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ms_rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct JournalEntry {
    pub id: u64,
    pub vendor: Vendor,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    #[serde(serialize_with = "ms_rfc3339")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_ms_rfc3339")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Microseconds since the simulator started (monotonic clock) at arrival.
    pub started_us: u64,
    /// Microseconds since the simulator started when the last body byte was handed over.
    pub ended_us: Option<u64>,
    /// HTTP status sent; `None` when the connection was reset or the entry is still open.
    pub status: Option<u16>,
    /// Requests of the same vendor in flight when this one arrived (not counting itself).
    pub in_flight_at_start: usize,
    pub faults: Vec<String>,
}

impl JournalEntry {
    /// `path?query` as received.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Journal {
    epoch: Instant,
    entries: Mutex<(u64, VecDeque<JournalEntry>)>,
    in_flight: [AtomicUsize; 3],
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            epoch: Instant::now(),
            entries: Mutex::new((1, VecDeque::new())),
            in_flight: Default::default(),
        }
    }
}

fn slot(v: Vendor) -> usize {
    match v {
        Vendor::Jira => 0,
        Vendor::Qualys => 1,
        Vendor::Nexpose => 2,
    }
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, VecDeque<JournalEntry>)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Requests of `vendor` currently in flight.
    pub fn in_flight(&self, vendor: Vendor) -> usize {
        self.in_flight[slot(vendor)].load(Ordering::SeqCst)
    }

    /// Record a request's arrival; the returned guard closes the entry when dropped.
    pub fn begin(
        self: &Arc<Self>,
        vendor: Vendor,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> InFlight {
        let started_us = self.micros();
        let started_at = Utc::now();
        let in_flight = self.in_flight[slot(vendor)].fetch_add(1, Ordering::SeqCst);
        let mut g = self.lock();
        let (first, entries) = &mut *g;
        let id = *first + entries.len() as u64;
        entries.push_back(JournalEntry {
            id,
            vendor,
            method: method.to_string(),
            path: path.to_string(),
            query: query.map(str::to_string),
            started_at,
            ended_at: None,
            started_us,
            ended_us: None,
            status: None,
            in_flight_at_start: in_flight,
            faults: Vec::new(),
        });
        if entries.len() > CAPACITY {
            entries.pop_front();
            *first += 1;
        }
        InFlight {
            journal: Arc::clone(self),
            id,
            vendor,
            open: true,
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut JournalEntry)) {
        let mut g = self.lock();
        let (first, entries) = &mut *g;
        if let Some(e) = id
            .checked_sub(*first)
            .and_then(|i| entries.get_mut(i as usize))
        {
            f(e);
        }
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().1.iter().cloned().collect()
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        let (first, entries) = &mut *g;
        *first += entries.len() as u64;
        entries.clear();
    }
}

/// An open journal entry; dropping it records the end time and leaves the in-flight count.
#[derive(Debug)]
pub struct InFlight {
    journal: Arc<Journal>,
    id: u64,
    vendor: Vendor,
    open: bool,
}

impl InFlight {
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn set_status(&self, status: u16) {
        self.journal.update(self.id, |e| e.status = Some(status));
    }
    pub fn add_fault(&self, name: &str) {
        self.journal
            .update(self.id, |e| e.faults.push(name.to_string()));
    }
    pub fn finish(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let us = self.journal.micros();
        let now = Utc::now();
        self.journal.update(self.id, |e| {
            e.ended_us = Some(us);
            e.ended_at = Some(now);
        });
        self.journal.in_flight[slot(self.vendor)].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish();
    }
}
