//! `CircuitBreaker`: one per cluster that sets `circuit_breaker:`. It opens after N consecutive
//! failures or when the failure ratio over a sliding window passes a threshold; while open,
//! requests get a fast 503 without touching the upstream; after `open_for` it lets a few probe
//! requests through (half-open) and closes when they succeed, or opens again. A failure is a
//! connect error, a timeout, or a response status in `failure_statuses`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stoa_filters::units::HumanDuration;

use crate::metrics::METRICS;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open after this many failures in a row (0: only the ratio rule applies).
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Open when failures / requests over `window` reaches this (0: only the consecutive rule).
    #[serde(default = "default_ratio")]
    pub failure_ratio: f64,
    /// The sliding window of the ratio rule.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// The ratio rule needs at least this many requests in the window.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long the circuit stays open before probing.
    #[serde(default = "default_open_for")]
    pub open_for: HumanDuration,
    /// Probe requests let through while half-open; all must succeed to close.
    #[serde(default = "default_probes")]
    pub half_open_requests: u32,
    /// Upstream response statuses that count as failures.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
}

fn default_consecutive() -> u32 {
    5
}
fn default_ratio() -> f64 {
    0.5
}
fn default_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_min_requests() -> u32 {
    20
}
fn default_open_for() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_probes() -> u32 {
    1
}
fn default_failure_statuses() -> Vec<u16> {
    vec![500, 502, 503, 504]
}

impl CircuitBreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err("circuit_breaker.failure_ratio: must be between 0 and 1".into());
        }
        if self.consecutive_failures == 0 && self.failure_ratio == 0.0 {
            return Err(
                "circuit_breaker: set consecutive_failures or failure_ratio (both are 0)".into(),
            );
        }
        if self.half_open_requests == 0 {
            return Err("circuit_breaker.half_open_requests: must be at least 1".into());
        }
        if self.window.0 < Duration::from_millis(BUCKETS as u64) {
            return Err("circuit_breaker.window: too short".into());
        }
        Ok(())
    }
}

/// The state exported as `stoa_circuit_breaker_state` (0 closed, 1 open, 2 half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-width slot since `started` this bucket holds.
    slot: u64,
    requests: u32,
    failures: u32,
}

struct Inner {
    state: BreakerState,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
}

pub struct CircuitBreaker {
    cluster: String,
    cfg: CircuitBreakerConfig,
    started: Instant,
    bucket_width: Duration,
    inner: Mutex<Inner>,
}

/// What `try_acquire` granted: a normal request or a half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

impl CircuitBreaker {
    pub fn new(cluster: &str, cfg: CircuitBreakerConfig) -> Self {
        let bucket_width = cfg.window.0 / BUCKETS as u32;
        CircuitBreaker {
            cluster: cluster.to_string(),
            started: Instant::now(),
            bucket_width,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                buckets: [Bucket::default(); BUCKETS],
                opened_at: Instant::now(),
                probes_in_flight: 0,
                probe_successes: 0,
            }),
            cfg,
        }
    }

    /// This breaker's config version now serves: publish its state (a rejected reload's
    /// breakers never do, so they cannot overwrite the live one's gauge).
    pub fn activate(&self) {
        self.export(self.state());
    }

    pub fn is_failure_status(&self, status: u16) -> bool {
        self.cfg.failure_statuses.contains(&status)
    }

    fn export(&self, state: BreakerState) {
        METRICS
            .breaker_state
            .with_label_values(&[&self.cluster])
            .set(state.gauge());
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state == to {
            return;
        }
        inner.state = to;
        match to {
            BreakerState::Open => inner.opened_at = Instant::now(),
            BreakerState::HalfOpen => {
                inner.probes_in_flight = 0;
                inner.probe_successes = 0;
            }
            BreakerState::Closed => {
                inner.consecutive = 0;
                inner.buckets = [Bucket::default(); BUCKETS];
            }
        }
        METRICS
            .breaker_transitions
            .with_label_values(&[&self.cluster, to.label()])
            .inc();
        self.export(to);
        tracing::warn!(cluster = %self.cluster, state = to.label(), "circuit breaker changed state");
    }

    /// May a request go upstream? `None`: answer 503 now (with the seconds until a probe).
    pub fn try_acquire(&self) -> Result<Permit, u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.state == BreakerState::Open {
            let open_for = inner.opened_at.elapsed();
            if open_for < self.cfg.open_for.0 {
                return Err(((self.cfg.open_for.0 - open_for).as_secs_f64().ceil() as u64).max(1));
            }
            self.transition(&mut inner, BreakerState::HalfOpen);
        }
        if inner.state == BreakerState::HalfOpen {
            if inner.probes_in_flight + inner.probe_successes >= self.cfg.half_open_requests {
                return Err(1);
            }
            inner.probes_in_flight += 1;
            return Ok(Permit::Probe);
        }
        Ok(Permit::Normal)
    }

    /// A request that was let through ended without telling anything about the upstream (the
    /// client went away): a probe slot is freed, nothing is counted.
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }

    /// The outcome of a request that `try_acquire` let through.
    pub fn record(&self, permit: Permit, success: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if permit == Permit::Probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if inner.state != BreakerState::HalfOpen {
                return;
            }
            if !success {
                self.transition(&mut inner, BreakerState::Open);
            } else {
                inner.probe_successes += 1;
                if inner.probe_successes >= self.cfg.half_open_requests {
                    self.transition(&mut inner, BreakerState::Closed);
                }
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            return;
        }
        let slot = (self.started.elapsed().as_nanos() / self.bucket_width.as_nanos().max(1)) as u64;
        let bucket = &mut inner.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        bucket.requests += 1;
        if success {
            inner.consecutive = 0;
            return;
        }
        bucket.failures += 1;
        inner.consecutive += 1;
        let consecutive_trip =
            self.cfg.consecutive_failures > 0 && inner.consecutive >= self.cfg.consecutive_failures;
        let (requests, failures) = inner
            .buckets
            .iter()
            .filter(|b| b.slot + (BUCKETS as u64) > slot)
            .fold((0u32, 0u32), |(r, f), b| (r + b.requests, f + b.failures));
        let ratio_trip = self.cfg.failure_ratio > 0.0
            && requests >= self.cfg.min_requests
            && f64::from(failures) / f64::from(requests) >= self.cfg.failure_ratio;
        if consecutive_trip || ratio_trip {
            self.transition(&mut inner, BreakerState::Open);
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(consecutive: u32, ratio: f64, min: u32, open_ms: u64) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            consecutive_failures: consecutive,
            failure_ratio: ratio,
            window: HumanDuration(Duration::from_secs(10)),
            min_requests: min,
            open_for: HumanDuration(Duration::from_millis(open_ms)),
            half_open_requests: 1,
            failure_statuses: default_failure_statuses(),
        }
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let b = CircuitBreaker::new("t-consecutive", cfg(3, 0.0, 1, 50));
        for _ in 0..2 {
            let p = b.try_acquire().unwrap();
            b.record(p, false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let p = b.try_acquire().unwrap();
        b.record(p, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_err());
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.try_acquire().unwrap();
        assert_eq!(probe, Permit::Probe);
        // Only one probe at a time.
        assert!(b.try_acquire().is_err());
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = CircuitBreaker::new("t-probe", cfg(1, 0.0, 1, 20));
        let p = b.try_acquire().unwrap();
        b.record(p, false);
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.try_acquire().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn ratio_needs_min_requests() {
        let b = CircuitBreaker::new("t-ratio", cfg(0, 0.5, 10, 1000));
        for i in 0..9 {
            let p = b.try_acquire().unwrap();
            b.record(p, i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let p = b.try_acquire().unwrap();
        b.record(p, false);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
