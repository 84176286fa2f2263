//! The notifier's own dead-man's switch: a GET to `heartbeat_url` every
//! `heartbeat_interval` while the daemon is healthy, a GET to
//! `<heartbeat_url>/fail` while it is persistently failing.
//!
//! If the rig loses power or network, the daemon cannot say so; an external
//! push monitor (healthchecks.io, Uptime Kuma) that stops hearing from it
//! can. The `/fail` suffix is those services' convention for "alive, but
//! broken". The URL carries the monitor's token, so it is treated as a
//! secret: only its scheme and host are ever logged or shown by `check`.
//!
//! What "healthy" means is decided by the pure [`health`] from a
//! [`Snapshot`] of [`Signals`], which the other threads feed:
//!
//! - the supervisor records at each of its ping rounds whether both worker
//!   threads answered the previous ping ([`Signals::record_workers`]);
//! - the sender records every answer Discord gave ([`Signals::record_outcome`],
//!   per route): a delivery, a rate limit (429), a rejected body or a gone
//!   message all prove Discord reachable and the webhook working; a network
//!   error or a 5xx (`Retry`), or a webhook Discord refuses (`Stop`), start a
//!   failure.
//!
//! A failure is *persistent* once it has lasted a whole heartbeat interval
//! (no answer proving a route works for that long while posts keep failing,
//! or a worker thread not answering for that long). Until then the daemon
//! is "doubtful": it sends nothing, so a monitor with a grace period is not
//! told anything either way. Rate limits are healthy: no `/fail` for them.
//!
//! Healthy needs proof: a route no answer has proved working since the
//! pipeline started is doubtful, not healthy. While nothing is posted
//! nothing proves Discord reachable, so when no answer proved a route
//! within the last interval the heartbeat thread probes that webhook with
//! `GET /api/webhooks/{id}/{token}` (Discord returns the webhook object and
//! posts nothing): 2xx and 429 prove it; 401, 403 and 404 (a deleted
//! webhook, a wrong token), 5xx and network errors start a failure, which
//! after a whole interval is `/fail`. So a rig whose network or Discord is
//! down from boot, with nothing to post, reports `/fail` rather than
//! pinging "healthy" forever; an idle rig costs one GET per webhook per
//! interval, a busy one none. A failing heartbeat endpoint is logged
//! once per streak and never affects delivery: the heartbeat runs on its
//! own thread with a short timeout. Neither the webhook token nor the
//! heartbeat URL's path is ever logged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::discord::Outcome;
use crate::service::Stats;
use crate::webhook::Webhook;

/// Default `heartbeat_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Longest wait for the monitor's answer (shorter for short intervals).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{shown:?} is not an http:// or https:// URL with a host")]
    Url { shown: String },
    #[error("GET {url}: {why}")]
    Ping { url: String, why: String },
}

/// `heartbeat_url` and `heartbeat_interval`, validated. `Debug` hides the
/// URL's path (the monitor's token).
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    url: String,
    pub interval: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.shown())
            .field("interval", &self.interval)
            .finish()
    }
}

impl Settings {
    /// Accepts an `http://` or `https://` URL with a host (a self-hosted
    /// Uptime Kuma is often plain http on the local network). A trailing
    /// `/` is dropped so that `/fail` is appended cleanly.
    pub fn new(url: &str, interval: Duration) -> Result<Settings, HeartbeatError> {
        let url = url.trim().trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace))
            || url.contains(char::is_whitespace)
        {
            return Err(HeartbeatError::Url { shown: redact(url) });
        }
        Ok(Settings {
            url: url.to_string(),
            interval,
        })
    }

    /// The URL pinged while healthy (token included: only for the request).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL pinged on a persistent failure.
    pub fn fail_url(&self) -> String {
        match self.url.split_once('?') {
            Some((path, query)) => format!("{path}/fail?{query}"),
            None => format!("{}/fail", self.url),
        }
    }

    /// The URL as shown in logs and by `check`: scheme and host only.
    pub fn shown(&self) -> String {
        redact(&self.url)
    }
}

/// A heartbeat URL as it may be shown: scheme and host, the path (the
/// monitor's token) as `****`, also for a URL too mangled to parse.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        return crate::webhook::redact_secrets(url);
    }
    match url.split_once(['/', '?']) {
        Some((host, _)) => format!("{}/****", crate::webhook::redact_secrets(host)),
        None => crate::webhook::redact_secrets(url),
    }
}

/// What the heartbeat says this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Ping `heartbeat_url`.
    Healthy,
    /// Something is wrong, but not yet for long (or the daemon is still
    /// starting): send nothing.
    Doubtful,
    /// Ping `<heartbeat_url>/fail`; the reason is logged.
    Failing(String),
}

/// What the other threads reported, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The supervisor has seen both workers answer a ping at least once.
    pub workers_seen: bool,
    /// Since when a worker has not answered the supervisor's pings.
    pub stalled_since: Option<Instant>,
    /// Since when the longest-failing route has had no working answer.
    pub failing_since: Option<Instant>,
    /// A route has had no answer at all yet, neither proof nor failure
    /// (the heartbeat probes it before judging).
    pub unproven: bool,
}

/// Whether the daemon is healthy at `now`; a failure counts once it has
/// lasted `fail_after` (the heartbeat interval).
pub fn health(s: &Snapshot, now: Instant, fail_after: Duration) -> Health {
    let lasted = |since: Instant| now.saturating_duration_since(since);
    if let Some(since) = s.stalled_since {
        if lasted(since) >= fail_after {
            return Health::Failing(format!(
                "a worker thread has not answered for {} s",
                lasted(since).as_secs()
            ));
        }
        return Health::Doubtful;
    }
    if let Some(since) = s.failing_since {
        if lasted(since) >= fail_after {
            return Health::Failing(format!(
                "posting to Discord has failed for {} s",
                lasted(since).as_secs()
            ));
        }
        return Health::Doubtful;
    }
    if !s.workers_seen || s.unproven {
        return Health::Doubtful;
    }
    Health::Healthy
}

/// The routes (of `routes`) to probe at `now`: those no answer proved
/// working within the last `interval` (`proven`: route → last proof).
pub fn due_probes(
    proven: &BTreeMap<usize, Instant>,
    routes: usize,
    now: Instant,
    interval: Duration,
) -> Vec<usize> {
    (0..routes)
        .filter(|r| {
            proven
                .get(r)
                .is_none_or(|t| now.saturating_duration_since(*t) >= interval)
        })
        .collect()
}

/// What a probe's answer (`GET` of the webhook: a status, or why there
/// was none) says, as the outcome of a post would.
pub fn probe_outcome(answer: Result<u16, String>) -> Outcome {
    match answer {
        Ok(status) if (200..300).contains(&status) => Outcome::Delivered(Default::default()),
        // Rate limited is reachable, and healthy.
        Ok(429) => Outcome::RateLimited {
            wait: Duration::ZERO,
            info: Default::default(),
            cloudflare: false,
        },
        Ok(status @ (401 | 403 | 404)) => Outcome::Stop {
            status,
            why: format!("the webhook answered HTTP {status} to a probe"),
        },
        Ok(status) => Outcome::Retry {
            why: format!("HTTP {status} to a probe"),
        },
        Err(why) => Outcome::Retry { why },
    }
}

/// Whether an answer from Discord proves the route works. A rate limit, a
/// rejected body and a gone message are answers of a working webhook.
pub fn proves_working(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Retry { .. } | Outcome::Stop { .. })
}

/// Health reports shared between threads (a field of [`Stats`]).
#[derive(Debug, Default)]
pub struct Signals {
    workers_seen: AtomicBool,
    stalled_since: Mutex<Option<Instant>>,
    /// Route index → since when it has failed.
    failing: Mutex<BTreeMap<usize, Instant>>,
    /// Route index → the last answer that proved it working.
    proven: Mutex<BTreeMap<usize, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Signals {
    /// Discord's answer to one request of route `route`.
    pub fn record_outcome(&self, route: usize, outcome: &Outcome, now: Instant) {
        let mut failing = lock(&self.failing);
        if proves_working(outcome) {
            failing.remove(&route);
            lock(&self.proven).insert(route, now);
        } else {
            failing.entry(route).or_insert(now);
        }
    }

    /// Whether the worker threads (watcher, sender, night watch) answered the supervisor's last ping.
    pub fn record_workers(&self, answered: bool, now: Instant) {
        let mut stalled = lock(&self.stalled_since);
        if answered {
            self.workers_seen.store(true, Ordering::Relaxed);
            *stalled = None;
        } else if self.workers_seen.load(Ordering::Relaxed) {
            stalled.get_or_insert(now);
        }
    }

    /// A new pipeline (start or reload): its threads have not answered
    /// yet, and its routes may be numbered differently.
    pub fn restart(&self) {
        self.workers_seen.store(false, Ordering::Relaxed);
        *lock(&self.stalled_since) = None;
        lock(&self.failing).clear();
        lock(&self.proven).clear();
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_of(0)
    }

    /// The snapshot for a daemon with `routes` webhooks: one no answer
    /// proved or failed yet makes it doubtful.
    pub fn snapshot_of(&self, routes: usize) -> Snapshot {
        let failing = lock(&self.failing);
        let proven = lock(&self.proven);
        Snapshot {
            workers_seen: self.workers_seen.load(Ordering::Relaxed),
            stalled_since: *lock(&self.stalled_since),
            failing_since: failing.values().min().copied(),
            unproven: (0..routes).any(|r| !proven.contains_key(&r) && !failing.contains_key(&r)),
        }
    }

    /// Route → its last proof of working.
    pub fn proven(&self) -> BTreeMap<usize, Instant> {
        lock(&self.proven).clone()
    }
}

/// Turns ping results into log lines: the first failure of a streak is a
/// warning, the recovery an info line, everything between is silent.
#[derive(Debug, Default)]
pub struct Streak {
    failing: bool,
}

impl Streak {
    pub fn result(&mut self, r: &Result<(), HeartbeatError>) -> Option<(log::Level, String)> {
        match (r, self.failing) {
            (Err(e), false) => {
                self.failing = true;
                Some((
                    log::Level::Warn,
                    format!(
                        "heartbeat failed: {e}; retried every interval, logged again when it works"
                    ),
                ))
            }
            (Ok(()), true) => {
                self.failing = false;
                Some((log::Level::Info, "heartbeat works again".to_string()))
            }
            _ => None,
        }
    }
}

/// Makes one GET; the error text is redacted by the caller.
pub type Pinger = Box<dyn FnMut(&str, Duration) -> Result<(), String> + Send>;

/// A GET with ureq; any 2xx is success.
pub fn http_pinger() -> Pinger {
    let mut get = http_prober();
    Box::new(move |url, timeout| match get(url, timeout)? {
        status if (200..300).contains(&status) => Ok(()),
        status => Err(format!("HTTP {status}")),
    })
}

/// Makes one GET of a webhook; `Ok` with the status of any answer, `Err`
/// with why there was none (the caller redacts it).
pub type Prober = Box<dyn FnMut(&str, Duration) -> Result<u16, String> + Send>;

/// A GET with ureq, the status of any answer.
pub fn http_prober() -> Prober {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("ekos-log-monitor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    Box::new(move |url, timeout| {
        let resp = agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    })
}

/// The `heartbeat` thread's state.
pub struct Heartbeat {
    settings: Settings,
    stats: Arc<Stats>,
    ping: Pinger,
    /// Per route (index in the configuration), its webhook: probed when
    /// nothing proved it within an interval.
    webhooks: Vec<Webhook>,
    probe: Prober,
}

impl Heartbeat {
    pub fn new(settings: Settings, stats: Arc<Stats>, ping: Pinger) -> Heartbeat {
        Heartbeat {
            settings,
            stats,
            ping,
            webhooks: Vec::new(),
            probe: Box::new(|_, _| Err("no prober".into())),
        }
    }

    /// The webhooks of the routes, probed with `probe` when nothing proved
    /// them within an interval.
    pub fn with_probes(mut self, webhooks: Vec<Webhook>, probe: Prober) -> Heartbeat {
        self.webhooks = webhooks;
        self.probe = probe;
        self
    }

    /// Probes the routes no answer proved within the last interval and
    /// records what Discord said, as the sender records its answers.
    fn probe_due(&mut self, now: Instant, timeout: Duration) {
        let signals = &self.stats.health;
        let due = due_probes(
            &signals.proven(),
            self.webhooks.len(),
            now,
            self.settings.interval,
        );
        for r in due {
            let w = &self.webhooks[r];
            // The webhook itself, without `?thread_id=` or `?wait=`.
            let url = w.url().split(['?', '#']).next().unwrap_or("");
            let answer = (self.probe)(url, timeout).map_err(|why| w.redact(&why));
            let outcome = probe_outcome(answer);
            log::debug!("heartbeat: probe of webhook {}: {outcome:?}", w.id());
            signals.record_outcome(r, &outcome, Instant::now());
        }
    }

    /// Pings every interval until `stop` receives or is disconnected. The
    /// first round comes as soon as the supervisor has seen the workers
    /// answer a ping (looked at every 200 ms), then one every interval.
    pub fn run(mut self, stop: Receiver<()>) {
        let interval = self.settings.interval;
        let timeout = PING_TIMEOUT.min(interval.max(Duration::from_secs(1)));
        let mut streak = Streak::default();
        let mut said_failing = false;
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match stop.recv_timeout(wait) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let snap = self.stats.health.snapshot_of(self.webhooks.len());
            if snap.workers_seen {
                self.probe_due(Instant::now(), timeout);
            }
            let now = Instant::now();
            let snap = self.stats.health.snapshot_of(self.webhooks.len());
            let url = match health(&snap, now, interval) {
                Health::Healthy => {
                    if said_failing {
                        said_failing = false;
                        log::info!("heartbeat: healthy again");
                    }
                    self.settings.url.clone()
                }
                Health::Failing(why) => {
                    if !said_failing {
                        said_failing = true;
                        log::warn!(
                            "heartbeat: reporting a failure to {}: {why}",
                            self.settings.shown()
                        );
                    }
                    self.settings.fail_url()
                }
                Health::Doubtful if !snap.workers_seen => {
                    // Still starting: look again soon rather than a whole
                    // interval later.
                    next = now + Duration::from_millis(200).min(interval);
                    continue;
                }
                Health::Doubtful => {
                    next = now + interval;
                    continue;
                }
            };
            let r = (self.ping)(&url, timeout).map_err(|why| HeartbeatError::Ping {
                url: crate::webhook::redact_secrets(&url),
                why: crate::webhook::redact_secrets(&why),
            });
            if let Some((level, text)) = streak.result(&r) {
                log::log!(level, "{text}");
            }
            next = now + interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn retry() -> Outcome {
        Outcome::Retry {
            why: "connection refused".into(),
        }
    }

    #[test]
    fn healthy_only_once_the_workers_answered() {
        let t0 = Instant::now();
        let sig = Signals::default();
        assert_eq!(health(&sig.snapshot(), t0, 300 * S), Health::Doubtful);
        // A worker that never answered before is "starting", not stalled.
        sig.record_workers(false, t0);
        assert_eq!(sig.snapshot().stalled_since, None);
        sig.record_workers(true, t0);
        assert_eq!(health(&sig.snapshot(), t0, 300 * S), Health::Healthy);
    }

    #[test]
    fn rate_limits_and_rejections_are_healthy() {
        let t0 = Instant::now();
        let sig = Signals::default();
        sig.record_workers(true, t0);
        for o in [
            Outcome::RateLimited {
                wait: 60 * S,
                info: Default::default(),
                cloudflare: true,
            },
            Outcome::Rejected {
                status: 400,
                why: "too long".into(),
            },
            Outcome::Gone {
                info: Default::default(),
                why: "unknown message".into(),
            },
            Outcome::Delivered(Default::default()),
        ] {
            sig.record_outcome(0, &o, t0);
            assert_eq!(
                health(&sig.snapshot(), t0 + 3600 * S, 300 * S),
                Health::Healthy,
                "{o:?}"
            );
        }
    }

    #[test]
    fn failing_posts_become_a_failure_after_one_interval() {
        let t0 = Instant::now();
        let sig = Signals::default();
        sig.record_workers(true, t0);
        sig.record_outcome(0, &retry(), t0);
        // Later failures do not move the start of the streak.
        sig.record_outcome(0, &retry(), t0 + 200 * S);
        let h = |t| health(&sig.snapshot(), t0 + t, 300 * S);
        assert_eq!(h(299 * S), Health::Doubtful);
        assert_eq!(
            h(300 * S),
            Health::Failing("posting to Discord has failed for 300 s".into())
        );
        // A webhook Discord refuses fails the same way.
        sig.record_outcome(
            1,
            &Outcome::Stop {
                status: 404,
                why: "unknown webhook".into(),
            },
            t0 + 250 * S,
        );
        // Route 0 recovers; route 1 still fails, since t0 + 250 s.
        sig.record_outcome(0, &Outcome::Delivered(Default::default()), t0 + 400 * S);
        assert_eq!(h(500 * S), Health::Doubtful);
        assert!(matches!(h(550 * S), Health::Failing(_)));
        sig.record_outcome(1, &Outcome::Delivered(Default::default()), t0 + 560 * S);
        assert_eq!(h(560 * S), Health::Healthy);
    }

    #[test]
    fn a_stalled_worker_is_a_failure_after_one_interval() {
        let t0 = Instant::now();
        let sig = Signals::default();
        sig.record_workers(true, t0);
        sig.record_workers(false, t0 + 10 * S);
        sig.record_workers(false, t0 + 20 * S);
        let h = |t| health(&sig.snapshot(), t0 + t, 60 * S);
        assert_eq!(h(69 * S), Health::Doubtful);
        assert_eq!(
            h(70 * S),
            Health::Failing("a worker thread has not answered for 60 s".into())
        );
        sig.record_workers(true, t0 + 80 * S);
        assert_eq!(h(80 * S), Health::Healthy);
        // A reload starts over: doubtful until the new threads answer.
        sig.restart();
        assert_eq!(h(90 * S), Health::Doubtful);
    }

    #[test]
    fn settings_validate_and_hide_the_token() {
        let s = Settings::new(
            "https://hc-ping.com/0f1e2d3c-aaaa-bbbb-cccc-123456789abc/",
            300 * S,
        )
        .unwrap();
        assert_eq!(
            s.url(),
            "https://hc-ping.com/0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
        );
        assert_eq!(
            s.fail_url(),
            "https://hc-ping.com/0f1e2d3c-aaaa-bbbb-cccc-123456789abc/fail"
        );
        assert_eq!(s.shown(), "https://hc-ping.com/****");
        assert!(!format!("{s:?}").contains("0f1e2d3c"));
        // Uptime Kuma's push URL has its status in the query.
        let k = Settings::new(
            "http://192.168.1.5:3001/api/push/AbCdEf?status=up&msg=OK",
            S,
        )
        .unwrap();
        assert_eq!(
            k.fail_url(),
            "http://192.168.1.5:3001/api/push/AbCdEf/fail?status=up&msg=OK"
        );
        for bad in [
            "",
            "hc-ping.com/x",
            "ftp://x/y",
            "https://",
            "https:///x",
            "https://a b/c",
        ] {
            assert!(Settings::new(bad, S).is_err(), "{bad:?}");
        }
        let e = Settings::new("htps://hc-ping.com/secret-token-here", S)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret-token"), "{e}");
    }

    #[test]
    fn endpoint_failures_are_logged_once_per_streak() {
        let mut s = Streak::default();
        let err = || {
            Err(HeartbeatError::Ping {
                url: "https://hc-ping.com/****".into(),
                why: "timed out".into(),
            })
        };
        let (level, text) = s.result(&err()).unwrap();
        assert_eq!(level, log::Level::Warn);
        assert!(
            text.starts_with("heartbeat failed: GET https://hc-ping.com/****: timed out"),
            "{text}"
        );
        assert_eq!(s.result(&err()), None);
        assert_eq!(s.result(&err()), None);
        assert_eq!(s.result(&Ok(())).unwrap().0, log::Level::Info);
        assert_eq!(s.result(&Ok(())), None);
        assert!(s.result(&err()).is_some());
    }

    /// A route no answer proved yet keeps the daemon doubtful, however
    /// alive its threads: healthy needs proof of Discord.
    #[test]
    fn a_route_never_proven_is_doubtful_not_healthy() {
        let t0 = Instant::now();
        let sig = Signals::default();
        sig.record_workers(true, t0);
        let h = |routes, t| health(&sig.snapshot_of(routes), t0 + t, 300 * S);
        assert_eq!(h(1, 3600 * S), Health::Doubtful);
        sig.record_outcome(0, &Outcome::Delivered(Default::default()), t0);
        assert_eq!(h(1, 3600 * S), Health::Healthy);
        // A second webhook nothing answered for yet.
        assert_eq!(h(2, 3600 * S), Health::Doubtful);
        // A reload starts over.
        sig.restart();
        sig.record_workers(true, t0);
        assert_eq!(h(1, 10 * S), Health::Doubtful);
    }

    #[test]
    fn routes_are_probed_when_nothing_proved_them_within_an_interval() {
        let t0 = Instant::now();
        let mut proven = BTreeMap::new();
        assert_eq!(due_probes(&proven, 2, t0, 60 * S), vec![0, 1]);
        proven.insert(0, t0);
        assert_eq!(due_probes(&proven, 2, t0 + 59 * S, 60 * S), vec![1]);
        assert_eq!(due_probes(&proven, 2, t0 + 60 * S, 60 * S), vec![0, 1]);
        proven.insert(1, t0 + 30 * S);
        assert_eq!(due_probes(&proven, 2, t0 + 60 * S, 60 * S), vec![0]);
        assert!(due_probes(&proven, 0, t0 + 600 * S, 60 * S).is_empty());
    }

    /// What a probe's answer proves: 2xx and 429 a working webhook (rate
    /// limited is healthy); 401/403/404 a refused webhook; 5xx, other
    /// statuses and network errors an unreachable Discord.
    #[test]
    fn a_probe_answer_proves_the_webhook_only_when_discord_accepts_it() {
        for status in [200, 204] {
            assert!(matches!(probe_outcome(Ok(status)), Outcome::Delivered(_)));
        }
        assert!(matches!(
            probe_outcome(Ok(429)),
            Outcome::RateLimited { .. }
        ));
        assert!(proves_working(&probe_outcome(Ok(429))));
        for status in [401, 403, 404] {
            let o = probe_outcome(Ok(status));
            assert!(matches!(o, Outcome::Stop { status: s, .. } if s == status));
            assert!(!proves_working(&o));
        }
        for a in [
            Ok(500),
            Ok(502),
            Ok(503),
            Ok(400),
            Err("connection refused".into()),
        ] {
            let o = probe_outcome(a);
            assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
            assert!(!proves_working(&o));
        }
    }

    /// Discord unreachable from boot and nothing to post: the first probe
    /// fails, the daemon is doubtful; the next, an interval later, makes it
    /// a failure. A deleted webhook (404) alike. A rate-limited probe is
    /// healthy.
    #[test]
    fn discord_down_from_boot_is_a_failure_after_one_interval_of_probes() {
        let t0 = Instant::now();
        for answer in [Err("connection refused".to_string()), Ok(404)] {
            let sig = Signals::default();
            sig.record_workers(true, t0);
            sig.record_outcome(0, &probe_outcome(answer.clone()), t0);
            let h = |t| health(&sig.snapshot_of(1), t0 + t, 60 * S);
            assert_eq!(h(Duration::ZERO), Health::Doubtful, "{answer:?}");
            sig.record_outcome(0, &probe_outcome(answer.clone()), t0 + 60 * S);
            assert!(matches!(h(60 * S), Health::Failing(_)), "{answer:?}");
            // Discord answers again: healthy at once.
            sig.record_outcome(0, &probe_outcome(Ok(200)), t0 + 61 * S);
            assert_eq!(h(61 * S), Health::Healthy);
        }
        let sig = Signals::default();
        sig.record_workers(true, t0);
        sig.record_outcome(0, &probe_outcome(Ok(429)), t0);
        assert_eq!(
            health(&sig.snapshot_of(1), t0 + 3600 * S, 60 * S),
            Health::Healthy
        );
    }

    /// The thread probes (the webhook URL without its query) only what is
    /// due, never with the token in what it records, and turns a webhook
    /// down from boot into `/fail` after an interval, without a healthy
    /// ping before.
    #[test]
    fn the_thread_probes_unproven_webhooks_and_reports_their_failure() {
        let stats = Arc::new(Stats::default());
        stats.health.record_workers(true, Instant::now());
        let probed = Arc::new(Mutex::new(Vec::new()));
        let pinged = Arc::new(Mutex::new(Vec::new()));
        let (p1, p2) = (probed.clone(), pinged.clone());
        let hook = Webhook::parse(
            "https://discord.com/api/webhooks/123/secret-token-abcdefghijklmnop?thread_id=9",
        )
        .unwrap();
        let settings =
            Settings::new("https://hc-ping.com/abc", Duration::from_millis(300)).unwrap();
        let hb = Heartbeat::new(
            settings,
            stats.clone(),
            Box::new(move |url, _| {
                lock(&p2).push(url.to_string());
                Ok(())
            }),
        )
        .with_probes(
            vec![hook],
            Box::new(move |url, _| {
                lock(&p1).push(url.to_string());
                Err(format!("cannot reach {url}"))
            }),
        );
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let t = std::thread::spawn(move || hb.run(stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&pinged).is_empty() {
            assert!(Instant::now() < deadline, "no ping at all");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(stop_tx);
        t.join().unwrap();
        assert_eq!(
            *lock(&pinged),
            vec!["https://hc-ping.com/abc/fail".to_string()]
        );
        let probed = lock(&probed).clone();
        assert!(probed.len() >= 2, "{probed:?}");
        assert!(
            probed
                .iter()
                .all(|u| u == "https://discord.com/api/webhooks/123/secret-token-abcdefghijklmnop")
        );
    }
}
