//! `rate_limit` filter: one or more GCRA limits per request (a per-second burst and a
//! per-minute quota, say), each keyed by a template over client IP, claims, headers or route.
//! Per instance, limits run on the `governor` crate; cluster-wide, on Redis with one atomic
//! round trip per request (a Lua GCRA script checking every limit, committing only if all
//! pass) over a small pool of multiplexed connections, with a timeout. When Redis cannot answer,
//! `fail_open` hands over to the local limiters and `fail_closed` refuses (503); either way the
//! request never waits past the timeout. Answers 429 with `Retry-After`, the IETF
//! `RateLimit-Policy`/`RateLimit` headers and the legacy `X-RateLimit-*`; `dry_run` only counts.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use once_cell::sync::Lazy;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::build::BuildContext;
use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::template::Template;
use crate::units::HumanDuration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The default key of every limit (a template; empty renders fall back to the client IP).
    #[serde(default = "default_key")]
    pub key: String,
    /// Shorthand for a limit named `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Shorthand for a limit named `per_minute` (e.g. `requests_per_minute: 1000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Burst of the `requests_per_second` shorthand (default: the rate itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Further limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitConfig>,
    /// Share the limits across instances through Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// Count what would be refused, refuse nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Send the `RateLimit*` and `X-RateLimit-*` headers on allowed responses too.
    #[serde(default = "yes")]
    pub headers: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Used in headers, metrics and Redis keys (default `limit-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This limit's key template (default: the filter's `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Requests allowed per `per`.
    pub requests: u32,
    pub per: HumanDuration,
    /// Requests allowed at once (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Redis down: the local (per-instance) limiters decide.
    #[default]
    FailOpen,
    /// Redis down: refuse with 503.
    FailClosed,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` (or `rediss://`).
    pub url: String,
    /// Multiplexed connections (requests are spread over them).
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// The longest a request waits for Redis.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// After a failure, how long requests skip Redis before one tries again.
    #[serde(default = "default_retry")]
    pub retry_interval: HumanDuration,
    /// Prefix of every Redis key.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

fn default_key() -> String {
    "{{ client_ip }}".into()
}
fn yes() -> bool {
    true
}
fn default_pool() -> usize {
    4
}
fn default_redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_prefix() -> String {
    "stoa:rl:".into()
}

type Governor =
    RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One limit's parameters (also the identity of its shared local state).
#[derive(Clone, Debug, PartialEq)]
struct LimitSpec {
    name: String,
    key: String,
    requests: u32,
    per: Duration,
    burst: u32,
}

impl LimitSpec {
    /// GCRA emission interval.
    fn period(&self) -> Duration {
        self.per / self.requests
    }
}

/// Per-instance limiter state, kept across reloads for an unchanged limit.
struct LocalLimiter {
    spec: LimitSpec,
    governor: Governor,
    last_gc: AtomicU64,
}

/// Process start, the origin of `last_gc` (truly process-wide: a clock origin).
static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

const GC_EVERY_SECS: u64 = 30;

impl LocalLimiter {
    /// The limiter of `spec`: a shared resource keyed by every parameter of the limit, so a
    /// reload that keeps a limit keeps its buckets, and one that changes it starts afresh.
    fn shared(spec: &LimitSpec, bctx: &mut BuildContext) -> std::result::Result<Arc<Self>, String> {
        let key = format!(
            "{}|{}|{}|{:?}|{}",
            spec.name, spec.key, spec.requests, spec.per, spec.burst
        );
        bctx.shared::<LocalLimiter>(&key, || {
            let burst = NonZeroU32::new(spec.burst).ok_or("burst: must be at least 1")?;
            let quota = Quota::with_period(spec.period())
                .ok_or("the limit's period is too small")?
                .allow_burst(burst);
            Ok(LocalLimiter {
                spec: spec.clone(),
                governor: RateLimiter::dashmap(quota)
                    .with_middleware::<StateInformationMiddleware>(),
                last_gc: AtomicU64::new(0),
            })
        })
    }

    fn check(self: &Arc<Self>, key: &str) -> LimitOutcome {
        let now = EPOCH.elapsed().as_secs();
        let last = self.last_gc.load(Ordering::Relaxed);
        if now >= last + GC_EVERY_SECS
            && self
                .last_gc
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let me = self.clone();
            crate::background::handle().spawn_blocking(move || {
                me.governor.retain_recent();
                me.governor.shrink_to_fit();
            });
        }
        let period = self.spec.period();
        match self.governor.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                LimitOutcome {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset: period * (self.spec.burst - remaining.min(self.spec.burst)),
                }
            }
            Err(not_until) => LimitOutcome {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                reset: period * self.spec.burst,
            },
        }
    }
}

/// One limit's verdict for one request.
#[derive(Clone, Copy, Debug)]
struct LimitOutcome {
    allowed: bool,
    remaining: u32,
    retry_after: Duration,
    /// Time until the limit is fully replenished.
    reset: Duration,
}

/// GCRA over every limit of a request, atomically: all pass (and are committed) or none is.
/// KEYS[i]: the limit's key; ARGV[2i-1], ARGV[2i]: its emission interval and its burst
/// tolerance, in microseconds. Returns {all_allowed, then per limit: allowed, remaining,
/// retry_after_us, reset_us}. The clock is Redis' own, so instances need no clock agreement.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local new_tats = {}
for i = 1, #KEYS do
  local period = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + period
  local allow_at = new_tat - tau
  if now < allow_at then
    out[1] = 0
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, allow_at - now)
    table.insert(out, tat - now)
  else
    new_tats[i] = new_tat
    table.insert(out, 1)
    table.insert(out, math.floor((tau - (new_tat - now)) / period))
    table.insert(out, 0)
    table.insert(out, new_tat - now)
  end
end
if out[1] == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1000)
  end
end
return out
"#;

struct RedisLimiter {
    client: redis::Client,
    pool_size: usize,
    pool: OnceLock<Vec<redis::aio::ConnectionManager>>,
    next: AtomicUsize,
    script: redis::Script,
    timeout: Duration,
    failure_mode: FailureMode,
    retry_interval: Duration,
    prefix: String,
    /// While `EPOCH.elapsed()` (ms) is below this, Redis is skipped.
    skip_until_ms: AtomicU64,
    /// When the last failure was logged (ms since `EPOCH`), to log once per interval.
    logged_ms: AtomicU64,
}

const LOG_EVERY_MS: u64 = 10_000;

impl RedisLimiter {
    fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let pool = self.pool.get_or_init(|| {
            // Created inside the background runtime, which then drives the connections.
            let _rt = crate::background::handle().enter();
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            (0..self.pool_size)
                .filter_map(|_| {
                    redis::aio::ConnectionManager::new_lazy_with_config(
                        self.client.clone(),
                        cfg.clone(),
                    )
                    .map_err(|e| warn!(error = %e, "cannot set up a Redis connection"))
                    .ok()
                })
                .collect()
        });
        if pool.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Some(pool[i].clone())
    }

    /// Run the GCRA script; `None` when Redis did not answer in time (or is being skipped).
    async fn check(
        &self,
        limits: &[(Arc<LocalLimiter>, String)],
    ) -> std::result::Result<Vec<LimitOutcome>, String> {
        let now_ms = EPOCH.elapsed().as_millis() as u64;
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err("skipped after a recent failure".into());
        }
        let mut conn = self.connection().ok_or("no Redis connection")?;
        let mut inv = self.script.prepare_invoke();
        for (l, key) in limits {
            let period = l.spec.period().as_micros() as u64;
            inv.key(format!("{}{}:{}", self.prefix, l.spec.name, key))
                .arg(period.max(1))
                .arg(period.max(1) * u64::from(l.spec.burst));
        }
        let call = inv.invoke_async::<Vec<i64>>(&mut conn);
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) if v.len() == 1 + 4 * limits.len() => Ok(v),
            Ok(Ok(v)) => Err(format!("unexpected script result of {} values", v.len())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(v) => Ok(v[1..]
                .chunks(4)
                .map(|c| LimitOutcome {
                    allowed: c[0] == 1,
                    remaining: c[1].max(0) as u32,
                    retry_after: Duration::from_micros(c[2].max(0) as u64),
                    reset: Duration::from_micros(c[3].max(0) as u64),
                })
                .collect()),
            Err(e) => {
                let now_ms = EPOCH.elapsed().as_millis() as u64;
                self.skip_until_ms.store(
                    now_ms + self.retry_interval.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Err(e)
            }
        }
    }

    fn record_failure(&self, error: &str) {
        let mode = match self.failure_mode {
            FailureMode::FailOpen => "fail_open",
            FailureMode::FailClosed => "fail_closed",
        };
        METRICS
            .rate_limit_backend_failures
            .with_label_values(&[mode])
            .inc();
        let now = EPOCH.elapsed().as_millis() as u64 + LOG_EVERY_MS;
        let last = self.logged_ms.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY_MS
            && self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(error = %error, failure_mode = mode, "rate limit: Redis unavailable (logged once per 10s)");
        }
    }
}

struct Limit {
    local: Arc<LocalLimiter>,
    key: Option<Template>,
}

/// Every limit for one set of rendered keys (local, or through Redis with its fail mode);
/// `true` when all admit one more request.
async fn admit_keys(keys: &[(Arc<LocalLimiter>, String)], redis: Option<&RedisLimiter>) -> bool {
    let outcomes = match redis {
        None => keys.iter().map(|(l, k)| l.check(k)).collect::<Vec<_>>(),
        Some(redis) => match redis.check(keys).await {
            Ok(o) => o,
            Err(e) => {
                redis.record_failure(&e);
                return redis.failure_mode == FailureMode::FailOpen;
            }
        },
    };
    outcomes.iter().all(|o| o.allowed)
}

/// The keys a `rate_limit` filter admitted this request under, kept so that a request that
/// carries more than one call (a JSON-RPC batch) can be charged for each.
#[derive(Clone)]
struct Charge {
    keys: Vec<(Arc<LocalLimiter>, String)>,
    redis: Option<Arc<RedisLimiter>>,
}

#[derive(Clone, Default)]
struct Charges(Vec<Charge>);

/// Charge `extra` more requests to every `rate_limit` filter that admitted this one; `false`
/// when any of them refuses (the request's first unit was charged when it came in).
pub async fn charge_extra(ctx: &RequestCtx, extra: usize) -> bool {
    let Some(Charges(all)) = ctx.extensions.get::<Charges>() else {
        return true;
    };
    for charge in all {
        for _ in 0..extra {
            if !admit_keys(&charge.keys, charge.redis.as_deref()).await {
                METRICS
                    .rate_limit_decisions
                    .with_label_values(&["batch", "limited"])
                    .inc();
                return false;
            }
        }
    }
    true
}

pub struct RateLimit {
    key: Template,
    limits: Vec<Limit>,
    redis: Option<Arc<RedisLimiter>>,
    dry_run: bool,
    headers: bool,
    /// `RateLimit-Policy` value, built once.
    policy_header: String,
}

/// The headers to add to the response of an allowed request.
#[derive(Clone)]
struct RateHeaders(Vec<(&'static str, String)>);

impl RateLimit {
    pub fn new(
        cfg: &RateLimitConfig,
        bctx: &mut BuildContext,
    ) -> std::result::Result<Self, String> {
        let mut specs: Vec<(LimitSpec, Option<String>)> = Vec::new();
        if let Some(rps) = cfg.requests_per_second {
            specs.push((
                LimitSpec {
                    name: "per_second".into(),
                    key: cfg.key.clone(),
                    requests: rps,
                    per: Duration::from_secs(1),
                    burst: cfg.burst.unwrap_or(rps),
                },
                None,
            ));
        } else if cfg.burst.is_some() {
            return Err("burst: only applies with requests_per_second (use limits[].burst)".into());
        }
        if let Some(rpm) = cfg.requests_per_minute {
            specs.push((
                LimitSpec {
                    name: "per_minute".into(),
                    key: cfg.key.clone(),
                    requests: rpm,
                    per: Duration::from_secs(60),
                    burst: rpm,
                },
                None,
            ));
        }
        for (i, l) in cfg.limits.iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| format!("limit-{i}"));
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(format!(
                    "limits[{i}].name: use letters, digits, `_`, `-` and `.`"
                ));
            }
            if l.per.0.is_zero() {
                return Err(format!("limits[{i}].per: must be more than 0"));
            }
            specs.push((
                LimitSpec {
                    name,
                    key: l.key.clone().unwrap_or_else(|| cfg.key.clone()),
                    requests: l.requests,
                    per: l.per.0,
                    burst: l.burst.unwrap_or(l.requests),
                },
                l.key.clone(),
            ));
        }
        if specs.is_empty() {
            return Err("set requests_per_second, requests_per_minute or limits".into());
        }
        let mut names: Vec<&str> = specs.iter().map(|(s, _)| s.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("limits: names must be unique".into());
        }
        let key = Template::parse(&cfg.key).map_err(|e| format!("key: {e}"))?;
        let mut limits = Vec::new();
        for (spec, own_key) in &specs {
            if spec.requests == 0 {
                return Err(format!("{}: requests must be at least 1", spec.name));
            }
            let key = own_key
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| format!("{}.key: {e}", spec.name))?;
            limits.push(Limit {
                local: LocalLimiter::shared(spec, bctx)
                    .map_err(|e| format!("{}: {e}", spec.name))?,
                key,
            });
        }
        let redis = match &cfg.redis {
            None => None,
            Some(r) => {
                let client =
                    redis::Client::open(r.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
                if r.pool_size == 0 {
                    return Err("redis.pool_size: must be at least 1".into());
                }
                Some(Arc::new(RedisLimiter {
                    client,
                    pool_size: r.pool_size,
                    pool: OnceLock::new(),
                    next: AtomicUsize::new(0),
                    script: redis::Script::new(GCRA_LUA),
                    timeout: r.timeout.0,
                    failure_mode: r.failure_mode,
                    retry_interval: r.retry_interval.0,
                    prefix: r.key_prefix.clone(),
                    skip_until_ms: AtomicU64::new(0),
                    logged_ms: AtomicU64::new(0),
                }))
            }
        };
        let policy_header = specs
            .iter()
            .map(|(s, _)| {
                format!(
                    "\"{}\";q={};w={}",
                    s.name,
                    s.requests,
                    s.per.as_secs().max(1)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(RateLimit {
            key,
            limits,
            redis,
            dry_run: cfg.dry_run,
            headers: cfg.headers,
            policy_header,
        })
    }

    /// Check every limit for one already-rendered key, as a request would (Redis included, with
    /// its fail mode); `true` when all admit it. Used by the benchmarks.
    pub async fn admit(&self, key: &str) -> bool {
        let keys: Vec<_> = self
            .limits
            .iter()
            .map(|l| (l.local.clone(), key.to_string()))
            .collect();
        admit_keys(&keys, self.redis.as_deref()).await
    }

    fn keys(&self, session: &Session, ctx: &RequestCtx) -> Vec<(Arc<LocalLimiter>, String)> {
        let default = self.key.render(session, ctx);
        self.limits
            .iter()
            .map(|l| {
                let mut k = match &l.key {
                    Some(t) => t.render(session, ctx),
                    None => default.clone(),
                };
                if k.is_empty() {
                    k = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                }
                if k.len() > 128 {
                    k = format!("{:x}", Sha256::digest(k.as_bytes()));
                }
                (l.local.clone(), k)
            })
            .collect()
    }

    /// The headers describing the most constraining limit.
    fn describe(
        &self,
        keys: &[(Arc<LocalLimiter>, String)],
        outcomes: &[LimitOutcome],
    ) -> Vec<(&'static str, String)> {
        let (i, o) = outcomes
            .iter()
            .enumerate()
            .min_by_key(|(i, o)| {
                // Refused limits first, then the smallest share remaining.
                let burst = keys[*i].0.spec.burst.max(1) as u64;
                (o.allowed, (o.remaining as u64 * 1_000_000) / burst)
            })
            .expect("at least one limit");
        let spec = &keys[i].0.spec;
        let reset = o.reset.as_secs_f64().ceil() as u64;
        vec![
            ("ratelimit-policy", self.policy_header.clone()),
            (
                "ratelimit",
                format!("\"{}\";r={};t={}", spec.name, o.remaining, reset),
            ),
            ("x-ratelimit-limit", spec.requests.to_string()),
            ("x-ratelimit-remaining", o.remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ]
    }
}

#[async_trait]
impl Filter for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST
            | if self.headers && !self.dry_run {
                phase::RESPONSE_HEADERS
            } else {
                0
            }
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let keys = self.keys(session, ctx);
        let started = std::time::Instant::now();
        let outcomes = match &self.redis {
            None => keys.iter().map(|(l, k)| l.check(k)).collect::<Vec<_>>(),
            Some(redis) => match redis.check(&keys).await {
                Ok(o) => o,
                Err(e) => {
                    redis.record_failure(&e);
                    if redis.failure_mode == FailureMode::FailClosed && !self.dry_run {
                        ctx.reject("rate_limit", "backend_unavailable");
                        return Ok(FilterAction::Respond(
                            LocalResponse::json_error(503, "rate limiting is unavailable")
                                .with_header("retry-after", "1"),
                        ));
                    }
                    keys.iter().map(|(l, k)| l.check(k)).collect()
                }
            },
        };
        let m = &METRICS.rate_limit_decisions;
        let refused = outcomes.iter().any(|o| !o.allowed);
        for ((l, _), o) in keys.iter().zip(&outcomes) {
            let result = match (o.allowed, self.dry_run) {
                (true, _) => "allowed",
                (false, false) => "limited",
                (false, true) => "dry_run_limited",
            };
            m.with_label_values(&[&l.spec.name, result]).inc();
            ctx.trace_event("rate_limit.decision", || {
                vec![
                    opentelemetry::KeyValue::new("rate_limit.name", l.spec.name.clone()),
                    opentelemetry::KeyValue::new("rate_limit.result", result),
                    opentelemetry::KeyValue::new(
                        "rate_limit.backend",
                        if self.redis.is_some() {
                            "redis"
                        } else {
                            "local"
                        },
                    ),
                    opentelemetry::KeyValue::new(
                        "duration_ms",
                        started.elapsed().as_secs_f64() * 1e3,
                    ),
                ]
            });
        }
        if self.dry_run {
            return Ok(FilterAction::Continue);
        }
        let headers = self.describe(&keys, &outcomes);
        if refused {
            let retry = outcomes
                .iter()
                .filter(|o| !o.allowed)
                .map(|o| o.retry_after)
                .max()
                .unwrap_or_default();
            let retry_secs = (retry.as_secs_f64().ceil() as u64).max(1);
            ctx.reject("rate_limit", "limited");
            let mut resp = LocalResponse::json_error(429, "rate limit exceeded")
                .with_header("retry-after", &retry_secs.to_string());
            for (k, v) in headers {
                resp.headers.push((k.to_string(), v));
            }
            return Ok(FilterAction::Respond(resp));
        }
        if self.headers {
            ctx.extensions.insert(RateHeaders(headers));
        }
        // What a batch of requests in this one HTTP request (MCP's JSON-RPC batches) charges.
        let charge = Charge {
            keys,
            redis: self.redis.clone(),
        };
        match ctx.extensions.get_mut::<Charges>() {
            Some(Charges(all)) => all.push(charge),
            None => {
                ctx.extensions.insert(Charges(vec![charge]));
            }
        }
        Ok(FilterAction::Continue)
    }

    fn on_response_headers(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(RateHeaders(headers)) = ctx.extensions.remove::<RateHeaders>() {
            for (k, v) in headers {
                response.insert_header(k, v)?;
            }
        }
        Ok(())
    }
}

impl crate::build::BuildFilter for RateLimit {
    const TYPE: &'static str = "rate_limit";
    type Config = RateLimitConfig;

    fn build(cfg: &RateLimitConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        RateLimit::new(cfg, bctx)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&METRICS);
    }
}

/// The `rate_limit` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct RateLimitMetrics {
    /// `stoa_rate_limit_decisions_total{limit,result}`: allowed, limited, dry_run_limited.
    pub rate_limit_decisions: prometheus::IntCounterVec,
    /// `stoa_rate_limit_backend_failures_total{mode}`: Redis errors or timeouts, by fail mode.
    pub rate_limit_backend_failures: prometheus::IntCounterVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: once_cell::sync::Lazy<RateLimitMetrics> =
    once_cell::sync::Lazy::new(|| RateLimitMetrics {
        rate_limit_decisions: crate::metrics::counter_vec(
            "stoa_rate_limit_decisions_total",
            "Rate-limit checks, by limit name and result",
            &["limit", "result"],
        ),
        rate_limit_backend_failures: crate::metrics::counter_vec(
            "stoa_rate_limit_backend_failures_total",
            "Rate-limit checks Redis could not answer in time, by the fail mode applied",
            &["mode"],
        ),
    });

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, requests: u32, per: u64, burst: u32) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            key: format!("{{{{ client_ip }}}}-{name}-{requests}-{per}-{burst}"),
            requests,
            per: Duration::from_secs(per),
            burst,
        }
    }

    fn no_settings() -> &'static std::collections::BTreeMap<String, String> {
        static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        &NONE
    }

    #[test]
    fn local_gcra_admits_the_burst_then_refuses() {
        let mut bctx = BuildContext::new(&[], no_settings(), None);
        let l = LocalLimiter::shared(&spec("t1", 5, 1, 5), &mut bctx).unwrap();
        let admitted = (0..20).filter(|_| l.check("k").allowed).count();
        assert_eq!(admitted, 5);
        let refused = l.check("k");
        assert!(!refused.allowed);
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(200)
        );
        // Another key has its own budget.
        assert!(l.check("other").allowed);
    }

    #[test]
    fn local_state_is_shared_by_identical_limits_and_kept_across_a_reload() {
        let mut bctx = BuildContext::new(&[], no_settings(), None);
        let a = LocalLimiter::shared(&spec("t2", 2, 60, 2), &mut bctx).unwrap();
        let b = LocalLimiter::shared(&spec("t2", 2, 60, 2), &mut bctx).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = LocalLimiter::shared(&spec("t2", 3, 60, 3), &mut bctx).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let v1 = bctx.finish().resources;
        let mut reload = BuildContext::new(&[], no_settings(), Some(&v1));
        let kept = LocalLimiter::shared(&spec("t2", 2, 60, 2), &mut reload).unwrap();
        assert!(Arc::ptr_eq(&a, &kept));
        let mut other_process = BuildContext::new(&[], no_settings(), None);
        let fresh = LocalLimiter::shared(&spec("t2", 2, 60, 2), &mut other_process).unwrap();
        assert!(!Arc::ptr_eq(&a, &fresh));
    }

    #[test]
    fn config_errors() {
        let cfg = |y: serde_json::Value| serde_json::from_value::<RateLimitConfig>(y).unwrap();
        let mut bctx = BuildContext::new(&[], no_settings(), None);
        let bctx = &mut bctx;
        assert!(RateLimit::new(&cfg(serde_json::json!({})), bctx).is_err());
        assert!(RateLimit::new(&cfg(serde_json::json!({"burst": 3})), bctx).is_err());
        assert!(RateLimit::new(
            &cfg(serde_json::json!({"limits": [{"requests": 0, "per": "1s"}]})),
            bctx
        )
        .is_err());
        assert!(RateLimit::new(
            &cfg(serde_json::json!({"key": "{{ nope }}", "requests_per_second": 1})),
            bctx
        )
        .is_err());
        let ok = RateLimit::new(
            &cfg(serde_json::json!({"requests_per_second": 10, "requests_per_minute": 100})),
            bctx,
        )
        .unwrap();
        assert_eq!(
            ok.policy_header,
            "\"per_second\";q=10;w=1, \"per_minute\";q=100;w=60"
        );
    }
}
