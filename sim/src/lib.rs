//! `aegis-sim`: stateful simulators of the JIRA, Qualys and Nexpose API subsets Aegis uses,
//! all backed by one world (hosts, truth, knowledge base, scans, tickets), each on its own
//! loopback port, with a control API for tests and demos.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aegis_sim::SimError> {
//! use aegis_sim::{EstateSpec, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig {
//!     estate: EstateSpec { hosts: 5, detections_per_host: 3, seed: 42 },
//!     ..Default::default()
//! })
//! .await?;
//! println!("JIRA at {}, Qualys at {}", sim.jira_url(), sim.qualys_url());
//! sim.kill_host("10.1.0.1".parse().unwrap())?;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Module map: [`world`] (shared model, generator, clock), [`jira`], [`qualys`], [`nexpose`]
//! (one module per vendor: routes + state), [`control`] (the `/_sim` API and the in-process
//! operations behind it), [`faults`], [`journal`], and `server` (listeners and the outer
//! service that journals requests and applies faults).

pub mod control;
pub mod faults;
pub mod jira;
pub mod journal;
pub mod nexpose;
pub mod qualys;
mod server;
pub mod world;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use control::{HostPatch, ScheduledScanSpec};
pub use faults::{FaultAction, FaultSpec, FaultStatus, Vendor};
pub use journal::JournalEntry;
pub use qualys::state::ScanState as QualysScanState;
pub use world::{
    EstateSpec, HostFixture, KbEntry, Proto, TrackingMethod, VulnFixture, VulnKey, WorldFixture,
};

use faults::FaultTable;
use journal::Journal;
use world::{Clock, World};

/// Errors of the simulator's library API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid fixture: {0}")]
    BadFixture(String),
    #[error("no host with IP {0} in the simulated estate")]
    UnknownHost(Ipv4Addr),
    #[error("no scan {0}")]
    UnknownScan(String),
    #[error("JIRA rejected the change ({status}): {message}")]
    Jira { status: u16, message: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Fidelity profile (see spec §5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Behave like the real vendors where known.
    #[default]
    Strict,
    /// Also accept the quirks of the original Go Aegis (trailing-slash create, RFC 3339 in date
    /// fields, bare strings for option fields, `123.000000` Nexpose scan ids).
    AegisCompat,
}

/// Credentials accepted by every vendor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Accepted by JIRA as `Authorization: Bearer <token>`.
    pub jira_bearer_token: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            username: "aegis".into(),
            password: "aegis".into(),
            jira_bearer_token: "aegis-sim-token".into(),
        }
    }
}

/// How long scans stay in each phase (real time plus the virtual clock offset).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanTiming {
    pub queued: Duration,
    pub running: Duration,
    /// Qualys: Finished with PROCESSED=0; Nexpose: `integrating`.
    pub processing: Duration,
}

impl Default for ScanTiming {
    fn default() -> Self {
        ScanTiming {
            queued: Duration::from_secs(5),
            running: Duration::from_secs(20),
            processing: Duration::from_secs(5),
        }
    }
}

impl ScanTiming {
    /// Time from launch until the scan stops running (enters Finished / integrating).
    pub fn running_ends(&self) -> Duration {
        self.queued.saturating_add(self.running)
    }

    /// Time from launch until the scan is processed (Finished PROCESSED=1 / finished).
    pub fn processed_at(&self) -> Duration {
        self.running_ends().saturating_add(self.processing)
    }

    /// Scans finish (processed) about one second after launch: for tests.
    pub fn fast() -> ScanTiming {
        ScanTiming {
            queued: Duration::from_millis(200),
            running: Duration::from_millis(500),
            processing: Duration::from_millis(300),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JiraSettings {
    pub project_key: String,
    pub project_name: String,
    /// Server-side cap on `maxResults` (JIRA Server default 1000; Cloud 100).
    pub max_results_cap: usize,
}

impl Default for JiraSettings {
    fn default() -> Self {
        JiraSettings {
            project_key: "VULN".into(),
            project_name: "Vulnerabilities".into(),
            max_results_cap: 1000,
        }
    }
}

/// Qualys API limits, advertised in `X-RateLimit-*` / `X-Concurrency-Limit-*` headers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QualysLimits {
    /// Calls allowed per API path per window.
    pub rate_limit: u32,
    pub window_sec: u32,
    /// Parallel API calls allowed.
    pub concurrency_limit: u32,
    /// Answer 409 (codes 1965 / 1960) when a limit is exceeded; otherwise only advertise.
    pub enforce: bool,
    /// Concurrent scans allowed before launch fails with the "limit has already been reached" text.
    pub concurrent_scan_limit: usize,
}

impl Default for QualysLimits {
    fn default() -> Self {
        QualysLimits {
            rate_limit: 3600,
            window_sec: 3600,
            concurrency_limit: 2,
            enforce: true,
            concurrent_scan_limit: 10,
        }
    }
}

/// Everything needed to start the simulators.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The generated estate; ignored when `fixture` is set.
    pub estate: EstateSpec,
    /// An explicit world (may itself ask for a generated part via `fixture.estate`).
    pub fixture: Option<WorldFixture>,
    pub bind: IpAddr,
    /// Port 0 = any free port.
    pub jira_port: u16,
    pub qualys_port: u16,
    pub nexpose_port: u16,
    pub control_port: u16,
    /// Host name used in URLs the simulators hand out (Qualys WARNING/URL, `self` links);
    /// defaults to the bind address.
    pub public_host: Option<String>,
    pub credentials: Credentials,
    pub scan_timing: ScanTiming,
    pub profile: Profile,
    pub jira: JiraSettings,
    pub qualys: QualysLimits,
    /// Largest Nexpose `size` honoured (real console: 500).
    pub nexpose_max_page_size: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            estate: EstateSpec::default(),
            fixture: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            jira_port: 0,
            qualys_port: 0,
            nexpose_port: 0,
            control_port: 0,
            public_host: None,
            credentials: Credentials::default(),
            scan_timing: ScanTiming::default(),
            profile: Profile::Strict,
            jira: JiraSettings::default(),
            qualys: QualysLimits::default(),
            nexpose_max_page_size: 500,
        }
    }
}

impl SimConfig {
    fn initial_fixture(&self) -> WorldFixture {
        self.fixture.clone().unwrap_or_else(|| WorldFixture {
            estate: Some(self.estate),
            ..Default::default()
        })
    }
}

/// Base URLs of the four listeners.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimUrls {
    pub jira: String,
    pub qualys: String,
    pub nexpose: String,
    pub control: String,
}

/// A running simulator's shared state (the world, clock, faults, journal, URLs) and the
/// operations of the control API (`fix_vulnerability`, `kill_host`, `jira_transition`,
/// `inject_fault`, `request_log`, … — see `control.rs`). Every listener holds one.
pub struct Control {
    pub(crate) cfg: SimConfig,
    pub(crate) clock: Clock,
    world: Mutex<World>,
    pub(crate) faults: FaultTable,
    pub(crate) journal: Arc<Journal>,
    pub(crate) urls: SimUrls,
    /// Per-path request times for the Qualys rate limit.
    pub(crate) qualys_windows: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Control {
    /// Lock the world, first advancing scan lifecycles to the current (virtual) time.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        let mut w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        w.tick(self.clock.now(), &self.cfg.scan_timing);
        w
    }

    pub(crate) fn replace_world(&self, fixture: &WorldFixture) -> Result<(), SimError> {
        let fresh = World::build(fixture, &self.cfg, self.now())?;
        *self.world.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Socket addresses the simulators listen on.
#[derive(Clone, Copy, Debug)]
pub struct SimAddresses {
    pub jira: SocketAddr,
    pub qualys: SocketAddr,
    pub nexpose: SocketAddr,
    pub control: SocketAddr,
}

/// A running set of simulators.
pub struct Simulator {
    ctx: Arc<Control>,
    addrs: SimAddresses,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(ip: IpAddr, port: u16, listener: &'static str) -> Result<TcpListener, SimError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            listener,
            addr,
            source,
        })
}

impl Simulator {
    /// Bind the four listeners and start serving.
    pub async fn start(cfg: SimConfig) -> Result<Simulator, SimError> {
        let jira = bind(cfg.bind, cfg.jira_port, "JIRA").await?;
        let qualys = bind(cfg.bind, cfg.qualys_port, "Qualys").await?;
        let nexpose = bind(cfg.bind, cfg.nexpose_port, "Nexpose").await?;
        let control = bind(cfg.bind, cfg.control_port, "control").await?;
        let local = |l: &TcpListener| {
            l.local_addr().map_err(|source| SimError::Bind {
                listener: "local address",
                addr: SocketAddr::new(cfg.bind, 0),
                source,
            })
        };
        let addrs = SimAddresses {
            jira: local(&jira)?,
            qualys: local(&qualys)?,
            nexpose: local(&nexpose)?,
            control: local(&control)?,
        };
        let host = cfg.public_host.clone().unwrap_or_else(|| match cfg.bind {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".into(),
            IpAddr::V4(ip) => ip.to_string(),
        });
        let url = |a: SocketAddr| format!("http://{host}:{}", a.port());
        let urls = SimUrls {
            jira: url(addrs.jira),
            qualys: url(addrs.qualys),
            nexpose: url(addrs.nexpose),
            control: url(addrs.control),
        };
        let clock = Clock::default();
        let world = World::build(&cfg.initial_fixture(), &cfg, clock.now())?;
        let ctx = Arc::new(Control {
            cfg,
            clock,
            world: Mutex::new(world),
            faults: FaultTable::default(),
            journal: Arc::new(Journal::default()),
            urls,
            qualys_windows: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = watch::channel(false);
        let with_control = |r: axum::Router<Arc<Control>>| {
            r.nest("/_sim", control::router())
                .with_state(Arc::clone(&ctx))
        };
        let mut tasks = Vec::new();
        for (listener, vendor, router) in [
            (
                jira,
                Some(Vendor::Jira),
                with_control(jira::router(Arc::clone(&ctx))),
            ),
            (
                qualys,
                Some(Vendor::Qualys),
                with_control(qualys::router(Arc::clone(&ctx))),
            ),
            (
                nexpose,
                Some(Vendor::Nexpose),
                with_control(nexpose::router(Arc::clone(&ctx))),
            ),
            (control, None, with_control(axum::Router::new())),
        ] {
            tasks.push(tokio::spawn(server::serve(
                listener,
                vendor,
                router,
                Arc::clone(&ctx),
                rx.clone(),
            )));
        }
        // Scans finish on time even when nobody polls.
        let ticker_ctx = Arc::clone(&ctx);
        let mut ticker_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = ticker_rx.changed() => break,
                    _ = every.tick() => { drop(ticker_ctx.world()); }
                }
            }
        }));
        tracing::info!(jira = %ctx.urls.jira, qualys = %ctx.urls.qualys, nexpose = %ctx.urls.nexpose,
            control = %ctx.urls.control, "aegis-sim listening");
        Ok(Simulator {
            ctx,
            addrs,
            shutdown: tx,
            tasks,
        })
    }

    pub fn urls(&self) -> SimUrls {
        self.ctx.urls.clone()
    }
    pub fn jira_url(&self) -> String {
        self.ctx.urls.jira.clone()
    }
    pub fn qualys_url(&self) -> String {
        self.ctx.urls.qualys.clone()
    }
    pub fn nexpose_url(&self) -> String {
        self.ctx.urls.nexpose.clone()
    }
    pub fn control_url(&self) -> String {
        self.ctx.urls.control.clone()
    }
    pub fn addresses(&self) -> SimAddresses {
        self.addrs
    }
    pub fn config(&self) -> &SimConfig {
        &self.ctx.cfg
    }

    /// The shared state behind the in-process API (same operations as the control API).
    pub fn control(&self) -> &Control {
        &self.ctx
    }

    /// Stop every listener and connection.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl std::ops::Deref for Simulator {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.ctx
    }
}
