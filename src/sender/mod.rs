//! The sender thread: batches lines, posts messages, honours Discord's
//! limits, and commits the checkpoint once Discord accepted a message.
//!
//! There is one route per webhook, each with its own bounded line channel,
//! batcher, queue of messages and [`Route`] state, so a dead or slow
//! webhook holds back only its own sources. The actor loop here is thin:
//! it moves chunks into batchers, asks each route's [`Route`] when it may
//! send, hands the message to the route's poster thread (`post-<n>`, which
//! makes the blocking POST), and applies the [`Decision`] taken on the
//! answer; [`Commits`] says which offsets are safe to commit. The loop
//! itself never blocks on HTTP, so pings, stop and the other routes go on
//! while a POST hangs, and on stop a POST in flight is simply abandoned
//! (its lines stay uncommitted and are posted again at the next start).
//! A message that was not accepted is kept and retried, never dropped; a
//! line Discord refuses for its content goes again as an attachment.

mod commits;
pub mod forum;
pub mod notices;
mod route;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, never};

use crate::batch::{Batcher, Fold};
use crate::checkpoint::Store;
use crate::config::Config;
use crate::discord::{Outcome, Reply, Request, Sink};
use crate::ekos::Severity;
use crate::format::{self, Message, Part, Payload};
use crate::notice::Notice;
use crate::service::{Control, Stats};
use crate::watcher::Chunk;

pub use commits::Commits;
pub use notices::Notices;
pub use route::{Decision, Jitter, MAX_BACKOFF, Next, Route, STOP_RETRY, Shape, xorshift_jitter};

/// Text one route may hold in its batcher before the sender stops taking
/// that route's chunks (backpressure to the watcher for its files only).
pub const ROUTE_BUDGET: usize = 1024 * 1024;
/// How long an abort (a reload) waits for the answers of POSTs in flight.
pub const ABORT_SETTLE: Duration = Duration::from_secs(2);
/// Alert copies kept while the alerts webhook does not answer; beyond,
/// events only reach the logs channel (memory stays bounded).
pub const MAX_PENDING_ALERTS: usize = 1000;
/// Time allowed to post what is queued when asked to stop; a POST still
/// in flight then is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How long Discord (or a proxy) may take to answer a request, beyond the
/// time its body takes to send, before the request counts as a network
/// error and is sent again. Generous: an answer that comes after the
/// timeout still made the message, and the copy sent again is a duplicate
/// (webhooks have no idempotency key), so a slow Discord must be waited
/// for; a connection that hangs costs this much once per attempt.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest uplink a request's body is given time for, in bytes per
/// second (256 kbit/s: a poor mobile or satellite link). A fixed timeout
/// made a 1 MiB attachment on a 480 kbit/s uplink time out on every try,
/// holding the webhook's lines behind it for good.
pub const SLOWEST_UPLINK: u64 = 32 * 1024;

/// How long one request with a body of `body_len` bytes may take.
pub fn request_timeout(body_len: usize) -> Duration {
    ANSWER_TIMEOUT + Duration::from_millis(body_len as u64 * 1000 / SLOWEST_UPLINK)
}
/// How often the sender looks again whether the state can be written,
/// while it cannot.
const PAUSE_CHECK: Duration = Duration::from_secs(1);

/// The settings the sender uses, taken from the [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub rate_limit_delay: Duration,
    pub max_retries: u32,
    /// When waiting lines go as one attachment.
    pub fold: Fold,
    /// The alerts route and its threshold, when configured.
    pub alerts: Option<(usize, Severity)>,
    /// Time allowed to post what is queued when asked to stop.
    pub grace: Duration,
    /// Where the notice lanes keep key → message id (`None`: not kept,
    /// as in a dry run), and each route's name in it ([`notices::route_id`]).
    pub notice_file: Option<std::path::PathBuf>,
    pub route_ids: Vec<String>,
    /// Per route: a forum channel's webhook (each night in its own post).
    pub forums: Vec<bool>,
    /// Where one night ends and the next begins (`night_start`).
    pub night_start: crate::localtime::TimeOfDay,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        Settings {
            batch_size: cfg.batch_size,
            batch_timeout: cfg.batch_timeout,
            rate_limit_delay: cfg.rate_limit_delay,
            max_retries: cfg.max_retries,
            fold: Fold::from_config(cfg),
            // Config::load rejects an alerts webhook that also receives lines.
            alerts: cfg.alerts,
            grace: SHUTDOWN_GRACE,
            notice_file: None,
            route_ids: cfg
                .webhooks
                .iter()
                .map(|w| notices::route_id(w.url()))
                .collect(),
            forums: cfg.forums.clone(),
            night_start: cfg.night.start,
        }
    }
}

/// Who makes a route's POST.
enum Poster {
    /// A thread that makes the blocking POST and answers on the results
    /// channel, so a hanging webhook holds up nobody else.
    Thread(crossbeam_channel::Sender<(Request, Payload)>),
    /// A sink that answers at once (dry run) is called on the sender
    /// thread: no thread hop per message in a catch-up.
    Inline(Box<dyn Sink>),
}

/// One route: its lines, its messages and its delivery state.
struct Lane {
    route: Route,
    batcher: Batcher,
    /// Messages taken from the batcher (or alert copies) not accepted yet,
    /// oldest first; while the route is busy the front one is in flight.
    queue: VecDeque<Message>,
    poster: Poster,
    /// Messages the daemon writes itself; they go first, at most
    /// [`notices::NOTICE_BURST`] in a row while lines wait.
    notices: Notices,
    /// Notices sent in a row while lines waited.
    notice_run: u32,
    /// A forum route: every request goes into the night's thread.
    forum: bool,
    /// On a forum route, the request in flight and its night: what its
    /// answer teaches about the night's thread ([`forum::learn`]).
    forum_flight: Option<(Request, i64)>,
}

impl Lane {
    fn has_work(&self, now: Instant) -> bool {
        !self.queue.is_empty() || self.batcher.is_ready(now)
    }

    fn notice_due(&self, now: Instant) -> bool {
        self.notices.next_due(now).is_some_and(|t| t <= now)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.batcher.is_empty() && self.notices.is_empty()
    }

    /// When this route next has something to do, if anything.
    fn wake_at(&self, now: Instant, paused: bool) -> Option<Instant> {
        let at = self.route.next_at()?;
        let due = if paused {
            None
        } else if self.has_work(now) {
            Some(now)
        } else {
            self.batcher.deadline()
        };
        let due = match (due, self.notices.next_due(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        due.map(|d| d.max(at))
    }
}

/// Whether the state cannot be written (BRIEF interface 2:
/// `Store::trouble`); while it says so, no new POST starts.
pub type Pause = Box<dyn Fn() -> Option<String> + Send>;

pub struct Sender {
    lanes: Vec<Lane>,
    results: Receiver<(usize, Reply)>,
    /// Keeps `results` connected when no lane has a poster thread (only
    /// inline sinks, as with --dry-run): a disconnected channel is always
    /// ready in the select, and the sender would spin on a whole core.
    _results_tx: crossbeam_channel::Sender<(usize, Reply)>,
    /// Notices from the night watch (any route); `never` when none.
    notice_rx: Receiver<Notice>,
    notice_file: Option<std::path::PathBuf>,
    route_ids: Vec<String>,
    /// Saved notice state of webhooks not configured now (kept as is).
    notice_others: notices::State,
    /// What the notice state file lacks, and when it may be written next
    /// unless urgent ([`notices::save_at`]).
    notice_unsaved: notices::Unsaved,
    notice_save_after: Option<Instant>,
    /// The last write of the notice state failed (it was logged once).
    notice_save_failed: bool,
    alerts: Option<(usize, Severity)>,
    commits: Commits,
    store: Arc<Store>,
    stats: Arc<Stats>,
    pause: Pause,
    night_start: crate::localtime::TimeOfDay,
    /// Why posting is paused now, as last shown in `STATUS=`.
    paused: Option<String>,
    grace: Duration,
    /// The alerts backlog is full and that was logged.
    alerts_full: bool,
}

impl Drop for Sender {
    /// Whatever a sink buffered (dry-run output) is written out.
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            if let Poster::Inline(sink) = &mut lane.poster {
                sink.idle();
            }
        }
    }
}

/// The poster thread of route `i`: one POST at a time, each answer on
/// `results`. It ends when the sender drops its job channel; a POST that
/// hangs then is abandoned with the thread.
fn poster(
    i: usize,
    mut sink: Box<dyn Sink>,
    jobs: Receiver<(Request, Payload)>,
    results: crossbeam_channel::Sender<(usize, Reply)>,
) {
    for (req, payload) in jobs {
        let reply = perform(sink.as_mut(), &req, &payload);
        if results.send((i, reply)).is_err() {
            break;
        }
    }
}

/// One request: log lines go as plain posts through [`Sink::post`].
fn perform(sink: &mut dyn Sink, req: &Request, payload: &Payload) -> Reply {
    if *req == Request::PLAIN {
        Reply {
            outcome: sink.post(payload, request_timeout(payload.body.len())),
            message: None,
        }
    } else {
        sink.send(req, payload, request_timeout(payload.body.len()))
    }
}

impl Sender {
    /// `sinks` holds one sink per `cfg.webhooks` entry (or one dry-run sink).
    pub fn new(
        cfg: &Config,
        sinks: Vec<Box<dyn Sink>>,
        store: Arc<Store>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Sender> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut settings = Settings::from_config(cfg);
        if store.persists() {
            settings.notice_file = Some(cfg.state_dir.join(notices::FILE));
        }
        Sender::with_settings(settings, sinks, store, stats, |i| {
            xorshift_jitter(
                seed.wrapping_add(i as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )
        })
    }

    /// Like [`Sender::new`], with the jitter of each route given (tests).
    /// Starts a poster thread `post-<n>` per sink that may block.
    pub fn with_settings(
        s: Settings,
        sinks: Vec<Box<dyn Sink>>,
        store: Arc<Store>,
        stats: Arc<Stats>,
        mut jitter: impl FnMut(usize) -> Jitter,
    ) -> std::io::Result<Sender> {
        let now = Instant::now();
        let (results_tx, results) = crossbeam_channel::unbounded();
        let mut saved = s
            .notice_file
            .as_deref()
            .map(notices::load)
            .unwrap_or_default();
        let mut restored = 0;
        let mut lanes = Vec::new();
        for (i, sink) in sinks.into_iter().enumerate() {
            let name = sink.describe();
            let poster = if sink.answers_at_once() {
                Poster::Inline(sink)
            } else {
                // One job at a time: the route never has two in flight.
                let (tx, rx) = crossbeam_channel::bounded(1);
                let results_tx = results_tx.clone();
                std::thread::Builder::new()
                    .name(format!("post-{i}"))
                    .spawn(move || poster(i, sink, rx, results_tx))?;
                Poster::Thread(tx)
            };
            let id = s.route_ids.get(i);
            let mut notices = Notices::with_kept(
                id.and_then(|id| saved.kept.remove(id))
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            );
            // Notices that still waited when the last run stopped (a
            // reload, a clean stop) go first.
            if let Some(pending) = id.and_then(|id| saved.pending.remove(id)) {
                restored += pending.len();
                notices.restore(i, pending);
            }
            lanes.push(Lane {
                route: Route::new(name, s.rate_limit_delay, s.max_retries, now, jitter(i)),
                batcher: Batcher::new(s.batch_size, s.batch_timeout).folding(s.fold),
                queue: VecDeque::new(),
                poster,
                notices,
                notice_run: 0,
                forum: s.forums.get(i).copied().unwrap_or(false),
                forum_flight: None,
            });
        }
        let sender = Sender {
            lanes,
            results,
            _results_tx: results_tx,
            notice_rx: never(),
            notice_file: s.notice_file,
            route_ids: s.route_ids,
            notice_others: saved,
            notice_unsaved: notices::Unsaved::Nothing,
            notice_save_after: None,
            notice_save_failed: false,
            alerts: s.alerts,
            commits: Commits::default(),
            store,
            stats,
            pause: Box::new(|| None),
            night_start: s.night_start,
            paused: None,
            alerts_full: false,
            grace: s.grace,
        };
        if restored > 0 {
            // They stay in the file until sent: a crash before then sends
            // them at the next start.
            log::info!("{restored} notices saved by the last run are sent again");
        }
        Ok(sender)
    }

    /// Whether posting is paused now; a change is shown in `STATUS=` once
    /// (the checkpoint's writer logs it to the journal).
    fn check_pause(&mut self) -> bool {
        let now = (self.pause)();
        if now != self.paused {
            match &now {
                Some(why) => self
                    .stats
                    .record_error(Some(format!("posting paused: {why}"))),
                None => self.stats.record_error(None),
            }
            self.paused = now;
        }
        self.paused.is_some()
    }

    /// Stops new POSTs while `pause` returns a reason (the state cannot be
    /// written: BRIEF interface 2, `Store::trouble`), so duplicates after
    /// a restart stay bounded by what was in flight.
    pub fn pause_while(mut self, pause: impl Fn() -> Option<String> + Send + 'static) -> Sender {
        self.pause = Box::new(pause);
        self
    }

    /// Takes notices (messages the daemon writes itself) from `rx`; each
    /// goes on its route's lane, ahead of the lines. Notices go on while
    /// posting lines is paused: they commit nothing.
    pub fn with_notices(mut self, rx: Receiver<Notice>) -> Sender {
        self.notice_rx = rx;
        self
    }

    fn take_notice(&mut self, n: Notice) {
        match self.lanes.get_mut(n.route) {
            Some(lane) => {
                let queued = lane.notices.queued();
                if let Some((level, text)) = lane.notices.push(n) {
                    log::log!(level, "{}: {text}", lane.route.name());
                }
                // A notice of its own is saved before the loop sends
                // anything (see `notices::save_at`); a newer body of a
                // waiting one can wait for the gap.
                let unsaved = if lane.notices.queued() > queued {
                    notices::Unsaved::Urgent
                } else {
                    notices::Unsaved::Queue
                };
                self.notice_unsaved = self.notice_unsaved.max(unsaved);
            }
            None => log::warn!("a notice for route {} (none such) is dropped", n.route),
        }
    }

    /// Saves every route's key → message id table and the notices still
    /// waiting (the one in flight included: its answer has not come).
    fn save_notices(&mut self) {
        self.notice_unsaved = notices::Unsaved::Nothing;
        let Some(path) = &self.notice_file else {
            return;
        };
        let mut all = self.notice_others.clone();
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(id) = self.route_ids.get(i) {
                let kept = lane.notices.kept();
                if !kept.is_empty() {
                    all.kept.insert(
                        id.clone(),
                        kept.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    );
                }
                let waiting = lane.notices.pending();
                if !waiting.is_empty() {
                    all.pending.insert(id.clone(), waiting);
                }
            }
        }
        let saved = notices::save(path, all, wall_secs());
        let path = path.display().to_string();
        self.notice_save_after = Some(notices::save_after(saved.is_ok(), Instant::now()));
        match saved {
            Ok(()) if self.notice_save_failed => {
                self.notice_save_failed = false;
                log::info!("{path} is written again");
            }
            Ok(()) => {}
            Err(e) => {
                // Tried again after SAVE_RETRY, or at once for the next
                // notice that arrives (not in a loop); logged once.
                self.notice_unsaved = notices::Unsaved::Queue;
                if !std::mem::replace(&mut self.notice_save_failed, true) {
                    log::warn!(
                        "{e}; until it can be written, notices waiting at a crash are lost and an open incident may be posted again after a restart"
                    );
                }
            }
        }
    }

    fn idle(&self) -> bool {
        self.lanes.iter().all(Lane::is_empty)
    }

    /// Takes the lines of a chunk from route `route`'s channel.
    fn push(&mut self, chunk: Chunk, route: usize, flush: bool) {
        let now = Instant::now();
        let file = chunk.file;
        // Each line begins where the one before ends.
        let mut next_start = chunk.start;
        for (line, shown) in chunk.lines.into_iter().zip(chunk.shown) {
            let start = next_start;
            next_start = line.end;
            let Some(event) = shown else {
                // Filtered out: the next posted line's offset covers it.
                continue;
            };
            if let (Some(ev), Some((ai, min))) = (&event, self.alerts) {
                // An event an incident stands for is no copy: the night
                // watch posts the incident to the alerts route (one
                // message, pinging once), and nothing is held for it.
                if ev.severity >= min && !ev.covered && ai != route && ai < self.lanes.len() {
                    self.alert_copy(ai, file, start, chunk.label.clone(), &line.text, ev);
                }
            }
            self.lanes[route].batcher.push_event(
                file,
                chunk.label.clone(),
                line.text,
                line.end,
                now,
                event,
            );
        }
        if flush {
            self.lanes[route].batcher.flush_all();
        }
    }

    /// Queues a copy of a notable line for the alerts route, holding the
    /// checkpoint at the line's start until the copy is accepted.
    fn alert_copy(
        &mut self,
        ai: usize,
        file: crate::checkpoint::FileId,
        start: u64,
        label: Option<Arc<str>>,
        text: &str,
        ev: &format::EventPart,
    ) {
        let backlog: usize = self.lanes[ai].queue.iter().map(|m| m.parts.len()).sum();
        if backlog >= MAX_PENDING_ALERTS {
            if self.commits.has_holds() {
                let out = self.commits.drop_holds();
                self.commit(out);
            }
            if !self.alerts_full {
                self.alerts_full = true;
                log::warn!(
                    "{MAX_PENDING_ALERTS} alerts wait for the alerts webhook; more are only posted to the logs channel until it works again"
                );
            }
            return;
        }
        self.alerts_full = false;
        let part = Part {
            label,
            text: format::escape_fence(text).into_owned(),
            // For an alert copy this is the line's start: what the hold
            // is released by, never a commit.
            commit: Some((file, start)),
            // The alerts channel pings as the rule says (a copy is of an
            // event no incident stands for, see `push`).
            event: Some(Box::new(format::EventPart {
                mention: ev.alert_mention,
                ..ev.clone()
            })),
        };
        let cp = part.text.chars().count();
        let q = &mut self.lanes[ai].queue;
        // The front message may be in flight or mid-retry: never grow it.
        let grow = q.len() > 1 && q.back().is_some_and(|m| m.can_take_event(cp, ev));
        match q.back_mut() {
            Some(last) if grow => last.parts.push(part),
            _ => q.push_back(Message {
                parts: vec![part],
                as_file: false,
            }),
        }
        self.commits.hold(file, start);
    }

    fn commit(&mut self, out: Vec<(crate::checkpoint::FileId, u64)>) {
        if out.is_empty() {
            return;
        }
        if let Err(e) = self.store.commit(out) {
            log::error!("{e}");
            self.stats.record_error(Some(e.to_string()));
        }
    }

    /// Starts the next request of route `i`, a notice due now before any
    /// lines (posting lines may be paused, notices are not), unless
    /// notices went [`notices::NOTICE_BURST`] times in a row while lines
    /// waited; returns the answer at once for an inline sink.
    fn dispatch(&mut self, i: usize, now: Instant, paused: bool) -> Option<Reply> {
        let lane = &mut self.lanes[i];
        let lines_wait = !paused && lane.has_work(now);
        let notice = if notices::notice_turn(lane.notice_due(now), lines_wait, lane.notice_run) {
            lane.notices.next(now)
        } else {
            None
        };
        let (req, payload) = match notice {
            Some(job) => {
                lane.notice_run = if lines_wait { lane.notice_run + 1 } else { 0 };
                job
            }
            None if paused => return None,
            None => {
                if lane.queue.is_empty() {
                    let msg = lane.batcher.next_message(now)?;
                    lane.queue.push_back(msg);
                }
                lane.notice_run = 0;
                (Request::PLAIN, lane.queue.front()?.payload())
            }
        };
        let (req, payload) = if lane.forum {
            // The night by the local wall clock: a new night, a new post.
            let night =
                crate::nightwatch::card::night_of(crate::localtime::Local::now(), self.night_start);
            let thread = lane.notices.recall(&forum::key(night));
            let place = forum::place(thread, night, &self.stats.targets_of(night));
            let (req, payload) = forum::shape(req, payload, &place);
            lane.notices.placed(&req);
            lane.forum_flight = Some((req.clone(), night));
            (req, payload)
        } else {
            (req, payload)
        };
        lane.route.sent(now);
        match &mut lane.poster {
            Poster::Inline(sink) => Some(perform(sink.as_mut(), &req, &payload)),
            Poster::Thread(jobs) => {
                if jobs.try_send((req, payload)).is_err() {
                    // The poster thread is gone (it panicked): say so
                    // like a network error, and try again later.
                    return Some(Reply {
                        outcome: Outcome::Retry {
                            why: "the poster thread ended".into(),
                        },
                        message: None,
                    });
                }
                None
            }
        }
    }

    /// Applies Discord's answer to route `i`'s notice in flight.
    fn notice_answered(&mut self, i: usize, reply: Reply) {
        let now = Instant::now();
        // A notice's answer tells the heartbeat as much about the webhook
        // as a line's does.
        self.stats.health.record_outcome(i, &reply.outcome, now);
        let lane = &mut self.lanes[i];
        let d = lane.route.answer(&reply.outcome, Shape::Whole, now);
        let waiting = lane.notices.len();
        let done = lane.notices.answered(&reply, d.next, wall_secs());
        // Sent or dropped, not put back for another try: the saved queue
        // must lose it, or a restart would send it again.
        let left = lane.notices.len() < waiting;
        for (level, text) in [d.log, done.log].into_iter().flatten() {
            log::log!(level, "{text}");
        }
        if let Some(status) = d.status {
            self.stats.record_error(status);
        }
        if done.changed || left {
            // At once (the loop saves before anything else): a crash now
            // must not send an accepted notice again, nor lose a message
            // id. A notice due next, or a forum thread learnt from the
            // same answer, is saved by the same write.
            self.notice_unsaved = notices::Unsaved::Urgent;
        }
    }

    /// On a forum route, keeps or forgets the night's thread as the answer
    /// to the request in flight says.
    fn forum_answered(&mut self, i: usize, reply: &Reply) {
        let lane = &mut self.lanes[i];
        let Some((sent, night)) = lane.forum_flight.take() else {
            return;
        };
        let key = forum::key(night);
        let changed = match forum::learn(&sent, reply) {
            forum::Learned::Nothing => false,
            forum::Learned::Opened(t) => {
                log::info!(
                    "{}: opened the forum post of the night of {}",
                    lane.route.name(),
                    forum::night_date(night)
                );
                lane.notices.remember(&key, Some(t), wall_secs())
            }
            // Only if it is still the one kept (not one opened since).
            forum::Learned::Lost(t) if lane.notices.recall(&key) == Some(&t) => {
                log::info!(
                    "{}: the forum post of the night of {} is gone; the next message opens a new one",
                    lane.route.name(),
                    forum::night_date(night)
                );
                lane.notices.remember(&key, None, wall_secs())
            }
            forum::Learned::Lost(_) => false,
        };
        if changed {
            // Written before the next request (the loop saves first),
            // in one write with a notice's own answer to the same request.
            self.notice_unsaved = notices::Unsaved::Urgent;
        }
    }

    /// Applies Discord's answer to route `i`'s message in flight.
    fn answered(&mut self, i: usize, reply: Reply) {
        self.forum_answered(i, &reply);
        if self.lanes[i].notices.in_flight() {
            return self.notice_answered(i, reply);
        }
        let outcome = reply.outcome;
        let now = Instant::now();
        let is_alerts = self.alerts.is_some_and(|(a, _)| a == i);
        self.stats.health.record_outcome(i, &outcome, now);
        let lane = &mut self.lanes[i];
        let Some(msg) = lane.queue.pop_front() else {
            return;
        };
        let shape = Shape::of(&msg);
        let mut d = lane.route.answer(&outcome, shape, now);
        match d.next {
            Next::Commit => {
                let lines = msg.lines();
                let out = if is_alerts {
                    self.commits.alerts_delivered(msg.commits())
                } else {
                    self.commits.delivered(msg.commits())
                };
                self.commit(out);
                self.stats.record_post(lines);
            }
            // On a forum route the night's thread is gone (forgotten by
            // `forum_answered`): the lines go again, opening a new one.
            Next::Again | Next::Stopped | Next::Repost => lane.queue.push_front(msg),
            Next::Split => match msg.split() {
                Some((a, b)) => {
                    lane.queue.push_front(b);
                    lane.queue.push_front(a);
                }
                None => unreachable!("Shape::Several has two parts"),
            },
            Next::Drop => unreachable!("lines are never Shape::Whole"),
            Next::Fallback => match msg.clone().fallback() {
                Some(f) => lane.queue.push_front(f),
                None => {
                    let (status, why) = match &outcome {
                        Outcome::Rejected { status, why } => (*status, why.as_str()),
                        _ => (0, ""),
                    };
                    // Nothing simpler exists: keep it, stop the route.
                    d = lane.route.stuck(status, why, now);
                    lane.queue.push_front(msg);
                }
            },
        }
        if let Some((level, text)) = d.log {
            log::log!(level, "{text}");
        }
        if let Some(status) = d.status {
            self.stats.record_error(status);
        }
        // While the alerts webhook fails, alert copies stop holding the
        // checkpoint back: otherwise a long alerts outage followed by a
        // restart would re-post hours of lines to the logs channel, which
        // has every one of those events anyway. The copies are retried.
        if is_alerts && self.lanes[i].route.troubled() && self.commits.has_holds() {
            let out = self.commits.drop_holds();
            self.commit(out);
        }
    }

    fn flush_all(&mut self) {
        for lane in &mut self.lanes {
            lane.batcher.flush_all();
            lane.notices.hurry();
        }
    }

    /// Returns true when the loop must end now.
    fn on_control(&mut self, msg: Control, closing: &mut Option<Instant>) -> bool {
        let grace = self.grace;
        match msg {
            Control::Ping(n) => {
                self.stats
                    .sender_pong
                    .store(n, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Control::Shutdown => {
                if closing.is_none() {
                    *closing = Some(Instant::now() + grace);
                    self.flush_all();
                }
                false
            }
            Control::Abort => true,
        }
    }

    /// Before an abort (a reload): waits up to [`ABORT_SETTLE`] for the
    /// answers of POSTs in flight, so that what Discord accepted is
    /// committed and the next pipeline does not post it again (a folded
    /// backlog message holds hundreds of lines). A POST still unanswered
    /// then is abandoned: its lines stay uncommitted.
    fn settle_in_flight(&mut self, results: &Receiver<(usize, Reply)>) {
        let deadline = Instant::now() + ABORT_SETTLE;
        while self.lanes.iter().any(|l| l.route.busy()) {
            match results.recv_deadline(deadline) {
                Ok((i, reply)) => self.answered(i, reply),
                Err(_) => return,
            }
        }
    }

    /// The actor loop. `lines[i]` carries route `i`'s chunks. Returns when
    /// every line channel is closed and everything was posted, when the
    /// shutdown grace time ran out (a POST in flight is abandoned), or at
    /// once on `Abort`.
    pub fn run(mut self, lines: Vec<Receiver<Chunk>>, control: Receiver<Control>) {
        self.run_loop(&lines, &control);
        self.stop();
    }

    /// On the way out: notices not sent yet (a reload's abort, a stop
    /// whose grace ran out, a webhook that does not answer) are saved with
    /// the table and sent at the next start, the one in flight included
    /// (its answer never came: at worst it goes twice, never lost).
    fn stop(&mut self) {
        // What the night watch handed over before it stopped.
        while let Ok(n) = self.notice_rx.try_recv() {
            self.take_notice(n);
        }
        let waiting: usize = self.lanes.iter().map(|l| l.notices.len()).sum();
        if waiting > 0 && self.notice_file.is_some() {
            log::info!("{waiting} notices not sent yet are saved; they are sent at the next start");
        }
        if waiting > 0 || self.notice_unsaved != notices::Unsaved::Nothing {
            self.save_notices();
        }
    }

    fn run_loop(&mut self, lines: &[Receiver<Chunk>], control: &Receiver<Control>) {
        let control = control.clone();
        let results = self.results.clone();
        let mut open: Vec<bool> = (0..lines.len()).map(|i| i < self.lanes.len()).collect();
        let mut closing: Option<Instant> = None;
        if !open.contains(&true) {
            closing = Some(Instant::now() + self.grace);
        }
        loop {
            let now = Instant::now();
            if let Some(deadline) = closing {
                if !open.contains(&true) && self.idle() {
                    return;
                }
                if now >= deadline {
                    if !self.idle() {
                        log::warn!(
                            "stopping with lines not yet posted; they will be posted at the next start"
                        );
                    }
                    return;
                }
            }
            // The notice state first: a notice that arrived, or one that
            // left, is on disk before anything is sent (see
            // `notices::save_at`).
            let save_at = notices::save_at(self.notice_unsaved, self.notice_save_after, now);
            if save_at.is_some_and(|t| t <= now) {
                self.save_notices();
            }
            // Start a POST on every route that may; an inline sink answers
            // at once, then the loop goes round to take the next message.
            let paused = self.check_pause();
            let mut answered_inline = false;
            for i in 0..self.lanes.len() {
                let lane = &self.lanes[i];
                if lane.route.ready(now)
                    && (lane.notice_due(now) || (!paused && lane.has_work(now)))
                {
                    if let Some(reply) = self.dispatch(i, now, paused) {
                        self.answered(i, reply);
                        answered_inline = true;
                    }
                }
            }
            if answered_inline {
                // Answer pings between posts, so a long backlog is progress.
                while let Ok(msg) = control.try_recv() {
                    if self.on_control(msg, &mut closing) {
                        return;
                    }
                }
                continue;
            }
            let mut wake = self
                .lanes
                .iter()
                .filter_map(|l| l.wake_at(now, paused))
                .min();
            if paused {
                wake = Some(wake.map_or(now + PAUSE_CHECK, |w| w.min(now + PAUSE_CHECK)));
            }
            if let Some(d) = closing {
                wake = Some(wake.map_or(d, |w| w.min(d)));
            }
            if let Some(t) = notices::save_at(self.notice_unsaved, self.notice_save_after, now) {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let timer = match wake {
                Some(w) => crossbeam_channel::after(w.saturating_duration_since(now)),
                None => never(),
            };
            for lane in &mut self.lanes {
                if let Poster::Inline(sink) = &mut lane.poster {
                    sink.idle();
                }
            }
            self.stats.flush_status();

            let mut sel = Select::new();
            // Only routes under their budget take lines.
            let mut line_ops: Vec<(usize, usize)> = Vec::new();
            for (i, rx) in lines.iter().enumerate() {
                if open[i] && self.lanes[i].batcher.queued_bytes() < ROUTE_BUDGET {
                    line_ops.push((sel.recv(rx), i));
                }
            }
            let ctl_op = sel.recv(&control);
            let res_op = sel.recv(&results);
            let timer_op = sel.recv(&timer);
            let notice_rx = self.notice_rx.clone();
            let notice_op = sel.recv(&notice_rx);
            let op = sel.select();
            let index = op.index();
            if index == ctl_op {
                let msg = op.recv(&control).unwrap_or(Control::Abort);
                if self.on_control(msg, &mut closing) {
                    self.settle_in_flight(&results);
                    return;
                }
            } else if index == res_op {
                if let Ok((i, reply)) = op.recv(&results) {
                    self.answered(i, reply);
                }
                while let Ok((i, reply)) = results.try_recv() {
                    self.answered(i, reply);
                }
            } else if index == timer_op {
                let _ = op.recv(&timer);
            } else if index == notice_op {
                match op.recv(&notice_rx) {
                    Ok(n) => {
                        self.take_notice(n);
                        while let Ok(n) = notice_rx.try_recv() {
                            self.take_notice(n);
                        }
                        if closing.is_some() {
                            self.flush_all();
                        }
                    }
                    // The night watch ended: no more notices.
                    Err(_) => self.notice_rx = never(),
                }
            } else if let Some(&(_, i)) = line_ops.iter().find(|(o, _)| *o == index) {
                match op.recv(&lines[i]) {
                    Ok(c) => {
                        self.push(c, i, closing.is_some());
                        // Take what else is queued without another wake-up.
                        while self.lanes[i].batcher.queued_bytes() < ROUTE_BUDGET {
                            match lines[i].try_recv() {
                                Ok(c) => self.push(c, i, closing.is_some()),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => {
                        open[i] = false;
                        if !open.contains(&true) && closing.is_none() {
                            // The watcher ended on its own: post and stop.
                            closing = Some(Instant::now() + self.grace);
                            self.flush_all();
                        }
                    }
                }
            }
        }
    }
}

/// Seconds since the epoch, for the notice state file.
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
