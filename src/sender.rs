//! The sender thread: batches lines, posts messages, honours Discord's
//! limits, and commits the checkpoint once Discord accepted a message.
//!
//! There is one route per distinct webhook, each with its own batcher,
//! rate limiter and retry state, so a dead webhook does not hold up another.
//! A message that could not be delivered is kept and retried — never
//! dropped — with exponential backoff and jitter for outages, the wait
//! Discord asked for after a 429, and a long pause when the webhook is gone.
//! The thread stops reading lines while too much text waits (backpressure
//! to the watcher), so memory stays bounded during an outage.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, never};

use crate::batch::Batcher;
use crate::checkpoint::{FileId, Store};
use crate::config::Config;
use crate::discord::{Outcome, Sink};
use crate::ekos::Severity;
use crate::format::{self, Message, Part};
use crate::service::{Control, Stats};
use crate::watcher::Chunk;

/// Stop taking lines while this much text waits for Discord.
pub const MAX_QUEUED_BYTES: usize = 2 * 1024 * 1024;
/// The longest pause between retries during an outage.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long to wait before trying a webhook Discord called unknown again.
/// Discord bans addresses that send many invalid requests, so this is slow.
pub const GONE_RETRY: Duration = Duration::from_secs(600);
/// Alert copies kept while the alerts webhook does not answer; beyond,
/// events only reach the logs channel (memory stays bounded).
pub const MAX_PENDING_ALERTS: usize = 1000;
/// Time allowed to post what is queued when asked to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

struct Route {
    sink: Box<dyn Sink>,
    batcher: Batcher,
    /// Messages taken from the batcher but not yet accepted, oldest first.
    inflight: VecDeque<Message>,
    next_allowed: Instant,
    failures: u32,
    /// The current streak of problems was logged already.
    reported: bool,
}

impl Route {
    fn has_work(&self, now: Instant) -> bool {
        !self.inflight.is_empty() || self.batcher.is_ready(now)
    }

    /// When this route next has something to do, if anything.
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        let due = if self.has_work(now) {
            Some(now)
        } else {
            self.batcher.deadline()
        };
        due.map(|d| d.max(self.next_allowed))
    }
}

impl Drop for Sender {
    /// Whatever a sink buffered (dry-run output) is written out.
    fn drop(&mut self) {
        for r in &mut self.routes {
            r.sink.idle();
        }
    }
}

pub struct Sender {
    routes: Vec<Route>,
    /// The alerts route and its threshold, when configured.
    alerts: Option<(usize, Severity)>,
    attachment_threshold: usize,
    /// Per file, the start offsets of lines whose alert copy is not
    /// delivered yet: the checkpoint may not move past them.
    holds: HashMap<FileId, VecDeque<u64>>,
    /// Per file, what the logs route delivered (before clamping by holds).
    delivered: HashMap<FileId, u64>,
    store: Arc<Store>,
    stats: Arc<Stats>,
    rate_limit_delay: Duration,
    max_retries: u32,
    rng: u64,
}

impl Sender {
    /// `sinks` holds one sink per `cfg.webhooks` entry (or one dry-run sink).
    pub fn new(
        cfg: &Config,
        sinks: Vec<Box<dyn Sink>>,
        store: Arc<Store>,
        stats: Arc<Stats>,
    ) -> Sender {
        let now = Instant::now();
        Sender {
            routes: sinks
                .into_iter()
                .map(|sink| Route {
                    sink,
                    batcher: Batcher::new(cfg.batch_size, cfg.batch_timeout),
                    inflight: VecDeque::new(),
                    next_allowed: now,
                    failures: 0,
                    reported: false,
                })
                .collect(),
            // Config::load rejects an alerts webhook that also receives lines.
            alerts: cfg.alerts,
            attachment_threshold: cfg.attachment_threshold,
            holds: HashMap::new(),
            delivered: HashMap::new(),
            store,
            stats,
            rate_limit_delay: cfg.rate_limit_delay,
            max_retries: cfg.max_retries,
            rng: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn queued_bytes(&self) -> usize {
        self.routes.iter().map(|r| r.batcher.queued_bytes()).sum()
    }

    fn idle(&self) -> bool {
        self.routes
            .iter()
            .all(|r| r.batcher.is_empty() && r.inflight.is_empty())
    }

    fn push(&mut self, chunk: Chunk, flush: bool) {
        let now = Instant::now();
        let route = chunk.route.min(self.routes.len() - 1);
        let file = chunk.file;
        // The chunk says where its first line begins.
        let mut prev = chunk.start;
        for (line, shown) in chunk.lines.into_iter().zip(chunk.shown) {
            // After a truncation offsets start again from 0.
            let start = if prev > line.end { 0 } else { prev };
            prev = line.end;
            let Some(event) = shown else {
                // Filtered out: the next posted line's offset covers it.
                continue;
            };
            if let (Some(ev), Some((ai, min))) = (&event, self.alerts) {
                let backlog: usize = self.routes[ai].inflight.iter().map(|m| m.parts.len()).sum();
                if ev.severity >= min && ai != route && backlog >= MAX_PENDING_ALERTS {
                    if !self.holds.is_empty() {
                        self.drop_alert_holds();
                    }
                    if backlog == MAX_PENDING_ALERTS {
                        log::warn!(
                            "{MAX_PENDING_ALERTS} alerts wait for the alerts webhook; more are only posted to the logs channel until it works again"
                        );
                    }
                } else if ev.severity >= min && ai != route {
                    let part = Part {
                        label: chunk.label.clone(),
                        text: format::escape_fence(&line.text).into_owned(),
                        // For an alert copy this is the line's start: what
                        // the hold is released by, never a commit.
                        commit: Some((file, start)),
                        event: Some(Box::new(ev.clone())),
                    };
                    let cp = part.text.chars().count();
                    let q = &mut self.routes[ai].inflight;
                    // The front message may be mid-retry: never grow it.
                    let grow = q.len() > 1 && q.back().is_some_and(|m| m.can_take_event(cp, ev));
                    match q.back_mut() {
                        Some(last) if grow => last.parts.push(part),
                        _ => q.push_back(Message {
                            parts: vec![part],
                            as_file: false,
                        }),
                    }
                    self.holds.entry(file).or_default().push_back(start);
                }
            }
            self.routes[route].batcher.push_event(
                file,
                chunk.label.clone(),
                line.text,
                line.end,
                now,
                event,
            );
        }
        if flush {
            self.routes[route].batcher.flush_all();
        }
    }

    /// While the alerts webhook fails, alert copies stop holding the
    /// checkpoint back: otherwise a long alerts outage followed by a
    /// restart would re-post hours of lines to the logs channel, which has
    /// every one of those events anyway. The copies are still retried.
    fn release_holds_if_alerts_fail(&mut self, i: usize) {
        if self.alerts.is_some_and(|(a, _)| a == i)
            && self.routes[i].reported
            && !self.holds.is_empty()
        {
            self.drop_alert_holds();
        }
    }

    fn drop_alert_holds(&mut self) {
        let files: Vec<FileId> = self.holds.keys().copied().collect();
        self.holds.clear();
        let out: Vec<(FileId, u64)> = files
            .into_iter()
            .filter_map(|f| self.delivered.get(&f).map(|d| (f, *d)))
            .collect();
        if let Err(e) = self.store.commit(out) {
            log::error!("{e}");
        }
    }

    /// The offset the checkpoint may record for a file: what was
    /// delivered, but never past a line whose alert is still pending.
    fn clamp(&self, file: FileId, offset: u64) -> u64 {
        match self.holds.get(&file).and_then(|h| h.front()) {
            Some(h) => offset.min(*h),
            None => offset,
        }
    }

    /// Records what route `i` got accepted and persists the checkpoint.
    fn commit(&mut self, i: usize, commits: Vec<(FileId, u64)>) {
        let is_alerts = self.alerts.is_some_and(|(a, _)| a == i);
        // A file's lines are in order: for the logs route only the last
        // offset per file matters (alert copies each release one hold).
        let commits = if is_alerts {
            commits
        } else {
            let mut last: Vec<(FileId, u64)> = Vec::new();
            for (file, offset) in commits {
                match last.iter_mut().find(|(f, _)| *f == file) {
                    Some(slot) => slot.1 = offset,
                    None => last.push((file, offset)),
                }
            }
            last
        };
        let mut out = Vec::new();
        for (file, offset) in commits {
            if is_alerts {
                if let Some(h) = self.holds.get_mut(&file) {
                    h.pop_front();
                }
                if let Some(done) = self.delivered.get(&file).copied() {
                    out.push((file, self.clamp(file, done)));
                }
            } else {
                self.delivered.insert(file, offset);
                out.push((file, self.clamp(file, offset)));
            }
        }
        if let Err(e) = self.store.commit(out) {
            log::error!("{e}");
            self.stats.record_error(Some(e.to_string()));
        }
    }

    /// A factor in [0.5, 1.0) so that many clients do not retry in step.
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64 / 2.0
    }

    /// The actor loop. Returns when the lines channel is closed and
    /// everything was posted, when the shutdown grace time ran out, or at
    /// once on `Abort`.
    pub fn run(mut self, lines: Vec<Receiver<Chunk>>, control: Receiver<Control>) {
        let mut closing: Option<Instant> = None;
        // Per route: its channel is still open.
        let mut open = vec![true; lines.len()];
        loop {
            let lines_open = open.iter().any(|o| *o);
            let now = Instant::now();
            if let Some(deadline) = closing {
                if now >= deadline {
                    if !self.idle() {
                        log::warn!(
                            "stopping with lines not yet posted; they will be posted at the next start"
                        );
                    }
                    return;
                }
                if !lines_open && self.idle() {
                    return;
                }
            }
            // Post one message on the first route that may.
            if let Some(i) = (0..self.routes.len())
                .find(|&i| self.routes[i].has_work(now) && now >= self.routes[i].next_allowed)
            {
                let timeout = match closing {
                    Some(d) => d
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(100)),
                    None => Duration::from_secs(10),
                };
                self.post_one(i, now, timeout);
                self.release_holds_if_alerts_fail(i);
                // Answer pings between posts, so a long backlog is progress.
                while let Ok(msg) = control.try_recv() {
                    if self.on_control(msg, &mut closing) {
                        return;
                    }
                }
                continue;
            }
            let mut wake = self.routes.iter().filter_map(|r| r.wake_at(now)).min();
            if let Some(d) = closing {
                wake = Some(wake.map_or(d, |w| w.min(d)));
            }
            let timeout = wake.map(|w| w.saturating_duration_since(now));
            let accepting = lines_open && self.queued_bytes() < MAX_QUEUED_BYTES;
            let timer = match timeout {
                Some(t) => crossbeam_channel::after(t),
                None => never(),
            };
            for r in &mut self.routes {
                r.sink.idle();
            }
            self.stats.flush_status();
            // Temporary: any route's chunk, until the sender keeps a byte
            // budget per route.
            let mut sel = Select::new();
            let mut rx_ops = Vec::new();
            if accepting {
                for (r, rx) in lines.iter().enumerate() {
                    if open[r] {
                        rx_ops.push((sel.recv(rx), r));
                    }
                }
            }
            let ctl_op = sel.recv(&control);
            let timer_op = sel.recv(&timer);
            let op = sel.select();
            let i = op.index();
            if i == ctl_op {
                let msg = op.recv(&control).unwrap_or(Control::Abort);
                if self.on_control(msg, &mut closing) {
                    return;
                }
            } else if i == timer_op {
                let _ = op.recv(&timer);
            } else {
                let r = rx_ops
                    .iter()
                    .find(|(o, _)| *o == i)
                    .map(|(_, r)| *r)
                    .expect("a selected route");
                match op.recv(&lines[r]) {
                    Ok(c) => {
                        self.push(c, closing.is_some());
                        // Take what else is queued without another wake-up.
                        'more: for rx in &lines {
                            while self.queued_bytes() < MAX_QUEUED_BYTES {
                                match rx.try_recv() {
                                    Ok(c) => self.push(c, closing.is_some()),
                                    Err(_) => continue 'more,
                                }
                            }
                            break;
                        }
                    }
                    Err(_) => {
                        open[r] = false;
                        if !open.iter().any(|o| *o) && closing.is_none() {
                            // The watcher ended on its own: post and stop.
                            closing = Some(Instant::now() + SHUTDOWN_GRACE);
                            self.flush_all();
                        }
                    }
                }
            }
        }
    }

    fn flush_all(&mut self) {
        for r in &mut self.routes {
            r.batcher.flush_all();
        }
    }

    /// Returns true when the loop must end now.
    fn on_control(&mut self, msg: Control, closing: &mut Option<Instant>) -> bool {
        match msg {
            Control::Ping(n) => {
                self.stats
                    .sender_pong
                    .store(n, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Control::Shutdown => {
                if closing.is_none() {
                    *closing = Some(Instant::now() + SHUTDOWN_GRACE);
                    self.flush_all();
                }
                false
            }
            Control::Abort => true,
        }
    }

    fn post_one(&mut self, i: usize, now: Instant, timeout: Duration) {
        let msg = {
            let r = &mut self.routes[i];
            match r.inflight.pop_front() {
                Some(m) => m,
                None if self.attachment_threshold > 0
                    && r.batcher.len() > self.attachment_threshold =>
                {
                    r.batcher.take_file_message()
                }
                None => r.batcher.take_message(now),
            }
        };
        if msg.parts.is_empty() {
            return;
        }
        let payload = msg.payload();
        let started = Instant::now();
        let outcome = self.routes[i].sink.post(&payload, timeout);
        let done = Instant::now();
        let delay = self.rate_limit_delay;
        let max_retries = self.max_retries;
        let jitter = self.jitter();
        let r = &mut self.routes[i];
        r.next_allowed = started + delay;
        match outcome {
            Outcome::Delivered(info) => {
                if r.reported {
                    log::info!("posting to {} works again", r.sink.describe());
                    self.stats.record_error(None);
                }
                r.failures = 0;
                r.reported = false;
                if info.remaining == Some(0) {
                    if let Some(reset) = info.reset_after {
                        // The bucket is empty: wait for it to refill rather
                        // than collect a 429.
                        r.next_allowed = r.next_allowed.max(done + reset);
                    }
                }
                let commits: Vec<_> = msg.commits().collect();
                self.commit(i, commits);
                self.stats.record_post(msg.lines());
            }
            Outcome::RateLimited {
                wait, cloudflare, ..
            } => {
                if !r.reported {
                    r.reported = true;
                    let why = if cloudflare {
                        "Discord's edge refused the request (HTTP 429 without rate-limit headers)"
                    } else {
                        "Discord rate limit hit (HTTP 429)"
                    };
                    log::warn!(
                        "{why}; waiting {:.1} s before posting again",
                        wait.as_secs_f64()
                    );
                    self.stats.record_error(Some(why.to_string()));
                }
                r.next_allowed = done + wait;
                r.inflight.push_front(msg);
            }
            Outcome::Retry { why } => {
                r.failures += 1;
                let base = Duration::from_secs(1).saturating_mul(1 << (r.failures - 1).min(16));
                let wait = base.min(MAX_BACKOFF).mul_f64(jitter);
                if r.failures == 1 && max_retries > 1 {
                    log::warn!(
                        "posting to {} failed ({why}); retrying in {:.1} s",
                        r.sink.describe(),
                        wait.as_secs_f64()
                    );
                } else if r.failures == max_retries.max(1) {
                    log::error!(
                        "posting to {} failed {} times in a row ({why}); lines are kept and retried every {} s at most until it works",
                        r.sink.describe(),
                        r.failures,
                        MAX_BACKOFF.as_secs()
                    );
                    r.reported = true;
                }
                self.stats.record_error(Some(why));
                r.next_allowed = done + wait;
                r.inflight.push_front(msg);
            }
            Outcome::Rejected { status, why } => {
                let size = msg.content().chars().count();
                let commits: Vec<_> = msg.commits().collect();
                match msg.split() {
                    Some((a, b)) => {
                        log::warn!(
                            "Discord rejected a message of {size} code points (HTTP {status}: {why}); sending it in two halves"
                        );
                        r.inflight.push_front(b);
                        r.inflight.push_front(a);
                        r.next_allowed = done;
                    }
                    None => {
                        log::error!(
                            "Discord rejected a single line of {size} code points (HTTP {status}: {why}); it is skipped"
                        );
                        self.stats
                            .record_error(Some(format!("Discord rejected a line (HTTP {status})")));
                        self.commit(i, commits);
                    }
                }
            }
            Outcome::Gone { status, why } => {
                if !r.reported {
                    r.reported = true;
                    log::error!(
                        "Discord answered HTTP {status} ({why}) for {}: the webhook was deleted or its token is wrong; posting stops and is retried every {} minutes; fix DISCORD_WEBHOOK_URL and reload",
                        r.sink.describe(),
                        GONE_RETRY.as_secs() / 60
                    );
                }
                self.stats
                    .record_error(Some(format!("webhook rejected (HTTP {status})")));
                r.next_allowed = done + GONE_RETRY;
                r.inflight.push_front(msg);
            }
        }
    }
}
