//! The shared (L2) store: Redis behind a small trait, so the pipeline never sees redis types.
//!
//! Every call has a short timeout (`REDIS_TIMEOUT_MS`) and goes through a breaker: when Redis
//! is down, calls fail in nanoseconds instead of each waiting for the timeout, and the
//! service runs on L1 alone. The connection is lazy and reconnects by itself.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    config::BreakerSettings,
    resilience::breaker::{Breaker, BreakerState},
};

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the shared store is unavailable")]
    Unavailable,
    #[error("the shared store did not answer in time")]
    Timeout,
}

/// Outcome of the atomic GCRA rate-limit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraVerdict {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

#[async_trait]
pub trait SharedStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError>;
    /// Deletes every key starting with `prefix`; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;
    async fn publish(&self, channel: &str, message: &str) -> Result<(), StoreError>;
    /// One GCRA step on `key`: `burst` requests, one more every `interval`.
    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<GcraVerdict, StoreError>;
    /// One withdrawal from a cluster-wide retry budget on `key`: adds `deposits` (first
    /// attempts by unix second), then grants a retry when the retries of the last `window`
    /// seconds are below `floor` + `percent`% of its calls — all in one atomic step.
    async fn retry_budget(
        &self,
        key: &str,
        window: Duration,
        floor: u64,
        percent: u64,
        deposits: &[(u64, u64)],
    ) -> Result<bool, StoreError>;
    /// Round trip to the store (for `/status`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// `up`, `degraded` (breaker open or recent errors).
    fn status(&self) -> StoreStatus;
}

#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub status: &'static str,
    pub breaker: BreakerState,
    pub errors_total: u64,
    pub short_circuited_total: u64,
    /// Times the background probe saw Redis answer again and closed the breaker.
    pub recoveries_total: u64,
}

/// Atomic GCRA with the server's clock, so every replica shares one quota.
/// KEYS[1] key; ARGV[1] emission interval (µs); ARGV[2] burst.
/// Returns {1, remaining} or {0, retry_after_µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((tolerance - ahead) / interval)}
"#;

/// The cluster-wide retry budget: a hash of per-second counts, `c<sec>` calls and `r<sec>`
/// retries, with the server's clock deciding the window.
/// KEYS[1] key; ARGV window (s), floor, percent, then (second, calls) pairs.
/// Returns 1 when a retry is granted (and counted), else 0.
const RETRY_BUDGET: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local percent = tonumber(ARGV[3])
for i = 4, #ARGV - 1, 2 do
  local sec = tonumber(ARGV[i])
  if sec > now - window and sec <= now + 1 then
    redis.call('HINCRBY', KEYS[1], 'c' .. sec, tonumber(ARGV[i + 1]))
  end
end
local calls, retries = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  local sec = tonumber(string.sub(f, 2)) or 0
  if sec <= now - window then
    redis.call('HDEL', KEYS[1], f)
  elseif string.sub(f, 1, 1) == 'c' then
    calls = calls + tonumber(fields[i + 1])
  else
    retries = retries + tonumber(fields[i + 1])
  end
end
local granted = 0
if retries < floor + math.floor(calls * percent / 100) then
  redis.call('HINCRBY', KEYS[1], 'r' .. now, 1)
  granted = 1
end
redis.call('EXPIRE', KEYS[1], window * 2)
return granted
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
    breaker: Breaker,
    script: redis::Script,
    budget_script: redis::Script,
    errors: AtomicU64,
    short_circuited: AtomicU64,
    recoveries: AtomicU64,
}

/// How often a background probe checks a Redis the breaker has given up on.
pub const RECOVERY_PROBE_EVERY: Duration = Duration::from_millis(250);

fn breaker_settings() -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: 3,
        failure_rate: 0.5,
        min_calls: 50,
        open: Duration::from_millis(1_000),
        half_open_probes: 1,
    }
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start-up is not an error.
    pub fn connect(url: &str, timeout: Duration) -> Result<Arc<RedisStore>, StoreError> {
        let client = redis::Client::open(url).map_err(|_| StoreError::Unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|_| StoreError::Unavailable)?;
        Ok(Arc::new(RedisStore {
            client,
            conn,
            timeout,
            breaker: Breaker::new("redis", &breaker_settings(), None),
            script: redis::Script::new(GCRA),
            budget_script: redis::Script::new(RETRY_BUDGET),
            errors: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
        }))
    }

    /// While the breaker is not closed, checks every [`RECOVERY_PROBE_EVERY`] whether Redis
    /// answers again — on a fresh connection, then on the shared one (whose first call after
    /// an outage fails on the dead socket and reconnects) — and closes the breaker as soon as
    /// both do. Recovery then takes well under a second instead of waiting for traffic and
    /// for the breaker's growing open interval.
    pub fn spawn_recovery_probe(self: &Arc<Self>) {
        crate::every::every(RECOVERY_PROBE_EVERY, self, |store| async move {
            if store.breaker.state() != BreakerState::Closed && store.answers_again().await {
                store.breaker.reset();
                store.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!("redis answers again: L2 and the shared limits are back in use");
            }
            true
        });
    }

    async fn answers_again(&self) -> bool {
        let ping = |mut c: redis::aio::MultiplexedConnection| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        let fresh = tokio::time::timeout(self.timeout, async {
            ping(self.client.get_multiplexed_async_connection().await?).await
        })
        .await;
        if !matches!(fresh, Ok(Ok(_))) {
            return false;
        }
        for _ in 0..3 {
            let mut shared = self.conn.clone();
            let answered = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut shared),
            )
            .await;
            if matches!(answered, Ok(Ok(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn guarded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(permit) = self.breaker.try_acquire() else {
            self.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable);
        };
        match tokio::time::timeout(self.timeout, op(self.conn.clone())).await {
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                permit.failure();
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "redis call failed");
                Err(StoreError::Unavailable)
            }
            Err(_) => {
                permit.failure();
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Timeout)
            }
        }
    }

    /// Listens on `channel` for as long as the process runs, reconnecting after failures.
    /// `on_message` gets every payload; `on_resubscribe` runs after a reconnection, when
    /// messages may have been missed. The flag returned is raised while subscribed.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        channel: &'static str,
        on_message: impl Fn(&str) + Send + Sync + 'static,
        on_resubscribe: impl Fn() + Send + Sync + 'static,
    ) -> Arc<AtomicBool> {
        let store = Arc::downgrade(self);
        let listening = Arc::new(AtomicBool::new(false));
        let flag = listening.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(s) = store.upgrade() else { break };
                let client = s.client.clone();
                let timeout = s.timeout.max(Duration::from_millis(200));
                drop(s);
                let connected = tokio::time::timeout(timeout, async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                })
                .await;
                match connected {
                    Ok(Ok(mut ps)) => {
                        flag.store(true, Ordering::Release);
                        if !first {
                            tracing::info!(channel, "redis subscription restored");
                            on_resubscribe();
                        }
                        let mut messages = ps.on_message();
                        while let Some(msg) = messages.next().await {
                            if let Ok(payload) = msg.get_payload::<String>() {
                                on_message(&payload);
                            }
                        }
                        flag.store(false, Ordering::Release);
                        tracing::warn!(channel, "redis subscription lost");
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                first = false;
            }
        });
        listening
    }
}

#[async_trait]
impl SharedStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.guarded(|mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl.as_millis().max(1) as u64;
        self.guarded(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let pattern = format!("{prefix}*");
        self.guarded(|mut c| async move {
            let mut cursor: u64 = 0;
            let mut deleted = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await?;
                if !keys.is_empty() {
                    deleted += redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<u64>(&mut c)
                        .await?;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
        .await
    }

    async fn publish(&self, channel: &str, message: &str) -> Result<(), StoreError> {
        self.guarded(|mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<GcraVerdict, StoreError> {
        let micros = interval.as_micros().max(1) as u64;
        let script = &self.script;
        let (allowed, value): (i64, i64) = self
            .guarded(|mut c| async move {
                script
                    .key(key)
                    .arg(micros)
                    .arg(burst.max(1))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if allowed == 1 {
            GcraVerdict::Allowed {
                remaining: value.max(0) as u32,
            }
        } else {
            GcraVerdict::Limited {
                retry_after: Duration::from_micros(value.max(0) as u64),
            }
        })
    }

    async fn retry_budget(
        &self,
        key: &str,
        window: Duration,
        floor: u64,
        percent: u64,
        deposits: &[(u64, u64)],
    ) -> Result<bool, StoreError> {
        let script = &self.budget_script;
        let granted: i64 = self
            .guarded(|mut c| async move {
                let mut invocation = script.key(key);
                invocation
                    .arg(window.as_secs().max(1))
                    .arg(floor)
                    .arg(percent);
                for (sec, calls) in deposits {
                    invocation.arg(*sec).arg(*calls);
                }
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(granted == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.guarded(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    fn status(&self) -> StoreStatus {
        let state = self.breaker.state();
        StoreStatus {
            status: if state == BreakerState::Closed {
                "up"
            } else {
                "degraded"
            },
            breaker: state,
            errors_total: self.errors.load(Ordering::Relaxed),
            short_circuited_total: self.short_circuited.load(Ordering::Relaxed),
            recoveries_total: self.recoveries.load(Ordering::Relaxed),
        }
    }
}
