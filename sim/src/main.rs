//! `aegis-sim`: run the JIRA, Qualys and Nexpose simulators standalone.
//!
//! Prints one JSON line with the four base URLs on stdout once listening, then serves until
//! Ctrl-C (or SIGTERM).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use aegis_sim::{
    Credentials, EstateSpec, JiraSettings, Profile, QualysLimits, ScanTiming, SimConfig, Simulator,
    WorldFixture,
};
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "aegis-sim",
    version,
    about = "Simulators of the JIRA, Qualys and Nexpose APIs Aegis uses"
)]
struct Args {
    /// Address to bind every listener to.
    #[arg(long, default_value = "127.0.0.1", env = "AEGIS_SIM_BIND")]
    bind: IpAddr,
    /// JIRA port (0 = any free port).
    #[arg(long, default_value_t = 0, env = "AEGIS_SIM_JIRA_PORT")]
    jira_port: u16,
    /// Qualys port (0 = any free port).
    #[arg(long, default_value_t = 0, env = "AEGIS_SIM_QUALYS_PORT")]
    qualys_port: u16,
    /// Nexpose port (0 = any free port).
    #[arg(long, default_value_t = 0, env = "AEGIS_SIM_NEXPOSE_PORT")]
    nexpose_port: u16,
    /// Control API port (0 = any free port). The control API is also under /_sim on every port.
    #[arg(long, default_value_t = 0, env = "AEGIS_SIM_CONTROL_PORT")]
    control_port: u16,
    /// Host name to put in URLs the simulators hand out (defaults to the bind address).
    #[arg(long)]
    public_host: Option<String>,
    /// Generated estate: number of hosts.
    #[arg(long, default_value_t = 5)]
    hosts: usize,
    /// Generated estate: vulnerabilities per host.
    #[arg(long, default_value_t = 3)]
    detections_per_host: usize,
    /// Generated estate: seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A JSON world fixture to load instead of the generated estate.
    #[arg(long)]
    fixture: Option<PathBuf>,
    #[arg(long, default_value = "aegis", env = "AEGIS_SIM_USERNAME")]
    username: String,
    #[arg(long, default_value = "aegis", env = "AEGIS_SIM_PASSWORD")]
    password: String,
    /// Bearer token JIRA accepts.
    #[arg(long, default_value = "aegis-sim-token", env = "AEGIS_SIM_JIRA_TOKEN")]
    jira_token: String,
    /// JIRA project key.
    #[arg(long, default_value = "VULN")]
    jira_project: String,
    /// Server-side cap on JIRA search maxResults.
    #[arg(long, default_value_t = 1000)]
    jira_max_results: usize,
    /// Seconds a scan stays queued.
    #[arg(long, default_value_t = 5.0)]
    scan_queued_secs: f64,
    /// Seconds a scan runs.
    #[arg(long, default_value_t = 20.0)]
    scan_running_secs: f64,
    /// Seconds a finished scan is being processed (Qualys PROCESSED=0, Nexpose integrating).
    #[arg(long, default_value_t = 5.0)]
    scan_processing_secs: f64,
    /// Fidelity profile: strict or aegis-compat.
    #[arg(long, default_value = "strict", value_parser = parse_profile)]
    profile: Profile,
    /// Qualys calls allowed per path per window.
    #[arg(long, default_value_t = 3600)]
    qualys_rate_limit: u32,
    /// Qualys rate-limit window in seconds.
    #[arg(long, default_value_t = 3600)]
    qualys_window_secs: u32,
    /// Qualys parallel calls allowed.
    #[arg(long, default_value_t = 2)]
    qualys_concurrency: u32,
    /// Only advertise Qualys limits, never answer 409.
    #[arg(long)]
    qualys_no_enforce: bool,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    match s {
        "strict" => Ok(Profile::Strict),
        "aegis-compat" => Ok(Profile::AegisCompat),
        _ => Err(format!("unknown profile '{s}' (strict or aegis-compat)")),
    }
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let fixture = match &args.fixture {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read fixture {}", path.display()))?;
            let f: WorldFixture = serde_json::from_str(&text).with_context(|| {
                format!("fixture {} is not a valid world fixture", path.display())
            })?;
            Some(f)
        }
    };
    let cfg = SimConfig {
        estate: EstateSpec {
            hosts: args.hosts,
            detections_per_host: args.detections_per_host,
            seed: args.seed,
        },
        fixture,
        bind: args.bind,
        jira_port: args.jira_port,
        qualys_port: args.qualys_port,
        nexpose_port: args.nexpose_port,
        control_port: args.control_port,
        public_host: args.public_host,
        credentials: Credentials {
            username: args.username,
            password: args.password,
            jira_bearer_token: args.jira_token,
        },
        scan_timing: ScanTiming {
            queued: secs("scan-queued-secs", args.scan_queued_secs)?,
            running: secs("scan-running-secs", args.scan_running_secs)?,
            processing: secs("scan-processing-secs", args.scan_processing_secs)?,
        },
        profile: args.profile,
        jira: JiraSettings {
            project_key: args.jira_project,
            max_results_cap: args.jira_max_results,
            ..JiraSettings::default()
        },
        qualys: QualysLimits {
            rate_limit: args.qualys_rate_limit,
            window_sec: args.qualys_window_secs,
            concurrency_limit: args.qualys_concurrency,
            enforce: !args.qualys_no_enforce,
            ..QualysLimits::default()
        },
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg)
        .await
        .context("cannot start the simulators")?;
    println!("{}", serde_json::to_string(&sim.urls())?);
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
