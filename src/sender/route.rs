//! One route's delivery state, as a pure state machine: a [`Route`] is told
//! when a message was sent and what Discord answered ([`Outcome`]), and
//! says what to do next ([`Decision`]): commit, send the same body again
//! at a given time, split it, post its line as an attachment, or stop the
//! route until a later retry. It owns the backoff with jitter (the jitter
//! source is injected, so tests are exact), the rate-limit waits, and
//! which problems are worth a log line (once per streak), returned as data
//! for the thin actor layer to log. It knows no threads, no clock and no
//! network, so every path is unit-tested below.

use std::time::{Duration, Instant};

use crate::discord::Outcome;
use crate::format::Message;

/// The longest pause between retries during an outage.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a stopped route waits before it tries again (webhook deleted,
/// wrong token, a channel that cannot take our messages). Discord bans
/// addresses that send many invalid requests, so this is slow.
pub const STOP_RETRY: Duration = Duration::from_secs(600);

/// What a rejected message can still become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Two parts or more: it can be split in halves.
    Several,
    /// One line (or piece) in a code block or embed: it can go as an
    /// attachment instead.
    Single,
    /// One line already as an attachment: nothing smaller exists.
    Last,
    /// A notice (a message the daemon writes itself): nothing smaller
    /// exists, and a refused one is dropped rather than stopping the route
    /// for the log lines.
    Whole,
}

impl Shape {
    pub fn of(msg: &Message) -> Shape {
        if msg.parts.len() >= 2 {
            Shape::Several
        } else if msg.as_file {
            Shape::Last
        } else {
            Shape::Single
        }
    }
}

/// What to do with the message that was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Discord accepted it: commit its lines.
    Commit,
    /// Send the same body again (after a backoff or a rate-limit wait).
    Again,
    /// Send it as two halves, in order.
    Split,
    /// Send its line as an attachment ([`Message::fallback`]).
    Fallback,
    /// Keep it: the route is stopped until [`Decision::at`].
    Stopped,
    /// What it edited or posted into is gone ([`Outcome::Gone`]): post it
    /// as a new message (outside the gone thread) at [`Decision::at`];
    /// sending the same request again would only be refused again.
    Repost,
    /// A refused notice: drop it; the route goes on.
    Drop,
}

/// The answer of [`Route::answer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Next,
    /// When the route may send again.
    pub at: Instant,
    /// A line for the journal, at most one per streak of trouble.
    pub log: Option<(log::Level, String)>,
    /// The status line's last error: `Some(Some(e))` sets it,
    /// `Some(None)` clears it, `None` leaves it.
    pub status: Option<Option<String>>,
}

/// A factor in [0.5, 1.0) applied to each backoff, so that many clients do
/// not retry in step.
pub type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// Xorshift jitter seeded from `seed` (the clock in production).
pub fn xorshift_jitter(seed: u64) -> Jitter {
    let mut s = seed | 1;
    Box::new(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        0.5 + (s >> 11) as f64 / (1u64 << 53) as f64 / 2.0
    })
}

pub struct Route {
    /// The destination, for log lines (token redacted).
    name: String,
    /// `RATE_LIMIT_DELAY`: least time between two sends.
    delay: Duration,
    /// `MAX_RETRIES`: failures in a row before an outage is an error.
    max_retries: u32,
    next_at: Instant,
    busy: bool,
    /// Failed attempts in a row (retryable errors only).
    failures: u32,
    /// The current streak of trouble was logged (a warning or an error).
    reported: bool,
    /// A message was split since the last delivery (logged once).
    splitting: bool,
    jitter: Jitter,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("next_at", &self.next_at)
            .field("busy", &self.busy)
            .field("failures", &self.failures)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl Route {
    pub fn new(
        name: String,
        delay: Duration,
        max_retries: u32,
        now: Instant,
        jitter: Jitter,
    ) -> Route {
        Route {
            name,
            delay,
            max_retries,
            next_at: now,
            busy: false,
            failures: 0,
            reported: false,
            splitting: false,
            jitter,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a message may be sent now: none in flight, no wait pending.
    pub fn ready(&self, now: Instant) -> bool {
        !self.busy && now >= self.next_at
    }

    /// When the route may send next; `None` while a message is in flight.
    pub fn next_at(&self) -> Option<Instant> {
        (!self.busy).then_some(self.next_at)
    }

    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Whether the route is in a streak of trouble that was reported (the
    /// alerts route then stops holding the checkpoint back).
    pub fn troubled(&self) -> bool {
        self.reported
    }

    /// A message was handed to the network at `now`.
    pub fn sent(&mut self, now: Instant) {
        debug_assert!(!self.busy, "one message in flight per route");
        self.busy = true;
        self.next_at = now + self.delay;
    }

    /// Discord's answer to the message in flight, whose shape is `shape`.
    pub fn answer(&mut self, outcome: &Outcome, shape: Shape, now: Instant) -> Decision {
        self.busy = false;
        let mut d = Decision {
            next: Next::Again,
            at: self.next_at,
            log: None,
            status: None,
        };
        match outcome {
            Outcome::Delivered(info) => {
                d.next = Next::Commit;
                self.healthy(info, now, &mut d);
            }
            Outcome::Gone { info, why } => {
                // The webhook answered: the route is fine, the target is not.
                d.next = Next::Repost;
                self.healthy(info, now, &mut d);
                d.log.get_or_insert_with(|| {
                    (
                        log::Level::Info,
                        format!(
                            "{} no longer has what a request named ({why}); posting it as a new message",
                            self.name
                        ),
                    )
                });
            }
            Outcome::RateLimited {
                wait, cloudflare, ..
            } => {
                let why = if *cloudflare {
                    "Discord's edge refused the request (HTTP 429 without rate-limit headers)"
                } else {
                    "Discord rate limit hit (HTTP 429)"
                };
                if !self.reported {
                    self.reported = true;
                    d.log = Some((
                        log::Level::Warn,
                        format!(
                            "{why}; waiting {:.1} s before posting again",
                            wait.as_secs_f64()
                        ),
                    ));
                    d.status = Some(Some(why.to_string()));
                }
                self.next_at = now + *wait;
            }
            Outcome::Retry { why } => {
                self.failures += 1;
                let base = Duration::from_secs(1).saturating_mul(1 << (self.failures - 1).min(16));
                let factor = (self.jitter)().clamp(0.0, 1.0);
                let wait = base.min(MAX_BACKOFF).mul_f64(factor);
                if self.failures == 1 && self.max_retries > 1 {
                    d.log = Some((
                        log::Level::Warn,
                        format!(
                            "posting to {} failed ({why}); retrying in {:.1} s",
                            self.name,
                            wait.as_secs_f64()
                        ),
                    ));
                } else if self.failures == self.max_retries.max(1) {
                    d.log = Some((
                        log::Level::Error,
                        format!(
                            "posting to {} failed {} times in a row ({why}); lines are kept and retried every {} s at most until it works",
                            self.name,
                            self.failures,
                            MAX_BACKOFF.as_secs()
                        ),
                    ));
                    self.reported = true;
                }
                d.status = Some(Some(why.clone()));
                self.next_at = now + wait;
            }
            Outcome::Rejected { status, why } => match shape {
                Shape::Several => {
                    d.next = Next::Split;
                    if !self.splitting {
                        self.splitting = true;
                        d.log = Some((
                            log::Level::Warn,
                            format!(
                                "Discord rejected a message (HTTP {status}: {why}); sending it in smaller pieces"
                            ),
                        ));
                    }
                }
                Shape::Single => {
                    d.next = Next::Fallback;
                    d.log = Some((
                        log::Level::Warn,
                        format!(
                            "Discord rejected a single line (HTTP {status}: {why}); posting it again as an attached file"
                        ),
                    ));
                    d.status = Some(Some(format!("Discord rejected a line (HTTP {status})")));
                }
                Shape::Last => return self.stuck(*status, why, now),
                Shape::Whole => {
                    d.next = Next::Drop;
                    d.log = Some((
                        log::Level::Warn,
                        format!("Discord rejected a notice (HTTP {status}: {why}); it is dropped"),
                    ));
                }
            },
            Outcome::Stop { status, why } => {
                d.next = Next::Stopped;
                if !self.reported {
                    self.reported = true;
                    let what = if matches!(status, 401 | 403 | 404) {
                        "the webhook was deleted or its token is wrong"
                    } else if why.contains("220001") {
                        "the webhook's channel is a forum channel, which takes messages only in a post: set forum = true for this webhook"
                    } else if why.contains("220003") {
                        "the webhook's channel is not a forum channel, where no post can be opened: remove forum = true for this webhook"
                    } else {
                        "the webhook's channel does not take these messages"
                    };
                    d.log = Some((
                        log::Level::Error,
                        format!(
                            "Discord answered HTTP {status} ({why}) for {}: {what}; posting stops and is retried every {} minutes; fix DISCORD_WEBHOOK_URL and reload",
                            self.name,
                            STOP_RETRY.as_secs() / 60
                        ),
                    ));
                }
                d.status = Some(Some(format!("webhook rejected (HTTP {status})")));
                self.next_at = now + STOP_RETRY;
            }
        }
        d.at = self.next_at;
        d
    }

    /// Discord answered as a working webhook does: a streak of trouble
    /// ends, and an empty bucket is waited for rather than hit.
    fn healthy(&mut self, info: &crate::discord::RateInfo, now: Instant, d: &mut Decision) {
        if self.reported {
            d.log = Some((
                log::Level::Info,
                format!("posting to {} works again", self.name),
            ));
            d.status = Some(None);
        }
        self.failures = 0;
        self.reported = false;
        self.splitting = false;
        if info.remaining == Some(0) {
            if let Some(reset) = info.reset_after {
                // The bucket is empty: wait for it to refill rather
                // than collect a 429.
                self.next_at = self.next_at.max(now + reset);
            }
        }
    }

    /// Discord rejects a message that cannot get smaller or simpler: the
    /// line is kept (never skipped) and the route stops until a person
    /// looks, trying again every [`STOP_RETRY`].
    pub fn stuck(&mut self, status: u16, why: &str, now: Instant) -> Decision {
        self.busy = false;
        let mut log = None;
        if !self.reported {
            self.reported = true;
            log = Some((
                log::Level::Error,
                format!(
                    "Discord rejects a line even as an attached file (HTTP {status}: {why}); posting to {} stops and is retried every {} minutes",
                    self.name,
                    STOP_RETRY.as_secs() / 60
                ),
            ));
        }
        self.next_at = now + STOP_RETRY;
        Decision {
            next: Next::Stopped,
            at: self.next_at,
            log,
            status: Some(Some(format!("Discord rejected a line (HTTP {status})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discord::RateInfo;
    use crate::format::Part;

    fn route(delay_ms: u64, max_retries: u32, now: Instant) -> Route {
        // Jitter 0.5, 0.75, 1.0 (clamped below 1 by nothing: exact in tests).
        let mut seq = [0.5, 0.75, 1.0].into_iter().cycle();
        Route::new(
            "hook".into(),
            Duration::from_millis(delay_ms),
            max_retries,
            now,
            Box::new(move || seq.next().unwrap()),
        )
    }

    fn retry() -> Outcome {
        Outcome::Retry {
            why: "HTTP 502".into(),
        }
    }

    fn ok() -> Outcome {
        Outcome::Delivered(RateInfo::default())
    }

    fn level(d: &Decision) -> Option<log::Level> {
        d.log.as_ref().map(|(l, _)| *l)
    }

    #[test]
    fn one_message_in_flight_and_the_rate_limit_delay() {
        let t = Instant::now();
        let mut r = route(200, 3, t);
        assert!(r.ready(t));
        r.sent(t);
        assert!(r.busy() && !r.ready(t + Duration::from_secs(5)));
        assert_eq!(r.next_at(), None);
        let d = r.answer(&ok(), Shape::Several, t + Duration::from_millis(50));
        assert_eq!(d.next, Next::Commit);
        assert_eq!(d.at, t + Duration::from_millis(200));
        assert_eq!(d.log, None);
        assert_eq!(d.status, None);
        assert!(!r.ready(t + Duration::from_millis(199)));
        assert!(r.ready(t + Duration::from_millis(200)));
    }

    #[test]
    fn an_empty_bucket_waits_for_its_reset() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        r.sent(t);
        let info = RateInfo {
            remaining: Some(0),
            reset_after: Some(Duration::from_millis(1500)),
        };
        let d = r.answer(&Outcome::Delivered(info), Shape::Single, t);
        assert_eq!(d.at, t + Duration::from_millis(1500));
        // A bucket with room does not wait.
        r.sent(d.at);
        let info = RateInfo {
            remaining: Some(3),
            reset_after: Some(Duration::from_secs(2)),
        };
        let d = r.answer(&Outcome::Delivered(info), Shape::Single, d.at);
        assert_eq!(d.at, t + Duration::from_millis(1500));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_logs_twice() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        let mut now = t;
        let mut waits = Vec::new();
        let mut levels = Vec::new();
        for _ in 0..14 {
            r.sent(now);
            let d = r.answer(&retry(), Shape::Several, now);
            assert_eq!(d.next, Next::Again);
            assert_eq!(d.status, Some(Some("HTTP 502".into())));
            waits.push(d.at - now);
            levels.push(level(&d));
            now = d.at;
        }
        let secs: Vec<f64> = waits.iter().map(|w| w.as_secs_f64()).collect();
        assert_eq!(&secs[..4], &[0.5, 1.5, 4.0, 4.0]);
        assert!(secs.iter().all(|s| *s <= MAX_BACKOFF.as_secs_f64()));
        assert_eq!(secs[13], MAX_BACKOFF.as_secs_f64() * 0.75);
        // Warned at the first failure, an error at MAX_RETRIES, then quiet.
        assert_eq!(levels[0], Some(log::Level::Warn));
        assert_eq!(levels[2], Some(log::Level::Error));
        assert!(levels.iter().filter(|l| l.is_some()).count() == 2);
        assert!(r.troubled());
        r.sent(now);
        let d = r.answer(&ok(), Shape::Several, now);
        assert_eq!(level(&d), Some(log::Level::Info));
        assert_eq!(d.status, Some(None));
        assert!(!r.troubled());
        // A new outage starts a new streak at 0.5 s... times the jitter.
        r.sent(now);
        let d = r.answer(&retry(), Shape::Several, now);
        assert_eq!(level(&d), Some(log::Level::Warn));
        assert!(d.at - now <= Duration::from_secs(1));
    }

    #[test]
    fn max_retries_one_logs_an_error_at_once() {
        let t = Instant::now();
        let mut r = route(0, 1, t);
        r.sent(t);
        let d = r.answer(&retry(), Shape::Single, t);
        assert_eq!(level(&d), Some(log::Level::Error));
    }

    #[test]
    fn a_429_waits_as_asked_and_is_logged_once() {
        let t = Instant::now();
        let mut r = route(100, 3, t);
        let limited = Outcome::RateLimited {
            wait: Duration::from_secs(2),
            info: RateInfo::default(),
            cloudflare: false,
        };
        r.sent(t);
        let d = r.answer(&limited, Shape::Several, t);
        assert_eq!((d.next, d.at), (Next::Again, t + Duration::from_secs(2)));
        assert_eq!(level(&d), Some(log::Level::Warn));
        r.sent(d.at);
        let d = r.answer(&limited, Shape::Several, d.at);
        assert_eq!(d.log, None);
        assert_eq!(d.at, t + Duration::from_secs(4));
        r.sent(d.at);
        let d = r.answer(&ok(), Shape::Several, d.at);
        assert_eq!(level(&d), Some(log::Level::Info));
    }

    #[test]
    fn rejected_splits_then_falls_back_then_stops() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        let rej = Outcome::Rejected {
            status: 400,
            why: "too long".into(),
        };
        r.sent(t);
        let d = r.answer(&rej, Shape::Several, t);
        assert_eq!((d.next, d.at), (Next::Split, t));
        assert_eq!(level(&d), Some(log::Level::Warn));
        r.sent(t);
        let d = r.answer(&rej, Shape::Several, t);
        assert_eq!((d.next, d.log.is_none()), (Next::Split, true));
        r.sent(t);
        let d = r.answer(&rej, Shape::Single, t);
        assert_eq!(d.next, Next::Fallback);
        assert_eq!(level(&d), Some(log::Level::Warn));
        assert!(!r.troubled(), "a rejected line does not stop the route");
        r.sent(t);
        let d = r.answer(&rej, Shape::Last, t);
        assert_eq!((d.next, d.at), (Next::Stopped, t + STOP_RETRY));
        assert_eq!(level(&d), Some(log::Level::Error));
        assert!(r.troubled());
        assert!(!r.ready(t + STOP_RETRY - Duration::from_secs(1)));
        assert!(r.ready(t + STOP_RETRY));
        // The retry ten minutes later fails the same way: not logged again.
        r.sent(t + STOP_RETRY);
        let d = r.answer(&rej, Shape::Last, t + STOP_RETRY);
        assert_eq!((d.next, d.log), (Next::Stopped, None));
    }

    #[test]
    fn a_forum_channel_refusal_says_to_set_forum() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        r.sent(t);
        let forum = Outcome::Stop {
            status: 400,
            why: r#"{"code": 220001, "message": "Webhooks posted to forum channels must have a thread_name or thread_id"}"#.into(),
        };
        let d = r.answer(&forum, Shape::Several, t);
        assert_eq!(d.next, Next::Stopped);
        let (_, text) = d.log.unwrap();
        assert!(text.contains("set forum = true"), "{text}");
        let mut r = route(0, 3, t);
        r.sent(t);
        let other = Outcome::Stop {
            status: 400,
            why: r#"{"code": 50024, "message": "Cannot execute action on this channel type"}"#
                .into(),
        };
        let (_, text) = r.answer(&other, Shape::Several, t).log.unwrap();
        assert!(!text.contains("forum = true"), "{text}");
        // forum = true on a text channel's webhook: Discord opens no post.
        let mut r = route(0, 3, t);
        r.sent(t);
        let text_channel = Outcome::Stop {
            status: 400,
            why: r#"{"code": 220003, "message": "Webhooks can only create threads in forum channels"}"#.into(),
        };
        let (_, text) = r.answer(&text_channel, Shape::Several, t).log.unwrap();
        assert!(text.contains("remove forum = true"), "{text}");
    }

    #[test]
    fn a_stop_answer_stops_the_route_for_ten_minutes_logged_once() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        let gone = Outcome::Stop {
            status: 404,
            why: "Unknown Webhook".into(),
        };
        r.sent(t);
        let d = r.answer(&gone, Shape::Several, t);
        assert_eq!((d.next, d.at), (Next::Stopped, t + STOP_RETRY));
        let (lvl, text) = d.log.unwrap();
        assert_eq!(lvl, log::Level::Error);
        assert!(text.contains("webhook was deleted"), "{text}");
        assert_eq!(d.status, Some(Some("webhook rejected (HTTP 404)".into())));
        let later = t + STOP_RETRY;
        r.sent(later);
        let forum = Outcome::Stop {
            status: 400,
            why: "thread_name".into(),
        };
        let d = r.answer(&forum, Shape::Several, later);
        assert_eq!((d.next, d.log), (Next::Stopped, None));
        r.sent(d.at);
        let d = r.answer(&ok(), Shape::Several, d.at);
        assert_eq!((d.next, level(&d)), (Next::Commit, Some(log::Level::Info)));
    }

    /// A gone message or thread: repost, without backoff; the webhook
    /// works, so a streak of trouble ends and the bucket is honoured.
    #[test]
    fn a_gone_target_is_reposted_at_once_and_ends_a_streak() {
        let t = Instant::now();
        let mut r = route(100, 3, t);
        r.sent(t);
        let d = r.answer(&retry(), Shape::Single, t);
        assert_eq!(d.next, Next::Again);
        r.sent(d.at);
        let gone = Outcome::Gone {
            info: RateInfo {
                remaining: Some(0),
                reset_after: Some(Duration::from_secs(2)),
            },
            why: "the message was deleted: HTTP 404".into(),
        };
        let d = r.answer(&gone, Shape::Single, d.at);
        assert_eq!(d.next, Next::Repost);
        assert!(
            d.at >= t + Duration::from_secs(2),
            "an empty bucket is waited for"
        );
        let (lvl, text) = d.log.clone().unwrap();
        assert_eq!(lvl, log::Level::Info);
        assert!(text.contains("the message was deleted"), "{text}");
        assert!(!r.troubled());
        // The next failure starts the backoff from the beginning.
        r.sent(d.at);
        let again = r.answer(&retry(), Shape::Single, d.at);
        assert!(again.at - d.at <= Duration::from_secs(1));
        // After a reported streak, Gone says the route works again.
        let mut r = route(0, 1, t);
        r.sent(t);
        let d = r.answer(&retry(), Shape::Single, t);
        assert!(r.troubled());
        r.sent(d.at);
        let d = r.answer(&gone, Shape::Single, d.at);
        assert_eq!(d.status, Some(None));
        assert!(d.log.unwrap().1.contains("works again"));
    }

    #[test]
    fn a_refused_notice_is_dropped_and_the_route_goes_on() {
        let t = Instant::now();
        let mut r = route(0, 3, t);
        r.sent(t);
        let refused = Outcome::Rejected {
            status: 400,
            why: "embed too long".into(),
        };
        let d = r.answer(&refused, Shape::Whole, t);
        assert_eq!(d.next, Next::Drop);
        assert!(r.ready(t), "not stopped");
        assert!(!r.troubled());
        assert_eq!(d.status, None, "the log lines are fine");
    }

    #[test]
    fn shape_of_a_message() {
        let part = |t: &str| Part {
            label: None,
            text: t.into(),
            event: None,
            commit: None,
        };
        let mut m = Message {
            parts: vec![part("a"), part("b")],
            as_file: false,
        };
        assert_eq!(Shape::of(&m), Shape::Several);
        m.parts.pop();
        assert_eq!(Shape::of(&m), Shape::Single);
        let f = m.clone().fallback().unwrap();
        assert_eq!(Shape::of(&f), Shape::Last);
        assert_eq!(f.fallback(), None);
    }

    #[test]
    fn xorshift_jitter_stays_in_range() {
        let mut j = xorshift_jitter(12345);
        for _ in 0..10_000 {
            let x = j();
            assert!((0.5..1.0).contains(&x), "{x}");
        }
    }
}
