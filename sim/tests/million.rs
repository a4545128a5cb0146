//! Serving one million generated detections (50,000 hosts × 20) with flat memory.
//! In its own test binary so the process RSS measures this test alone.

mod common;

use std::time::Instant;

use aegis_sim::{EstateSpec, SimConfig};
use futures::StreamExt;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_detections_stream_with_flat_memory() {
    let sim = common::start_with(SimConfig {
        estate: EstateSpec {
            hosts: 50_000,
            detections_per_host: 20,
            seed: 7,
        },
        ..Default::default()
    })
    .await;
    let baseline = rss_kib();
    let started = Instant::now();
    let resp = common::client()
        .post(format!(
            "{}/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=0&status=New,Active,Re-Opened,Fixed",
            sim.qualys_url()
        ))
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "aegis-sim tests")
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    let detection = memchr::memmem::Finder::new(b"<DETECTION>");
    let host = memchr::memmem::Finder::new(b"<HOST>");
    let (mut detections, mut hosts, mut bytes, mut peak) = (0usize, 0usize, 0usize, baseline);
    let mut tail: Vec<u8> = Vec::new();
    let mut last = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut chunks = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        bytes += chunk.len();
        // Count across chunk boundaries: keep the last 10 bytes of the previous chunk and count
        // only matches that end in the new bytes (those inside the tail were counted already).
        let mut window = std::mem::take(&mut tail);
        let old = window.len();
        window.extend_from_slice(&chunk);
        detections += detection
            .find_iter(&window)
            .filter(|at| at + 11 > old)
            .count();
        hosts += host.find_iter(&window).filter(|at| at + 6 > old).count();
        let keep = window.len().min(10);
        tail = window[window.len() - keep..].to_vec();
        last = window[window.len().saturating_sub(64)..].to_vec();
        chunks += 1;
        if chunks.is_multiple_of(64) {
            peak = peak.max(rss_kib());
        }
    }
    peak = peak.max(rss_kib());
    let elapsed = started.elapsed();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    println!("{detections} detections, {hosts} hosts, {} MiB in {elapsed:?}; RSS {} MiB -> peak {} MiB (+{growth_mib} MiB)",
        bytes / (1024 * 1024), baseline / 1024, peak / 1024);
    assert_eq!(hosts, 50_000);
    assert_eq!(detections, 1_000_000);
    assert!(String::from_utf8_lossy(&last)
        .trim_end()
        .ends_with("</HOST_LIST_VM_DETECTION_OUTPUT>"));
    assert!(
        growth_mib < 150,
        "RSS grew by {growth_mib} MiB while streaming"
    );
    sim.shutdown().await;
}
