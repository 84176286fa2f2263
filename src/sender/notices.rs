//! One route's notice lane, as a pure queue: which [`Notice`] goes next,
//! as which [`Request`] (a post that asks for the message, or an edit of
//! the message kept under the notice's key), and what an answer changes.
//!
//! The sender's loop asks a route's lane first whenever the route may
//! send, so a notice never waits behind a backlog of log lines: it takes
//! the next slot the route's rate limit allows, and shares the route's
//! [`super::Route`] (bucket, backoff, one request in flight). Lines still
//! progress under a storm of notices: [`notice_turn`] lets at most
//! [`NOTICE_BURST`] notices go between two line messages while lines
//! wait. An `Upsert` replaces a pending notice of its key (the newest body
//! wins) and goes at most once per `min_interval`; a `Final` goes at once
//! and closes the key.
//!
//! Everything here is bounded, because a webhook can be down for a whole
//! night while notices keep coming: at most [`MAX_PENDING`] notices wait
//! (a `New` one is dropped first, then the oldest `Upsert`, a `Final`
//! last), at most [`MAX_KEPT`] keys are kept (and none beyond its TTL),
//! and the send times that `min_interval` needs are kept only for
//! `Upsert` keys and only as long as an interval can still hold them. A
//! notice Discord refuses for its body is dropped at once; one refused
//! with a client error that names no cause is tried [`MAX_TRIES`] times.
//!
//! What was sent under which key (message id, its thread, closed) is the
//! state saved by [`save`] in the state directory, so a restart edits an
//! open incident rather than posting it twice. The notices still waiting
//! are saved there too ([`Pending`]), before they are first sent and as
//! they change ([`save_at`]), and queued again at the next start: a
//! `kill -9` or a power cut loses none (the one in flight may go twice).
//! No clock, no threads, no I/O but [`load`]/[`save`]: everything is
//! unit-tested below.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::discord::{MessageId, NewFile, Reply, Request, Thread, ThreadId, payload};
use crate::format::Payload;
use crate::notice::{Notice, Policy};

/// Notices waiting on one route, at most (a webhook down for a long time
/// must not grow memory); beyond, one is dropped (see [`Notices::push`]).
pub const MAX_PENDING: usize = 200;
/// Keys kept per route, at most (the oldest closed ones go first).
pub const MAX_KEPT: usize = 1000;
/// Closed keys are forgotten after this long; open ones after [`OPEN_TTL`].
pub const CLOSED_TTL: Duration = Duration::from_secs(24 * 3600);
/// An open key untouched this long is forgotten too (a daemon stopped in
/// mid-incident for days).
pub const OPEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tries of a notice Discord refuses with a client error that names no
/// cause ([`crate::discord::Outcome::unexplained_refusal`]) before it is
/// dropped: a 5xx or a network error is retried as long as it lasts.
pub const MAX_TRIES: u32 = 3;
/// Notices that may go in a row while log lines wait (then one line
/// message goes): a storm of notices cannot starve the lines.
pub const NOTICE_BURST: u32 = 2;
/// Bytes of each attachment saved with a pending notice (its end: the
/// lines nearest the alert), so that the state file stays small.
pub const SAVED_FILE_BYTES: usize = 64 * 1024;
/// Bytes of attachments saved per route in all: the file is rewritten as
/// notices come and go, and a long outage may hold [`MAX_PENDING`] alerts
/// with their contexts. Past the budget an attachment is saved cut further
/// (the first notices, those sent first, keep theirs whole), or not at all.
pub const SAVED_FILES_BUDGET: usize = 1024 * 1024;
/// The state file, in the state directory.
pub const FILE: &str = "notices.json";
/// While waiting notices merely get newer bodies, the state file is
/// written at most this often (a storm of incident edits in an outage
/// rewrites it at most once a second); see [`save_at`] for when it is
/// written at once.
pub const SAVE_GAP: Duration = Duration::from_secs(1);

/// After a failed write of the state file (a full disk), the next one that
/// is not urgent is tried this much later.
pub const SAVE_RETRY: Duration = Duration::from_secs(30);

/// What the state file lacks (see [`save_at`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unsaved {
    #[default]
    Nothing,
    /// Newer bodies replaced notices waiting (an incident's count): the
    /// saved one is older, not lost.
    Queue,
    /// A notice arrived or is about to be sent unsaved, one left the
    /// queue (accepted or dropped), or a message id was learnt: without
    /// the write, a crash would lose the first or repeat the others.
    Urgent,
}

/// When to write the state file: at once for [`Unsaved::Urgent`], else
/// not before `after` (see [`save_after`]). A notice is thus on disk
/// before it is first sent, and after a crash (`kill -9`, a power cut)
/// only the one in flight can go twice; a notice that arrives in the gap
/// and is not sent within it waits at most the gap to be saved.
pub fn save_at(unsaved: Unsaved, after: Option<Instant>, now: Instant) -> Option<Instant> {
    match unsaved {
        Unsaved::Nothing => None,
        Unsaved::Urgent => Some(now),
        Unsaved::Queue => Some(after.map_or(now, |t| t.max(now))),
    }
}

/// After a write at `now` that succeeded (or not), when the next one that
/// is not urgent may be made: [`SAVE_GAP`] later, or [`SAVE_RETRY`] after
/// a failure (a full disk is not tried every second).
pub fn save_after(ok: bool, now: Instant) -> Instant {
    now + if ok { SAVE_GAP } else { SAVE_RETRY }
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What is known of one key's message; saved across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    /// The message to edit; `None` when Discord did not say (a proxy that
    /// strips bodies): the next notice posts anew.
    pub id: Option<MessageId>,
    pub closed: bool,
    /// Wall-clock time of the last send, in seconds since the epoch.
    pub at: u64,
    /// The thread the message lives in (a forum route's post of the night
    /// it was posted in), so an edit goes there even after the night
    /// changed; `None` outside a thread, and in files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadId>,
}

#[derive(Debug)]
struct Item {
    notice: Notice,
    /// Attempts refused with a client error that names no cause.
    tries: u32,
    /// Saved by an earlier run (see [`Notices::restore`]): its send does not
    /// hold back the next body of its key.
    restored: bool,
}

/// A notice handed to the network: what the answer applies to.
#[derive(Debug)]
struct Flight {
    item: Item,
    edit: bool,
    /// The request as it was finally sent (a forum route puts it in a
    /// thread, see [`Notices::placed`]): where the message lives.
    sent: Option<Request>,
}

#[derive(Debug, Default)]
pub struct Notices {
    queue: VecDeque<Item>,
    kept: HashMap<String, Kept>,
    /// Monotonic time of the last send per `Upsert` key (for
    /// `min_interval`), forgotten once older than [`Notices::longest`].
    last_sent: HashMap<String, Instant>,
    /// The longest `min_interval` seen: a send older than that holds
    /// nothing back.
    longest: Duration,
    flight: Option<Flight>,
    /// Stopping: every pending notice is due now.
    urgent: bool,
    /// Notices dropped in the current streak of a full queue (the first
    /// drop is logged at once, the count when the queue has room again).
    dropped: usize,
    /// Notices queued as items of their own (not replacing a waiting
    /// body of their key) since the start: see [`Notices::queued`].
    queued: u64,
}

/// What [`Notices::answered`] did, for the sender to log and save.
#[derive(Debug, Default, PartialEq)]
pub struct Answered {
    /// The kept table changed: save it.
    pub changed: bool,
    /// A line for the journal.
    pub log: Option<(log::Level, String)>,
}

/// Whether the next slot of a route carries a notice rather than lines:
/// a due notice goes first, unless [`NOTICE_BURST`] notices went in a row
/// (`run`) while lines waited (`lines_wait`). The notice then waits for
/// one line message at most, and lines for `NOTICE_BURST` notices at most.
pub fn notice_turn(notice_due: bool, lines_wait: bool, run: u32) -> bool {
    notice_due && (!lines_wait || run < NOTICE_BURST)
}

/// How eviction ranks a waiting notice: the lowest goes first. A `New`
/// one stands alone; an `Upsert` is superseded by the next of its key; a
/// `Final` (an incident resolved, the night's summary) is lost for good.
fn rank(p: Policy) -> u8 {
    match p {
        Policy::New => 0,
        Policy::Upsert { .. } => 1,
        Policy::Final => 2,
    }
}

impl Notices {
    pub fn with_kept(kept: HashMap<String, Kept>) -> Notices {
        Notices {
            kept,
            ..Notices::default()
        }
    }

    pub fn kept(&self) -> &HashMap<String, Kept> {
        &self.kept
    }

    /// The message (or thread) id kept under `key`, if open.
    pub fn recall(&self, key: &str) -> Option<&MessageId> {
        self.kept
            .get(key)
            .filter(|k| !k.closed)
            .and_then(|k| k.id.as_ref())
    }

    /// Keeps `id` under `key` (a forum route's thread of a night, see
    /// [`super::forum::key`]), or forgets it; saved with the notices'.
    /// Returns whether the table changed.
    pub fn remember(&mut self, key: &str, id: Option<MessageId>, wall: u64) -> bool {
        match id {
            Some(id) => {
                let k = Kept {
                    id: Some(id),
                    closed: false,
                    at: wall,
                    thread: None,
                };
                let changed = self.kept.insert(key.to_string(), k.clone()) != Some(k);
                self.prune_kept(wall) || changed
            }
            None => self.kept.remove(key).is_some(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.flight.is_none()
    }

    /// How many notices were queued as items of their own: when a push
    /// moves it, a notice is waiting that no save holds yet (one that only
    /// replaced a waiting body of its key leaves it).
    pub fn queued(&self) -> u64 {
        self.queued
    }

    pub fn in_flight(&self) -> bool {
        self.flight.is_some()
    }

    /// Notices waiting (the one in flight included).
    pub fn len(&self) -> usize {
        self.queue.len() + usize::from(self.flight.is_some())
    }

    /// Stopping: whatever waits for its interval goes now.
    pub fn hurry(&mut self) {
        self.urgent = true;
    }

    /// Takes a notice from the producer. When [`MAX_PENDING`] already
    /// wait, one is dropped: the oldest `New`, else the oldest `Upsert`,
    /// else the oldest `Final`; the first drop of a streak returns a line
    /// for the journal.
    pub fn push(&mut self, mut n: Notice) -> Option<(log::Level, String)> {
        if let Policy::Upsert { min_interval } = n.policy {
            self.longest = self.longest.max(min_interval);
        }
        if n.policy != Policy::New {
            // The newest body of a key replaces the one still waiting; a
            // pending Final stays (the key closes, then this posts anew).
            // A Final does not absorb an update whose message was never
            // posted: the message goes out first as it opened (the ping
            // belongs to the problem, not to its end), and the Final then
            // edits it, so a storm that begins and ends before the first
            // slot is still one message edited in place.
            let unposted = first_post(&self.kept, &n.key);
            if let Some(old) = self.queue.iter_mut().find(|i| {
                i.notice.key == n.key
                    && match (i.notice.policy, n.policy) {
                        (Policy::New, _) => false,
                        (Policy::Final, Policy::Final) => true,
                        (Policy::Final, _) => false,
                        (_, Policy::Final) => !unposted,
                        _ => true,
                    }
            }) {
                if n.files.is_empty() {
                    // The first post's attachment (an alert's context)
                    // must not be lost to a quick update.
                    n.files = std::mem::take(&mut old.notice.files);
                }
                if first_post(&self.kept, &n.key) {
                    // Nor its ping: a repeat's body has none.
                    carry_ping(&old.notice.body, &mut n.body);
                }
                old.notice = n;
                old.tries = 0;
                old.restored = false;
                return None;
            }
        }
        self.queue.push_back(Item {
            notice: n,
            tries: 0,
            restored: false,
        });
        self.queued += 1;
        if self.len() <= MAX_PENDING {
            return None;
        }
        let lowest = self.queue.iter().map(|i| rank(i.notice.policy)).min()?;
        let pos = self
            .queue
            .iter()
            .position(|i| rank(i.notice.policy) == lowest)?;
        let gone = self.queue.remove(pos)?;
        self.dropped += 1;
        (self.dropped == 1).then(|| {
            (
                log::Level::Warn,
                format!(
                    "{MAX_PENDING} notices wait for this webhook; dropping the oldest ({:?} first, then older updates, a closing one last)",
                    gone.notice.key
                ),
            )
        })
    }

    /// When the item may go: its key is not in flight, and an Upsert
    /// waits for its interval.
    fn due_at(&self, item: &Item, now: Instant) -> Option<Instant> {
        let n = &item.notice;
        if self
            .flight
            .as_ref()
            .is_some_and(|f| f.item.notice.key == n.key)
        {
            return None;
        }
        match n.policy {
            Policy::Upsert { min_interval } if !self.urgent => Some(
                self.last_sent
                    .get(&n.key)
                    .map_or(now, |t| (*t + min_interval).max(now)),
            ),
            _ => Some(now),
        }
    }

    /// When the next notice may go, if any waits.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.flight.is_some() {
            return None;
        }
        self.queue.iter().filter_map(|i| self.due_at(i, now)).min()
    }

    /// The next notice due at `now`, as the request to make; it is then in
    /// flight until [`Notices::answered`].
    pub fn next(&mut self, now: Instant) -> Option<(Request, Payload)> {
        if self.flight.is_some() {
            return None;
        }
        // A send older than every interval holds nothing back.
        let longest = self.longest;
        self.last_sent
            .retain(|_, t| now.saturating_duration_since(*t) < longest);
        let pos = self
            .queue
            .iter()
            .position(|i| self.due_at(i, now).is_some_and(|t| t <= now))?;
        let item = self.queue.remove(pos)?;
        let n = &item.notice;
        let target = match n.policy {
            Policy::New => None,
            _ => self
                .kept
                .get(&n.key)
                .filter(|k| !k.closed)
                .and_then(|k| k.id.clone().map(|id| (id, k.thread.clone()))),
        };
        let (req, body) = match target {
            // An edit keeps the message's attachments as they are, and
            // goes to the thread the message lives in.
            Some((id, thread)) => (Request::Edit { id, thread }, payload(&n.body, &[], None)),
            None => (
                Request::Post {
                    thread: Thread::Channel,
                    wait: true,
                },
                payload(&n.body, &n.files, None),
            ),
        };
        // A body saved by the last run is older than what the restarted
        // night watch says next (the card after reading the backlog): it
        // goes, and does not hold the newer one back for an interval.
        if matches!(n.policy, Policy::Upsert { .. }) && !item.restored {
            self.last_sent.insert(n.key.clone(), now);
        }
        let edit = matches!(req, Request::Edit { .. });
        self.flight = Some(Flight {
            item,
            edit,
            sent: Some(req.clone()),
        });
        Some((req, body))
    }

    /// The request in flight as it was finally sent (a forum route puts it
    /// into a thread): a post's message is then kept with its thread.
    pub fn placed(&mut self, sent: &Request) {
        if let Some(f) = &mut self.flight {
            f.sent = Some(sent.clone());
        }
    }

    /// Applies the answer to the notice in flight: `next` is what the
    /// route decided ([`super::Next`]); `wall` is seconds since the epoch.
    pub fn answered(&mut self, reply: &Reply, next: super::Next, wall: u64) -> Answered {
        use super::Next;
        let mut out = Answered::default();
        let Some(Flight {
            mut item,
            edit,
            sent,
        }) = self.flight.take()
        else {
            return out;
        };
        let key = item.notice.key.clone();
        match next {
            Next::Commit => {
                let closed = item.notice.policy == Policy::Final;
                if closed {
                    self.last_sent.remove(&key);
                }
                if item.notice.policy != Policy::New {
                    let (id, thread) = if edit {
                        let k = self.kept.get(&key);
                        (
                            k.and_then(|k| k.id.clone()),
                            k.and_then(|k| k.thread.clone()),
                        )
                    } else {
                        let thread = match &sent {
                            Some(Request::Post {
                                thread: Thread::In(t),
                                ..
                            }) => Some(t.clone()),
                            Some(Request::Post {
                                thread: Thread::Open(_),
                                ..
                            }) => reply.message.as_ref().map(|m| m.channel_id.clone()),
                            _ => None,
                        };
                        (reply.message.as_ref().map(|m| m.id.clone()), thread)
                    };
                    let k = Kept {
                        id,
                        closed,
                        at: wall,
                        thread,
                    };
                    // `at` moves at every send; saving only what identifies
                    // the message keeps the writes to posts and closings.
                    let old = self.kept.insert(key, k.clone());
                    out.changed = old.is_none_or(|o| {
                        o.id != k.id || o.closed != k.closed || o.thread != k.thread
                    });
                }
                out.changed |= self.prune_kept(wall);
            }
            Next::Repost => {
                // The message was deleted: post it anew, with its files.
                if let Some(k) = self.kept.get_mut(&key) {
                    k.id = None;
                    k.thread = None;
                    out.changed = true;
                }
                self.last_sent.remove(&key);
                self.requeue(item);
            }
            Next::Again if reply.outcome.unexplained_refusal() => {
                self.last_sent.remove(&key);
                item.tries += 1;
                if item.tries >= MAX_TRIES {
                    out.log = Some((
                        log::Level::Warn,
                        format!(
                            "Discord refused the notice {key:?} {} times without saying why; it is dropped",
                            item.tries
                        ),
                    ));
                } else {
                    self.requeue(item);
                }
            }
            Next::Again | Next::Stopped => {
                self.last_sent.remove(&key);
                self.requeue(item);
            }
            Next::Split | Next::Fallback | Next::Drop => {
                out.log = Some((
                    log::Level::Warn,
                    format!("Discord refused the notice {key:?}; it is dropped"),
                ));
            }
        }
        // A streak of drops ends when the queue has room again.
        if self.dropped > 0 && self.len() < MAX_PENDING / 2 {
            out.log.get_or_insert_with(|| {
                (
                    log::Level::Info,
                    format!(
                        "{} notices were dropped while more than {MAX_PENDING} waited for this webhook",
                        self.dropped
                    ),
                )
            });
            self.dropped = 0;
        }
        out
    }

    /// Forgets keys past their TTL, then, beyond [`MAX_KEPT`], the oldest
    /// (closed ones first) down to nine tenths of it, so that the sort is
    /// not made at every send; returns whether any went.
    fn prune_kept(&mut self, wall: u64) -> bool {
        let before = self.kept.len();
        self.kept.retain(|_, k| alive(k, wall));
        if self.kept.len() > MAX_KEPT {
            let mut order: Vec<(bool, u64, String)> = self
                .kept
                .iter()
                .map(|(key, k)| (!k.closed, k.at, key.clone()))
                .collect();
            order.sort();
            let excess = self.kept.len() - MAX_KEPT * 9 / 10;
            for (_, _, key) in order.into_iter().take(excess) {
                self.kept.remove(&key);
            }
        }
        self.kept.len() != before
    }

    /// Puts an unsent notice back at the front, unless a newer body of
    /// its key arrived meanwhile (it then takes the files).
    fn requeue(&mut self, item: Item) {
        if item.notice.policy != Policy::New {
            if let Some(newer) = self
                .queue
                .iter_mut()
                .find(|i| i.notice.key == item.notice.key && i.notice.policy != Policy::New)
            {
                if newer.notice.files.is_empty() {
                    newer.notice.files = item.notice.files;
                }
                if first_post(&self.kept, &newer.notice.key) {
                    carry_ping(&item.notice.body, &mut newer.notice.body);
                }
                return;
            }
        }
        self.queue.push_front(item);
    }

    /// The notices still waiting (the one in flight first: its answer
    /// never came), for the state file, each attachment cut to
    /// [`SAVED_FILE_BYTES`].
    pub fn pending(&self) -> Vec<Pending> {
        let mut budget = SAVED_FILES_BUDGET;
        self.flight
            .iter()
            .map(|f| &f.item)
            .chain(self.queue.iter())
            .map(|i| Pending::of(&i.notice, &mut budget))
            .collect()
    }

    /// Queues notices saved by a previous run.
    pub fn restore(&mut self, route: usize, pending: Vec<Pending>) {
        for p in pending {
            let queued = self.queued;
            if let Some((level, text)) = self.push(p.into_notice(route)) {
                log::log!(level, "{text}");
            }
            if self.queued > queued {
                if let Some(item) = self.queue.back_mut() {
                    item.restored = true;
                }
            }
        }
    }
}

/// Whether a kept key is still within its TTL at `now` (epoch seconds).
fn alive(k: &Kept, now: u64) -> bool {
    let ttl = if k.closed { CLOSED_TTL } else { OPEN_TTL };
    now.saturating_sub(k.at) <= ttl.as_secs()
}

/// Whether the next send of `key` posts a new message (nothing kept to
/// edit), so it must carry the ping of the notice it replaces.
fn first_post(kept: &HashMap<String, Kept>, key: &str) -> bool {
    kept.get(key)
        .filter(|k| !k.closed)
        .and_then(|k| k.id.as_ref())
        .is_none()
}

/// Gives `new` the ping (`content`, `allowed_mentions`) of `old` when it
/// has no content of its own: an incident's first body pings and its
/// repeats do not, so a repeat that replaces the unsent first post would
/// otherwise post the incident silently.
fn carry_ping(old: &serde_json::Value, new: &mut serde_json::Value) {
    let has_content = new
        .get("content")
        .and_then(|c| c.as_str())
        .is_some_and(|c| !c.is_empty());
    if has_content {
        return;
    }
    let Some(obj) = new.as_object_mut() else {
        return;
    };
    for field in ["content", "allowed_mentions"] {
        if let Some(v) = old.get(field) {
            obj.insert(field.to_string(), v.clone());
        }
    }
}

/// A notice still waiting when the sender stopped, as saved in the state
/// file (its route is the table it is saved under).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub key: String,
    pub body: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PendingFile>,
    pub policy: SavedPolicy,
}

/// An attachment of a pending notice: a context `.log` file is text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingFile {
    pub name: String,
    pub text: String,
}

/// [`Policy`] as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedPolicy {
    New,
    Upsert { min_interval_ms: u64 },
    Final,
}

impl Pending {
    /// `n` as saved, its attachments' bytes taken from `budget`.
    fn of(n: &Notice, budget: &mut usize) -> Pending {
        Pending {
            key: n.key.clone(),
            body: n.body.clone(),
            files: n
                .files
                .iter()
                .filter_map(|f| {
                    let kept = tail(&f.data, SAVED_FILE_BYTES.min(*budget));
                    *budget -= kept.len();
                    (!kept.is_empty() || f.data.is_empty()).then(|| PendingFile {
                        name: f.name.clone(),
                        text: String::from_utf8_lossy(kept).into_owned(),
                    })
                })
                .collect(),
            policy: match n.policy {
                Policy::New => SavedPolicy::New,
                Policy::Upsert { min_interval } => SavedPolicy::Upsert {
                    min_interval_ms: min_interval.as_millis().try_into().unwrap_or(u64::MAX),
                },
                Policy::Final => SavedPolicy::Final,
            },
        }
    }

    fn into_notice(self, route: usize) -> Notice {
        Notice {
            route,
            key: self.key,
            body: self.body,
            files: self
                .files
                .into_iter()
                .map(|f| NewFile {
                    name: f.name,
                    data: f.text.into_bytes(),
                })
                .collect(),
            policy: match self.policy {
                SavedPolicy::New => Policy::New,
                SavedPolicy::Upsert { min_interval_ms } => Policy::Upsert {
                    min_interval: Duration::from_millis(min_interval_ms),
                },
                SavedPolicy::Final => Policy::Final,
            },
        }
    }
}

/// The last `max` bytes of `data`, from a line start when one is there.
fn tail(data: &[u8], max: usize) -> &[u8] {
    if data.len() <= max {
        return data;
    }
    let cut = data.len() - max;
    let start = data[cut..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(cut, |p| cut + p + 1);
    &data[start..]
}

/// The saved table: per route (by a fingerprint of its webhook, so a
/// reordered configuration keeps its messages), key → kept.
pub type Saved = BTreeMap<String, BTreeMap<String, Kept>>;

/// The state file: the kept table and the notices still waiting (not
/// yet accepted by Discord), per route.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// The file's format: 2 (a file of version 1 is the bare table).
    pub version: u32,
    pub kept: Saved,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, Vec<Pending>>,
}

/// The file as it may be on disk: this version's, or the bare kept table
/// of version 1 (a daemon upgraded in mid-night keeps its incidents).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OnDisk {
    V2(State),
    V1(Saved),
}

/// The fingerprint that names a route in the state file (never the URL:
/// it holds the token).
pub fn route_id(url: &str) -> String {
    format!("{:016x}", crate::checkpoint::fingerprint(url.as_bytes()))
}

/// Reads the state file; a missing or unreadable one is an empty table
/// (the worst outcome is a notice posted twice).
pub fn load(path: &Path) -> State {
    match std::fs::read(path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(OnDisk::V2(s)) => s,
            Ok(OnDisk::V1(kept)) => State {
                version: 2,
                kept,
                pending: BTreeMap::new(),
            },
            Err(e) => {
                log::warn!("ignoring {}: {e}", path.display());
                State::default()
            }
        },
        Err(_) => State::default(),
    }
}

/// Drops what is too old to be edited again (`now`: seconds since the epoch).
pub fn prune(saved: &mut Saved, now: u64) {
    for keys in saved.values_mut() {
        keys.retain(|_, k| alive(k, now));
    }
    saved.retain(|_, keys| !keys.is_empty());
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename
/// over the old one, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A part written to a full disk would keep it full (the
        // checkpoint needs the room too).
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Saves the state, its table pruned.
pub fn save(path: &Path, mut state: State, now: u64) -> Result<(), NoticeError> {
    prune(&mut state.kept, now);
    state.version = 2;
    state.pending.retain(|_, p| !p.is_empty());
    let bytes = serde_json::to_vec_pretty(&state).expect("the state always serializes");
    write_atomic(path, &bytes).map_err(|source| NoticeError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Next;
    use super::*;
    use crate::discord::{Outcome, Posted, RateInfo, Snowflake};

    /// However many notices wait with however large attachments, the
    /// saved attachments stay within the budget; the first notices (sent
    /// first) keep theirs whole, and none is left without its notice.
    #[test]
    fn saved_attachments_stay_within_the_budget_first_notices_first() {
        let mut q = Notices::default();
        let big = "x".repeat(100) + "\n";
        for i in 0..MAX_PENDING {
            let mut alert = n(&format!("a/{i}"), "alert", Policy::New);
            alert.files = vec![crate::notice::context_file(
                "ekos.txt",
                std::iter::repeat_n(big.as_str(), 1000),
            )];
            q.push(alert);
        }
        let saved = q.pending();
        assert_eq!(saved.len(), MAX_PENDING, "every notice is saved");
        let bytes: usize = saved
            .iter()
            .flat_map(|p| &p.files)
            .map(|f| f.text.len())
            .sum();
        assert!(bytes <= SAVED_FILES_BUDGET, "{bytes}");
        assert!(bytes > SAVED_FILES_BUDGET - SAVED_FILE_BYTES, "{bytes}");
        let whole = SAVED_FILES_BUDGET / SAVED_FILE_BYTES - 1;
        for p in &saved[..whole] {
            assert!(p.files[0].text.len() > SAVED_FILE_BYTES - 200);
        }
        assert!(saved.last().unwrap().files.is_empty());
    }

    /// After a crash the card's last update saved is sent at the start;
    /// the restarted night watch's newer body of it (the backlog read
    /// again) must not wait a whole interval behind it.
    #[test]
    fn a_restored_update_does_not_hold_back_the_next_body_of_its_key() {
        let mut q = Notices::default();
        let mut budget = SAVED_FILES_BUDGET;
        q.restore(
            0,
            vec![Pending::of(&upsert("card", "1 frame"), &mut budget)],
        );
        let t0 = Instant::now();
        assert!(q.next(t0).is_some());
        q.answered(&ok(Some("1")), Next::Commit, 0);
        q.push(upsert("card", "2 frames"));
        assert_eq!(q.next_due(t0), Some(t0), "not held for the interval");
        // A body of this run does hold the next one back.
        assert!(q.next(t0).is_some());
        q.answered(&ok(Some("1")), Next::Commit, 0);
        q.push(upsert("card", "3 frames"));
        assert_eq!(q.next_due(t0), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn the_state_is_written_at_once_when_urgent_and_at_most_once_a_gap_otherwise() {
        let t0 = Instant::now();
        assert_eq!(save_at(Unsaved::Nothing, None, t0), None);
        assert_eq!(save_at(Unsaved::Queue, None, t0), Some(t0), "never saved");
        let after = Some(save_after(true, t0));
        let later = t0 + Duration::from_millis(300);
        assert_eq!(save_at(Unsaved::Queue, after, later), Some(t0 + SAVE_GAP));
        assert_eq!(save_at(Unsaved::Urgent, after, later), Some(later));
        let long_after = t0 + 5 * SAVE_GAP;
        assert_eq!(save_at(Unsaved::Queue, after, long_after), Some(long_after));
        // A failed write: the next one that is not urgent waits longer.
        let failed = Some(save_after(false, t0));
        assert_eq!(
            save_at(Unsaved::Queue, failed, later),
            Some(t0 + SAVE_RETRY)
        );
        assert_eq!(save_at(Unsaved::Urgent, failed, later), Some(later));
        assert!(SAVE_RETRY > 10 * SAVE_GAP);
        assert!(Unsaved::Urgent > Unsaved::Queue && Unsaved::Queue > Unsaved::Nothing);
    }

    fn n(key: &str, text: &str, policy: Policy) -> Notice {
        Notice {
            route: 0,
            key: key.into(),
            body: serde_json::json!({ "content": text }),
            files: vec![],
            policy,
        }
    }

    fn upsert(key: &str, text: &str) -> Notice {
        n(
            key,
            text,
            Policy::Upsert {
                min_interval: Duration::from_secs(30),
            },
        )
    }

    fn ok(id: Option<&str>) -> Reply {
        Reply {
            outcome: Outcome::Delivered(RateInfo::default()),
            message: id.map(|i| Posted {
                id: Snowflake::parse(i).unwrap(),
                channel_id: Snowflake::parse("7").unwrap(),
                attachments: vec![],
            }),
        }
    }

    fn text(p: &Payload) -> String {
        let v: serde_json::Value = serde_json::from_slice(&p.printable).unwrap();
        v["content"].as_str().unwrap_or("").to_string()
    }

    #[test]
    fn an_upsert_posts_then_edits_at_most_once_per_interval_newest_body_wins() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(upsert("k", "1"));
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { wait: true, .. }));
        assert_eq!(text(&p), "1");
        assert!(q.answered(&ok(Some("55")), Next::Commit, 100).changed);
        q.push(upsert("k", "2"));
        q.push(upsert("k", "3"));
        assert_eq!(q.next_due(t0), Some(t0 + Duration::from_secs(30)));
        assert!(q.next(t0 + Duration::from_secs(29)).is_none());
        let (req, p) = q.next(t0 + Duration::from_secs(30)).unwrap();
        assert_eq!(
            req,
            Request::Edit {
                id: Snowflake::parse("55").unwrap(),
                thread: None
            }
        );
        assert_eq!(text(&p), "3", "the newest body wins");
        assert!(!q.answered(&ok(Some("55")), Next::Commit, 130).changed);
        assert!(q.is_empty());
    }

    #[test]
    fn a_final_goes_at_once_and_closes_the_key_so_the_next_one_posts_anew() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(upsert("k", "open"));
        q.next(t0).unwrap();
        q.answered(&ok(Some("9")), Next::Commit, 1);
        q.push(upsert("k", "update"));
        q.push(n("k", "resolved", Policy::Final));
        let (req, p) = q.next(t0 + Duration::from_secs(1)).unwrap();
        assert!(matches!(req, Request::Edit { .. }));
        assert_eq!(text(&p), "resolved", "the final replaced the update");
        assert!(q.answered(&ok(Some("9")), Next::Commit, 2).changed);
        assert!(q.kept()["k"].closed);
        q.push(upsert("k", "again"));
        let (req, _) = q.next(t0 + Duration::from_secs(60)).unwrap();
        assert!(matches!(req, Request::Post { .. }));
    }

    #[test]
    fn a_final_before_the_first_post_went_edits_the_message_posted_open() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(pinging("k"));
        q.push(silent("k"));
        q.push(n("k", "resolved", Policy::Final));
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        let body = String::from_utf8_lossy(&p.printable).to_string();
        assert!(body.contains("repeat") && body.contains("<@&42>"), "{body}");
        assert!(q.next(t0).is_none(), "the final waits for the post");
        q.answered(&ok(Some("9")), Next::Commit, 1);
        let (req, p) = q.next(t0).unwrap();
        assert_eq!(
            req,
            Request::Edit {
                id: Snowflake::parse("9").unwrap(),
                thread: None
            },
            "a final ignores the interval"
        );
        assert_eq!(text(&p), "resolved");
        q.answered(&ok(Some("9")), Next::Commit, 2);
        assert!(q.kept()["k"].closed);
        assert!(q.is_empty());
    }

    #[test]
    fn an_update_queued_behind_a_pending_final_waits_for_it() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(n("k", "resolved", Policy::Final));
        q.push(upsert("k", "new incident"));
        let (_, p) = q.next(t0).unwrap();
        assert_eq!(text(&p), "resolved");
        assert!(q.next(t0).is_none(), "one request at a time");
        q.answered(&ok(Some("3")), Next::Commit, 1);
        let (req, p) = q.next(t0 + Duration::from_secs(30)).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        assert_eq!(text(&p), "new incident");
    }

    #[test]
    fn a_deleted_message_is_posted_anew_with_its_files() {
        let t0 = Instant::now();
        let mut q = Notices::with_kept(HashMap::from([(
            "k".to_string(),
            Kept {
                id: Snowflake::parse("4"),
                closed: false,
                at: 0,
                thread: None,
            },
        )]));
        let mut first = upsert("k", "x");
        first.files = vec![crate::notice::context_file("a", ["line"])];
        q.push(first);
        let (req, _) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Edit { .. }));
        let gone = Reply {
            outcome: Outcome::Gone {
                info: RateInfo::default(),
                why: "unknown message".into(),
            },
            message: None,
        };
        assert!(q.answered(&gone, Next::Repost, 1).changed);
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        assert!(p.content_type.starts_with("multipart/"), "with its file");
        q.answered(&ok(Some("8")), Next::Commit, 2);
        assert_eq!(q.kept()["k"].id, Snowflake::parse("8"));
    }

    #[test]
    fn a_failed_send_is_retried_unless_a_newer_body_came_which_keeps_the_files() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        let mut first = upsert("k", "1");
        first.files = vec![crate::notice::context_file("a", ["ctx"])];
        q.push(first);
        q.next(t0).unwrap();
        q.push(upsert("k", "2"));
        let fail = Reply {
            outcome: Outcome::Retry { why: "x".into() },
            message: None,
        };
        q.answered(&fail, Next::Again, 1);
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }), "never posted: post");
        assert!(p.content_type.starts_with("multipart/"));
        assert!(String::from_utf8_lossy(&p.printable).contains("\"2\""));
        q.answered(&fail, Next::Again, 1);
        let (_, p) = q.next(t0).unwrap();
        assert!(String::from_utf8_lossy(&p.printable).contains("\"2\""));
    }

    fn pinging(key: &str) -> Notice {
        let mut p = upsert(key, "");
        p.body = serde_json::json!({
            "content": "<@&42>",
            "allowed_mentions": { "roles": ["42"] },
            "embeds": [{ "title": "first" }],
        });
        p
    }

    fn silent(key: &str) -> Notice {
        let mut s = upsert(key, "");
        s.body = serde_json::json!({ "embeds": [{ "title": "repeat" }] });
        s
    }

    #[test]
    fn a_repeat_replacing_the_unsent_first_post_keeps_its_ping() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(pinging("k"));
        q.push(silent("k"));
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        let body = String::from_utf8_lossy(&p.printable).to_string();
        assert!(body.contains("<@&42>"), "{body}");
        assert!(body.contains("\"roles\""), "{body}");
        assert!(body.contains("repeat"), "the newest body wins: {body}");
        // Once posted, the edits carry no ping.
        q.answered(&ok(Some("8")), Next::Commit, 1);
        q.push(silent("k"));
        q.push(silent("k"));
        let (req, p) = q.next(t0 + Duration::from_secs(60)).unwrap();
        assert!(matches!(req, Request::Edit { .. }));
        assert!(!String::from_utf8_lossy(&p.printable).contains("<@&42>"));
    }

    #[test]
    fn a_failed_first_post_gives_its_ping_to_the_newer_body() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(pinging("k"));
        q.next(t0).unwrap();
        q.push(silent("k"));
        let fail = Reply {
            outcome: Outcome::Retry { why: "x".into() },
            message: None,
        };
        q.answered(&fail, Next::Again, 1);
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        let body = String::from_utf8_lossy(&p.printable).to_string();
        assert!(body.contains("<@&42>") && body.contains("repeat"), "{body}");
    }

    #[test]
    fn a_refused_notice_is_dropped_and_new_notices_always_post() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(n("a", "1", Policy::New));
        q.push(n("a", "2", Policy::New));
        q.next(t0).unwrap();
        let refused = Reply {
            outcome: Outcome::Rejected {
                status: 400,
                why: "bad".into(),
            },
            message: None,
        };
        assert!(q.answered(&refused, Next::Drop, 1).log.is_some());
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        assert_eq!(text(&p), "2");
        q.answered(&ok(Some("1")), Next::Commit, 1);
        assert!(q.kept().is_empty(), "New keeps no id");
        assert!(q.is_empty());
    }

    #[test]
    fn pending_notices_are_bounded_by_dropping_the_oldest_new_one() {
        let mut q = Notices::default();
        for i in 0..MAX_PENDING + 5 {
            q.push(n(&format!("k{i}"), &i.to_string(), Policy::New));
        }
        assert_eq!(q.queue.len(), MAX_PENDING);
        let (_, p) = q.next(Instant::now()).unwrap();
        assert_eq!(text(&p), "5");
    }

    #[test]
    fn stopping_sends_what_waits_for_its_interval() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(upsert("k", "1"));
        q.next(t0).unwrap();
        q.answered(&ok(Some("1")), Next::Commit, 1);
        q.push(upsert("k", "2"));
        assert!(q.next(t0).is_none());
        q.hurry();
        assert!(q.next(t0).is_some());
    }

    #[test]
    fn the_state_file_round_trips_and_forgets_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let k = |closed, at| Kept {
            id: Snowflake::parse("12"),
            closed,
            at,
            thread: None,
        };
        let now = 10 * 24 * 3600;
        let mut saved = Saved::new();
        saved.insert(
            route_id("https://x/api/webhooks/1/t"),
            BTreeMap::from([
                ("open".to_string(), k(false, now - 3600)),
                ("closed-recent".to_string(), k(true, now - 3600)),
                ("closed-old".to_string(), k(true, now - 2 * 24 * 3600)),
                ("open-ancient".to_string(), k(false, now - 8 * 24 * 3600)),
            ]),
        );
        let state = State {
            kept: saved,
            ..State::default()
        };
        save(&path, state, now).unwrap();
        let back = load(&path);
        let keys: Vec<&String> = back.kept.values().flat_map(|m| m.keys()).collect();
        assert_eq!(keys, ["closed-recent", "open"]);
        assert!(!path.with_extension("tmp").exists());
        assert!(
            !String::from_utf8(std::fs::read(&path).unwrap())
                .unwrap()
                .contains("webhooks")
        );
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(load(&path), State::default());
    }

    use crate::testing::Rng;

    /// Discord's answer to a request, read as the client reads it, and
    /// what the route decides for a notice (the one place that says what
    /// an HTTP answer means).
    fn answer(status: u16, body: &str, sent: &Request, id: u64) -> (Reply, Next) {
        let mut reply = crate::discord::read_reply(sent, status, RateInfo::default(), None, body);
        if matches!(reply.outcome, Outcome::Delivered(_)) && sent.answers_message() {
            reply.message = Some(Posted {
                id: Snowflake::parse(&id.to_string()).unwrap(),
                channel_id: Snowflake::parse("7").unwrap(),
                attachments: vec![],
            });
        }
        let t = Instant::now();
        let mut route =
            super::super::Route::new("hook".into(), Duration::ZERO, 3, t, Box::new(|| 0.5));
        route.sent(t);
        let next = route
            .answer(&reply.outcome, super::super::Shape::Whole, t)
            .next;
        (reply, next)
    }

    #[test]
    fn every_structure_stays_bounded_over_a_long_random_night_with_outages() {
        for seed in [1u64, 0xdead_beef, 42_4242] {
            let mut rng = Rng(seed);
            let t0 = Instant::now();
            let mut q = Notices::default();
            let mut clock = Duration::ZERO;
            let mut wall = 1_000_000u64;
            let mut down = false;
            let mut ids = 100u64;
            let mut finals_pushed = 0usize;
            let mut finals_delivered = 0usize;
            for step in 0..12_000u64 {
                if step % 700 == 0 {
                    down = rng.below(2) == 0;
                }
                clock += Duration::from_millis(1000 + rng.below(2000));
                wall += 10;
                let now = t0 + clock;
                for _ in 0..rng.below(4) {
                    let k = rng.below(5000);
                    let notice = match rng.below(10) {
                        0..=3 => n(&format!("silence/{step}"), "s", Policy::New),
                        4..=8 => upsert(&format!("incident/{k}"), "u"),
                        _ => {
                            finals_pushed += 1;
                            n(&format!("incident/{k}"), "f", Policy::Final)
                        }
                    };
                    q.push(notice);
                }
                if let Some((req, _)) = q.next(now) {
                    let policy = q.flight.as_ref().unwrap().item.notice.policy;
                    let (status, body) = if down {
                        [(503, ""), (429, r#"{"retry_after": 1}"#), (502, "")]
                            [rng.below(3) as usize]
                    } else {
                        [
                            (200, r#"{"id": "1", "channel_id": "7"}"#),
                            (200, r#"{"id": "1", "channel_id": "7"}"#),
                            (200, r#"{"id": "1", "channel_id": "7"}"#),
                            (400, ""),
                            (413, ""),
                            (404, r#"{"code": 10008, "message": "Unknown Message"}"#),
                        ][rng.below(6) as usize]
                    };
                    ids += 1;
                    let (reply, next) = answer(status, body, &req, ids);
                    if next == Next::Commit && policy == Policy::Final {
                        finals_delivered += 1;
                    }
                    q.answered(&reply, next, wall);
                }
                assert!(
                    q.len() <= MAX_PENDING,
                    "seed {seed} step {step}: {}",
                    q.len()
                );
                assert!(q.kept.len() <= MAX_KEPT, "seed {seed}: {}", q.kept.len());
                assert!(
                    step % 97 != 0 || q.kept.values().all(|k| alive(k, wall)),
                    "seed {seed}: a key past its TTL"
                );
                // One send per step at most, a step is a second at least:
                // the send times cover one 30 s interval.
                assert!(
                    q.last_sent.len() <= 32,
                    "seed {seed}: {}",
                    q.last_sent.len()
                );
            }
            assert!(
                q.kept.len() > MAX_KEPT / 2,
                "the cap was reached: {}",
                q.kept.len()
            );
            assert!(finals_delivered > 0 && finals_pushed > finals_delivered);
        }
    }

    #[test]
    fn a_full_queue_drops_a_new_one_then_the_oldest_update_a_final_last_logged_once() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        let mut logs = Vec::new();
        logs.push(q.push(n("silence/1", "s", Policy::New)));
        for i in 0..MAX_PENDING / 2 {
            logs.push(q.push(n(&format!("f{i}"), "f", Policy::Final)));
        }
        for i in 0..MAX_PENDING / 2 - 1 {
            logs.push(q.push(upsert(&format!("u{i}"), "u")));
        }
        assert_eq!(q.len(), MAX_PENDING);
        assert!(logs.iter().all(Option::is_none));
        // Full: the New one goes first, then the oldest updates.
        let first = q.push(upsert("u-late", "u"));
        let (level, text) = first.expect("the first drop is logged");
        assert_eq!(level, log::Level::Warn);
        assert!(text.contains("silence/1"), "{text}");
        assert!(q.push(upsert("u-later", "u")).is_none(), "once per streak");
        assert!(q.push(n("f-late", "f", Policy::Final)).is_none());
        let keys: Vec<&str> = q.queue.iter().map(|i| i.notice.key.as_str()).collect();
        assert_eq!(q.len(), MAX_PENDING);
        assert!(!keys.contains(&"silence/1"));
        assert!(
            !keys.contains(&"u0") && !keys.contains(&"u1"),
            "the oldest updates"
        );
        assert!(keys.contains(&"u2") && keys.contains(&"u-later"));
        assert!(
            (0..MAX_PENDING / 2).all(|i| keys.contains(&format!("f{i}").as_str())),
            "no Final lost while an update could go instead"
        );
        // An update of a waiting key replaces it: nothing is dropped.
        assert!(q.push(upsert("u5", "newer")).is_none());
        assert_eq!(q.dropped, 3);
        // Only Finals left: the oldest Final goes, never more than the cap.
        let mut only = Notices::default();
        for i in 0..=MAX_PENDING {
            only.push(n(&format!("f{i}"), "f", Policy::Final));
        }
        assert_eq!(only.len(), MAX_PENDING);
        assert_eq!(only.queue[0].notice.key, "f1");
        // The streak ends when the queue has room again: the count is told.
        let mut told = None;
        let mut t = t0;
        while q.len() >= MAX_PENDING / 2 - 1 {
            t += Duration::from_secs(60);
            let (req, _) = q.next(t).unwrap();
            let (reply, next) = answer(200, r#"{"id": "5", "channel_id": "7"}"#, &req, 5);
            let out = q.answered(&reply, next, 1);
            if out.log.is_some() {
                told = out.log;
            }
        }
        let (_, text) = told.expect("the streak's count");
        assert!(text.starts_with("3 notices were dropped"), "{text}");
    }

    #[test]
    fn send_times_are_kept_only_for_updates_and_only_as_long_as_an_interval() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        for i in 0..50 {
            q.push(n(&format!("silence/{i}"), "s", Policy::New));
            let (req, _) = q.next(t0).unwrap();
            let (reply, next) = answer(200, r#"{"id": "5", "channel_id": "7"}"#, &req, 5);
            q.answered(&reply, next, 1);
        }
        assert!(q.last_sent.is_empty(), "a New key is never edited");
        q.push(upsert("inc", "1"));
        let (req, _) = q.next(t0).unwrap();
        let (reply, next) = answer(200, r#"{"id": "5", "channel_id": "7"}"#, &req, 5);
        q.answered(&reply, next, 1);
        assert!(q.last_sent.contains_key("inc"));
        // A Final closes the key: its send time goes with it.
        q.push(n("inc", "done", Policy::Final));
        let (req, _) = q.next(t0 + Duration::from_secs(1)).unwrap();
        let (reply, next) = answer(200, r#"{"id": "5", "channel_id": "7"}"#, &req, 5);
        q.answered(&reply, next, 2);
        assert!(q.last_sent.is_empty());
        // An open key's send time goes once the interval is over.
        q.push(upsert("other", "1"));
        q.next(t0).unwrap();
        let (reply, next) = answer(200, r#"{"id": "6", "channel_id": "7"}"#, &Request::PLAIN, 6);
        q.answered(&reply, next, 3);
        assert!(q.last_sent.contains_key("other"));
        q.push(n("x", "x", Policy::New));
        q.next(t0 + Duration::from_secs(31)).unwrap();
        assert!(q.last_sent.is_empty());
    }

    #[test]
    fn an_unexplained_4xx_is_tried_three_times_a_5xx_as_long_as_it_lasts() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(upsert("incident/storm", "u"));
        let mut logs = Vec::new();
        for _ in 0..MAX_TRIES {
            let (req, _) = q.next(t0).expect("tried again");
            let (reply, next) = answer(400, "<html>bad request</html>", &req, 5);
            assert_eq!(next, Next::Again);
            logs.push(q.answered(&reply, next, 1).log);
        }
        assert!(q.is_empty(), "dropped after {MAX_TRIES} tries");
        let (level, text) = logs.pop().unwrap().expect("one warning");
        assert_eq!(level, log::Level::Warn);
        assert!(text.contains("\"incident/storm\""), "names the key: {text}");
        assert!(logs.iter().all(Option::is_none), "{logs:?}");
        // A 5xx or a rate limit never drops it.
        q.push(n("silence/1", "s", Policy::New));
        for i in 0..50 {
            let (req, _) = q.next(t0).expect("still there");
            let (status, body) = [(503, ""), (429, r#"{"retry_after": 1}"#), (408, "")][i % 3];
            let (reply, next) = answer(status, body, &req, 5);
            assert!(q.answered(&reply, next, 1).log.is_none());
        }
        let (req, _) = q.next(t0).unwrap();
        let (reply, next) = answer(204, "", &req, 5);
        q.answered(&reply, next, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn a_body_discord_refuses_as_too_large_or_invalid_is_dropped_at_once() {
        let t0 = Instant::now();
        let too_long = r#"{"code": 50035, "message": "Invalid Form Body", "errors": {"embeds": {"0": {"description": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "too long"}]}}}}}"#;
        for (status, body) in [
            (413, ""),
            (400, too_long),
            (
                400,
                r#"{"code": 50006, "message": "Cannot send an empty message"}"#,
            ),
            (
                400,
                r#"{"code": 40005, "message": "Request entity too large"}"#,
            ),
        ] {
            let mut q = Notices::default();
            q.push(n("summary", "s", Policy::Final));
            let (req, _) = q.next(t0).unwrap();
            let (reply, next) = answer(status, body, &req, 5);
            assert_eq!(next, Next::Drop, "{status} {body}");
            assert!(q.answered(&reply, next, 1).log.is_some());
            assert!(q.is_empty(), "{status} {body}: not retried");
        }
    }

    #[test]
    fn kept_keys_are_pruned_by_their_ttl_and_capped_closed_ones_first() {
        let mut q = Notices::default();
        let t = |i: usize| Snowflake::parse(&(i + 1).to_string());
        for i in 0..MAX_KEPT + 10 {
            q.kept.insert(
                format!("k{i}"),
                Kept {
                    id: t(i),
                    closed: i % 2 == 0,
                    at: 1_000_000 + i as u64,
                    thread: None,
                },
            );
        }
        q.kept.insert(
            "ancient".into(),
            Kept {
                id: t(0),
                closed: false,
                at: 0,
                thread: None,
            },
        );
        assert!(q.remember("forum-thread:x", t(5), 1_000_000 + 2000));
        assert_eq!(q.kept.len(), MAX_KEPT * 9 / 10);
        assert!(!q.kept.contains_key("ancient"), "past its TTL");
        assert!(!q.kept.contains_key("k0") && !q.kept.contains_key("k20"));
        assert!(
            q.kept.contains_key("k1"),
            "open ones stay while closed ones can go"
        );
        assert!(q.kept.contains_key("forum-thread:x"));
    }

    #[test]
    fn waiting_notices_survive_a_stop_with_their_files_cut_and_old_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let t0 = Instant::now();
        let mut q = Notices::default();
        let mut alert = n("silence/1", "silent", Policy::New);
        let lines: Vec<String> = (0..20_000).map(|i| format!("line {i}")).collect();
        alert.files = vec![crate::notice::context_file(
            "ekos.txt",
            lines.iter().map(String::as_str),
        )];
        q.push(alert);
        q.push(upsert("card", "card"));
        q.push(n("summary", "summary", Policy::Final));
        // The first is in flight when the sender stops: saved too.
        q.next(t0).unwrap();
        let pending = q.pending();
        assert_eq!(pending.len(), 3);
        let state = State {
            kept: Saved::from([(
                "r".into(),
                BTreeMap::from([(
                    "card".into(),
                    Kept {
                        id: Snowflake::parse("9"),
                        closed: false,
                        at: 100,
                        thread: Snowflake::parse("77"),
                    },
                )]),
            )]),
            pending: BTreeMap::from([("r".into(), pending)]),
            version: 0,
        };
        save(&path, state, 200).unwrap();
        let mut back = load(&path);
        assert_eq!(back.version, 2);
        let mut q = Notices::with_kept(back.kept.remove("r").unwrap().into_iter().collect());
        q.restore(3, back.pending.remove("r").unwrap());
        let (req, p) = q.next(t0).unwrap();
        assert!(matches!(req, Request::Post { .. }));
        assert!(p.content_type.starts_with("multipart/"), "with its file");
        let first = &q.flight.as_ref().unwrap().item.notice;
        assert_eq!((first.route, first.key.as_str()), (3, "silence/1"));
        let data = &first.files[0].data;
        assert!(data.len() <= SAVED_FILE_BYTES);
        assert!(data.starts_with(b"line ") && data.ends_with(b"line 19999\n"));
        q.answered(&ok(Some("5")), Next::Commit, 201);
        let (req, p) = q.next(t0).unwrap();
        assert_eq!(
            req,
            Request::Edit {
                id: Snowflake::parse("9").unwrap(),
                thread: Snowflake::parse("77")
            },
            "the card is edited where it is"
        );
        assert_eq!(text(&p), "card");
        q.answered(&ok(Some("9")), Next::Commit, 202);
        let (_, p) = q.next(t0).unwrap();
        assert_eq!(text(&p), "summary");
        assert_eq!(q.flight.as_ref().unwrap().item.notice.policy, Policy::Final);

        // A file written by the previous version: the bare table.
        std::fs::write(
            &path,
            r#"{"0123456789abcdef": {"incident/x": {"id": "12", "closed": false, "at": 5}}}"#,
        )
        .unwrap();
        let old = load(&path);
        assert_eq!(
            old.kept["0123456789abcdef"]["incident/x"].id,
            Snowflake::parse("12")
        );
        assert!(old.pending.is_empty());
    }

    #[test]
    fn a_message_posted_in_a_thread_is_edited_in_that_thread() {
        let t0 = Instant::now();
        let mut q = Notices::default();
        q.push(upsert("incident/a", "1"));
        q.next(t0).unwrap();
        // The forum route put the post into last night's thread.
        q.placed(&Request::Post {
            thread: Thread::In(Snowflake::parse("500").unwrap()),
            wait: true,
        });
        q.answered(&ok(Some("61")), Next::Commit, 1);
        assert_eq!(q.kept()["incident/a"].thread, Snowflake::parse("500"));
        q.push(upsert("incident/a", "2"));
        let (req, _) = q.next(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(
            req,
            Request::Edit {
                id: Snowflake::parse("61").unwrap(),
                thread: Snowflake::parse("500"),
            }
        );
        q.answered(&ok(Some("61")), Next::Commit, 2);
        assert_eq!(q.kept()["incident/a"].thread, Snowflake::parse("500"));
        // A post that opens the night's thread: the answer names it.
        q.push(upsert("incident/b", "1"));
        q.next(t0).unwrap();
        q.placed(&Request::Post {
            thread: Thread::Open("Night".into()),
            wait: true,
        });
        let opened = Reply {
            outcome: Outcome::Delivered(RateInfo::default()),
            message: Some(Posted {
                id: Snowflake::parse("70").unwrap(),
                channel_id: Snowflake::parse("600").unwrap(),
                attachments: vec![],
            }),
        };
        q.answered(&opened, Next::Commit, 3);
        assert_eq!(q.kept()["incident/b"].thread, Snowflake::parse("600"));
        // Outside a forum: no thread.
        q.push(upsert("incident/c", "1"));
        q.next(t0).unwrap();
        q.answered(&ok(Some("80")), Next::Commit, 3);
        assert_eq!(q.kept()["incident/c"].thread, None);
    }

    #[test]
    fn the_next_slot_alternates_notices_and_waiting_lines() {
        assert!(notice_turn(true, false, 99), "no line waits: a notice goes");
        assert!(notice_turn(true, true, 0));
        assert!(notice_turn(true, true, NOTICE_BURST - 1));
        assert!(
            !notice_turn(true, true, NOTICE_BURST),
            "then a line message"
        );
        assert!(!notice_turn(false, true, 0));
    }
}
