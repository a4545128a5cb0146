//! The per-process limiter used while Redis is unreachable.
//!
//! It enforces the same two rules as the Redis script (spacing between starts,
//! a cap on permits held) but only inside this process, with the share of the
//! fleet-wide limit that [`super::LimiterOptions::fallback_share`] gives it. It
//! never lets requests through unlimited.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Spacing plus a permit count, for one limit key, in one process.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    state: Mutex<State>,
    released: Notify,
}

#[derive(Debug)]
struct State {
    in_flight: u32,
    next_start: Instant,
}

impl LocalLimiter {
    pub(crate) fn new() -> Self {
        LocalLimiter {
            state: Mutex::new(State { in_flight: 0, next_start: Instant::now() }),
            released: Notify::new(),
        }
    }

    /// Waits for a permit under `delay` spacing and `concurrency` held permits.
    /// The permit is given back when the returned guard is dropped, also when
    /// this future is dropped while it waits for its start time.
    pub(crate) async fn acquire(self: &Arc<Self>, delay: Duration, concurrency: u32) -> LocalPermit {
        loop {
            // Register interest before checking, so a release between the check
            // and the wait is not missed.
            let released = self.released.notified();
            let start = {
                let mut s = self.lock();
                if s.in_flight < concurrency.max(1) {
                    s.in_flight += 1;
                    let now = Instant::now();
                    let start = s.next_start.max(now);
                    s.next_start = start + delay;
                    Some(start)
                } else {
                    None
                }
            };
            match start {
                Some(start) => {
                    let permit = LocalPermit { limiter: Arc::clone(self) };
                    tokio::time::sleep_until(start).await;
                    return permit;
                }
                None => {
                    // A bounded wait also covers a lowered limit, which sends no notification.
                    let _ = tokio::time::timeout(Duration::from_millis(100), released).await;
                }
            }
        }
    }

    fn release(&self) {
        {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.released.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two numbers that are always consistent; a panic while
        // holding the lock cannot leave them half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One permit of a [`LocalLimiter`], given back on drop.
#[derive(Debug)]
pub(crate) struct LocalPermit {
    limiter: Arc<LocalLimiter>,
}

impl Drop for LocalPermit {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limit_spaces_starts_and_caps_permits() {
        let limiter = Arc::new(LocalLimiter::new());
        let t0 = Instant::now();
        let a = limiter.acquire(Duration::from_millis(100), 2).await;
        let b = limiter.acquire(Duration::from_millis(100), 2).await;
        assert!(Instant::now() - t0 >= Duration::from_millis(100));
        let blocked = tokio::time::timeout(Duration::from_secs(1), limiter.acquire(Duration::from_millis(100), 2)).await;
        assert!(blocked.is_err(), "a third permit beyond concurrency 2 was granted");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), limiter.acquire(Duration::from_millis(100), 2))
            .await
            .expect("a released permit is reusable");
        drop(b);
    }
}
