//! The night watch: the thread that reads along with the watcher and writes
//! the daemon's own messages ([`Notice`]s): the silence alarm, incidents
//! (repeats of one rule folded into one edited message, with the context
//! lines of an error attached), `[[expect]]` deadlines ([`expect`]), the
//! night card ([`card`]) and, through the session model, the state shown
//! in `STATUS=`.
//!
//! ```text
//! watcher ──(Seen: copies of the lines it read, non-blocking)──► night-watch
//! night-watch ──(Notice, bounded)──► sender: the route's notice lane
//! ```
//!
//! The watcher hands it a copy of every chunk it reads ([`Tap::offer`]),
//! all sources, with the events the watcher already classified (no line is
//! classified twice), by `try_send`: when the night watch is behind (a
//! large catch-up), the copy is dropped and counted rather than slowing the
//! watcher, and a dropped copy counts as activity for the silence alarm.
//! The channel is bounded in chunks ([`SEEN_CHANNEL`]) and in bytes of
//! text ([`SEEN_BYTES`]), so a catch-up of long lines cannot queue 64
//! chunks of 256 KiB. While a route is held up (Discord slow, rate-limited
//! or down) the watcher does not read its files, but still tells the night
//! watch when the Ekos log grows ([`Tap::grew`]): the log is not silent
//! because its webhook is.
//! The decisions are pure ([`Watch`], over [`silence`], [`incidents`],
//! [`expect`] and [`card`]), fed with the times of an injectable [`Clock`],
//! so they are tested in simulated time; [`NightWatch::run`] is the thin
//! actor around them. The night card is driven the way [`card::replay`]
//! drives it over a past log, with arrival times instead of the lines'
//! timestamps, and the silences the silence alarm reported.
//!
//! # Across a restart
//!
//! A restart (a stop, a crash and systemd's `Restart=`, `kill -9`, a
//! reload) must not lose the night: the whole state of the watch is saved
//! to [`FILE`] ([`State`]): open incidents, `[[expect]]` states, the
//! session model, the silence alarm and the night card's numbers. The
//! session model is saved rather than rebuilt by replaying the end of the
//! Ekos log: KStars starts a new log file per session and the daemon may
//! have been down across that, the counts of a night reach back further
//! than any tail worth reading, and lines replayed would be counted twice
//! with those already counted. Times in the state are wall-clock or the
//! night watch's monotonic milliseconds; the latter continue across a
//! restart (the new clock starts at the saved value plus the wall-clock
//! time the daemon was down), so saved arrival times stay comparable. The
//! daemon being down is not Ekos being silent: the silence alarm counts
//! from the restart ([`silence::Silence::restarted`]), and a line read back
//! at start is activity like any other. The card keeps its key (one per
//! night), so the sender's notice lane, whose message ids are saved in
//! `notices.json`, goes on editing the same message. `[[expect]]`
//! deadlines that passed while the daemon was down are judged once, after
//! [`RESTART_GRACE_MS`] (see [`expect`]).
//!
//! The checkpoint records what Discord accepted, not what was read: after
//! a crash or a reload the watcher reads again the lines Discord had not
//! accepted. The watch keeps, per file identity, where the last line it
//! observed ended ([`observed`], saved in the state), and skips the lines
//! read again, so nothing is counted twice.
//!
//! Saving: at once when something an alert depends on changed (an
//! incident opened or ended, an expectation met or judged, the card
//! opened or closed, a frame received, a silence reported or ended, work
//! started or stopped), otherwise (event counts, guiding state…) at most
//! every [`SOFT_SAVE_MS`], and at every stop. The write is atomic
//! (temporary file, fsync, rename). A file that cannot be read in part
//! (corrupt, or from another version) gives one warning and what could be
//! read is kept; the first format (a bare array of open incidents) loads
//! its incidents.

pub mod card;
pub mod expect;
pub mod incidents;
pub mod observed;
pub mod silence;
pub mod storms;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, never};

use crate::checkpoint::FileId;
use crate::config::Config;
use crate::ekos::Severity;
use crate::format::EventPart;
use crate::localtime::Local;
use crate::notice::{Alert, Notice, Policy, RESOLVED_COLOR, context_file, human, quoted_line};
use crate::service::{Control, Stats};
use crate::session::Session;
use crate::watcher::Chunk;

use card::{EndReason, NightSettings, NightStats};
use expect::{Expectation, Expectations};
use incidents::{Incident, Incidents, Occurrence};
use observed::Observed;
use silence::{Silence, Threshold};

/// How long after a session change the night watch sends a `STATUS=`
/// that [`Stats::publish`]'s rate limit held back.
const STATUS_FLUSH_MS: u64 = 250;
/// Capacity of the watcher → night-watch channel, in chunks: room for a
/// burst; beyond, copies are dropped (see [`Tap`]).
pub const SEEN_CHANNEL: usize = 64;
/// ... and in bytes of text in flight: 64 chunks of up to 256 KiB would be
/// 16 MiB on a Raspberry Pi; a copy that would pass this is dropped (and
/// counted) as when the channel is full.
pub const SEEN_BYTES: usize = 4 * 1024 * 1024;
/// Files whose last lines are kept for context attachments.
const CONTEXT_FILES: usize = 64;
/// Bytes kept per file for its context, and per line: a phone shows a
/// context attachment, not megabytes; with 64 files this bounds the rings
/// to 4 MiB whatever `context_lines` and the line lengths are.
const CONTEXT_BYTES: usize = 64 * 1024;
const CONTEXT_LINE_BYTES: usize = 2048;
/// Incidents off: least time between two context messages of one rule on
/// one route (see [`Watch::context_alone`]).
pub const CONTEXT_ALONE_GAP: Duration = Duration::from_secs(60);
/// The night watch's state file ([`State`]), in the state directory.
pub const FILE: &str = "nightwatch.json";
/// Version of [`State`] written (the first format, a bare array of open
/// incidents, has none).
pub const STATE_VERSION: u32 = 3;
/// After a restart with saved state, how long the lines read back (written
/// while the daemon was down) may come before `[[expect]]` deadlines passed
/// meanwhile are judged.
pub const RESTART_GRACE_MS: u64 = 30_000;
/// Changes no alert depends on (event counts, the guiding state…) are
/// saved at most this often; a crash loses at most that much of them.
pub const SOFT_SAVE_MS: u64 = 10_000;
/// Longest wait for a wall-clock deadline (`[[expect]]`, `night_end`): the
/// wait is computed on the wall clock, which may jump (daylight saving,
/// a clock set late); looking again this often bounds the error.
const WALL_WAIT_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum NightWatchError {
    #[error("cannot write {path}: {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// A copy of the lines of one chunk, for the night watch.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the source in the configuration.
    pub source: usize,
    /// Its route (webhook): where its notices go.
    pub route: usize,
    pub path: Arc<Path>,
    /// The file's identity for the checkpoint (a rewritten file gets a new
    /// one; a rotated copy read for the end of the old content keeps it).
    pub file: FileId,
    /// Per line, the offset just past it in the file: a line read again
    /// (after a crash or reload) is known by it ([`observed`]).
    pub ends: Vec<u64>,
    /// When the watcher read the lines.
    pub arrived: Instant,
    /// When the file was last modified, looked at just after the lines
    /// were read (wall-clock ms; the Ekos log only, else `None`): lines of
    /// a file not modified since a silence was reported were written
    /// before it and do not end it (see [`Watch::seen`]).
    pub modified_ms: Option<u64>,
    /// The lines, each ended by `\n`.
    pub text: String,
    /// Lines that are events: index of the line and the event (with its
    /// mention, which the line's own embed no longer carries).
    pub events: Vec<(usize, EventPart)>,
}

impl Seen {
    /// The lines, as `text.split_terminator('\n')` gives them, with one
    /// `memchr` per line instead of a generic pattern search.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        let mut rest = self.text.as_str();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let line;
            (line, rest) = match memchr::memchr(b'\n', rest.as_bytes()) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            Some(line)
        })
    }

    /// `self.lines().count()`, in one vectorised count of the newlines.
    pub fn line_count(&self) -> usize {
        let b = self.text.as_bytes();
        let unended = b.last().is_some_and(|&c| c != b'\n');
        memchr::memchr_iter(b'\n', b).count() + usize::from(unended)
    }

    /// The same copy without its first `k` lines.
    fn without_first(&self, k: usize) -> Seen {
        let at = match k {
            0 => 0,
            k => (self.text.match_indices('\n').nth(k - 1)).map_or(self.text.len(), |(i, _)| i + 1),
        };
        Seen {
            source: self.source,
            route: self.route,
            path: self.path.clone(),
            file: self.file,
            ends: self.ends.get(k..).unwrap_or_default().to_vec(),
            arrived: self.arrived,
            modified_ms: self.modified_ms,
            text: self.text[at..].to_string(),
            events: (self.events.iter())
                .filter(|(i, _)| *i >= k)
                .map(|(i, e)| (i - k, e.clone()))
                .collect(),
        }
    }
}

/// What the watcher's [`Tap`] and the night watch share besides the
/// channel: counters only, so the watcher never waits for the night watch.
#[derive(Debug, Default)]
pub struct TapCounters {
    /// Copies of Ekos chunks dropped because the night watch was behind.
    pub lost: AtomicU64,
    /// The latest modification time (wall ms) of the file of a dropped
    /// copy of the Ekos log (`u64::MAX` when unknown): lines dropped that
    /// were written before a silence do not end it.
    pub lost_modified: AtomicU64,
    /// Times the Ekos log was seen to grow while its route was held up
    /// and its lines were not read ([`Tap::grew`]).
    pub grew: AtomicU64,
    /// Bytes of text of the copies in the channel: added by the tap before
    /// it sends, taken off by the night watch as it receives (and for the
    /// copies left in the channel when it ends, see [`Drained`]).
    pub bytes: AtomicUsize,
}

/// The watcher's end of the channel: never blocks.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: Sender<Seen>,
    counters: Arc<TapCounters>,
    /// Most bytes of text in the channel ([`SEEN_BYTES`]).
    budget: usize,
    /// Incidents are on: an event of warning and above pings from its
    /// incident, not from its line's embed.
    incidents: bool,
    /// Only dropped copies of the Ekos log count (for the silence alarm).
    ekos_source: Option<usize>,
}

impl Tap {
    /// Copies the chunk's lines and events; once the night watch has the
    /// copy, takes the mention off the line embeds of events that incidents
    /// cover (the incident's first message carries it, once) and marks
    /// them `covered`: the incident goes to the alerts webhook too, so the
    /// sender copies no such line there. Never blocks: a copy the night
    /// watch has no room for is dropped and counted, and its events keep
    /// their mentions and alert copies (no incident will stand for them).
    /// `modified`: the file's modification time looked at after the read,
    /// for the Ekos log ([`Tap::wants_growth`]; `None` for other files).
    pub fn offer(&self, chunk: &mut Chunk, path: &Path, modified: Option<SystemTime>) {
        let mut text =
            String::with_capacity(chunk.lines.iter().map(|l| l.text.len() + 1).sum::<usize>());
        let mut ends = Vec::with_capacity(chunk.lines.len());
        for l in &chunk.lines {
            text.push_str(&l.text);
            text.push('\n');
            ends.push(l.end);
        }
        let mut events = Vec::new();
        for (i, shown) in chunk.shown.iter().enumerate() {
            if let Some(Some(ev)) = shown {
                events.push((i, ev.clone()));
            }
        }
        let seen = Seen {
            source: chunk.source,
            route: chunk.route,
            path: Arc::from(path),
            file: chunk.file,
            ends,
            arrived: Instant::now(),
            modified_ms: modified.map(wall_ms_of),
            text,
            events,
        };
        let ekos = self.ekos_source == Some(chunk.source);
        let modified = seen.modified_ms.unwrap_or(u64::MAX);
        let bytes = seen.text.len();
        let before = self.counters.bytes.fetch_add(bytes, Ordering::SeqCst);
        let sent = if before + bytes > self.budget {
            // As if the channel were full: the night watch is that far
            // behind.
            Err(TrySendError::Full(()))
        } else {
            self.tx.try_send(seen).map_err(|e| match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            })
        };
        if sent.is_err() {
            self.counters.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
        match sent {
            Ok(()) if self.incidents => {
                for ev in chunk.shown.iter_mut().flatten().flatten() {
                    if ev.severity >= Severity::Warning {
                        ev.mention = None;
                        ev.covered = true;
                    }
                }
            }
            Ok(()) => {}
            Err(TrySendError::Full(_)) if ekos => {
                self.counters
                    .lost_modified
                    .fetch_max(modified, Ordering::SeqCst);
                // After the time: whoever sees the count sees the time.
                self.counters.lost.fetch_add(1, Ordering::SeqCst);
            }
            // Full for another source, or the night watch is gone.
            Err(_) => {}
        }
    }

    /// Whether the file's growth matters to the night watch (the Ekos
    /// log's): the watcher spares the `fstat` for other files.
    pub fn wants_growth(&self, source: usize) -> bool {
        self.ekos_source == Some(source)
    }

    /// The watcher saw a file of `source` grow that it cannot read now (its
    /// route is held up): for the silence alarm the Ekos log is writing.
    /// One atomic increment: no copy, no allocation.
    pub fn grew(&self, source: usize) {
        if self.wants_growth(source) {
            self.counters.grew.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The night watch's end of the channel: whatever is left in it when the
/// night watch ends (a stop, a panic) is taken out and its bytes given
/// back, so the count never stays up.
struct Drained {
    rx: Receiver<Seen>,
    counters: Arc<TapCounters>,
}

impl Drained {
    /// A copy was received: its bytes are no longer in flight.
    fn took(&self, seen: &Seen) {
        self.counters
            .bytes
            .fetch_sub(seen.text.len(), Ordering::SeqCst);
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        while let Ok(seen) = self.rx.try_recv() {
            self.took(&seen);
        }
    }
}

/// Times for the night watch, injectable for tests.
pub trait Clock: Send {
    /// Monotonic milliseconds: line arrivals and the silence alarm.
    fn now_ms(&self) -> u64;
    /// The same clock at `t` (when the watcher read a line).
    fn at_ms(&self, t: Instant) -> u64;
    /// Wall-clock milliseconds since the epoch: incident times (shown and
    /// saved across restarts).
    fn wall_ms(&self) -> u64;
}

/// The real clocks.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn at_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0).as_millis() as u64
    }
    fn wall_ms(&self) -> u64 {
        wall_ms_of(SystemTime::now())
    }
}

/// The night watch's settings, from the [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The source whose log is the Ekos log (the one named `ekos`).
    pub ekos_source: Option<usize>,
    pub silence: Threshold,
    /// Zero: incidents off.
    pub incident_window: Duration,
    /// Lines before an alert attached to it (0: none).
    pub context_lines: usize,
    /// Where open incidents are saved (`None`: a dry run).
    pub state_file: Option<PathBuf>,
    /// `[[expect]]` tables.
    pub expect: Vec<Expectation>,
    /// Per expectation, the route its alerts go to until a line of its file
    /// is seen (then that file's route): the first source whose patterns
    /// take its file, a script source before the Ekos one (whose default
    /// `*.log` takes most names), else route 0.
    pub expect_routes: Vec<usize>,
    /// `night_start`, `night_end`.
    pub night: NightSettings,
    /// `night_card`: off, no card is posted.
    pub card: bool,
    /// Per source, when a storm of one warning becomes an incident
    /// ([`storms`]: incidents on, `events` not off): the filter of the
    /// lines it posts (a warning it drops is no storm either). Empty: none.
    pub warning_storms: Vec<Option<crate::ekos::Filter>>,
    /// The alerts webhook's route and least severity: incidents of that
    /// severity are posted there too ([`incidents::alerts_copy`]).
    pub alerts: Option<(usize, Severity)>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let ekos_source = cfg.sources.iter().position(|s| s.name == "ekos");
        let by_preference: Vec<&crate::config::Source> = (cfg.sources.iter().enumerate())
            .filter(|(i, _)| Some(*i) != ekos_source)
            .chain(
                cfg.sources
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) == ekos_source),
            )
            .map(|(_, s)| s)
            .collect();
        Settings {
            ekos_source,
            silence: cfg.silence_after,
            incident_window: cfg.incident_window,
            context_lines: cfg.context_lines,
            state_file: None,
            expect: cfg.expect.clone(),
            expect_routes: cfg
                .expect
                .iter()
                .map(|e| {
                    by_preference
                        .iter()
                        .find(|s| e.may_be_of(s))
                        .map_or(0, |s| s.route)
                })
                .collect(),
            night: cfg.night,
            card: cfg.night_card,
            warning_storms: (cfg.sources.iter())
                .map(|s| {
                    let on =
                        !cfg.incident_window.is_zero() && s.events != crate::format::EventMode::Off;
                    on.then(|| s.filter.clone())
                })
                .collect(),
            alerts: cfg.alerts,
        }
    }
}

/// Wall-clock milliseconds since the epoch at `t` (0 before it).
fn wall_ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local wall clock at `wall` milliseconds since the epoch.
fn local(wall: u64) -> Local {
    Local::from_unix((wall / 1000) as i64)
}

/// The wall-clock milliseconds (at or after `wall`) at which the local
/// clock has passed `t`, at most [`WALL_WAIT_MS`] ahead.
fn wall_after(wall: u64, t: Local) -> u64 {
    let secs = t.since(local(wall)).max(0) as u64 + 1;
    (wall - wall % 1000 + secs * 1000).min(wall + WALL_WAIT_MS)
}

/// While a silence raised at `alarm` (wall ms) after `quiet` is reported:
/// a file modified after the returned time holds a line written after the
/// silence began, one not modified since holds only older lines (the
/// backlog of a Discord outage). Not the alarm's own time: a file's
/// modification time comes from the kernel's coarse clock, up to a tick
/// (4 ms at 250 Hz, more on a loaded virtual machine) behind the clock
/// the alarm read, so a line written just after the alarm could look
/// older than it. Halfway through the quiet nothing was written (that is
/// why it is a silence), so the halfway point tells the two apart with
/// room on both sides.
fn new_after(alarm: u64, quiet: Duration) -> u64 {
    alarm.saturating_sub(quiet.as_millis() as u64 / 2)
}

/// The pure core: the session, the silence alarm, incidents and the last
/// lines of each file, fed lines and ticks with their times.
pub struct Watch {
    settings: Settings,
    session: Session,
    silence: Silence,
    incidents: Incidents,
    storms: storms::Storms,
    /// Per file: its last `context_lines` lines; the least recently
    /// written file is forgotten beyond [`CONTEXT_FILES`].
    context: HashMap<Arc<Path>, (u64, VecDeque<String>)>,
    context_clock: u64,
    /// Route of the Ekos source (where its silence alarm and card go).
    ekos_route: usize,
    /// The Ekos file last written: the silence alarm's context.
    ekos_path: Option<Arc<Path>>,
    expectations: Expectations,
    expect_routes: Vec<usize>,
    /// The night card running.
    card: Option<NightStats>,
    /// The last night the log ended (parked, scheduler done, shut down):
    /// work again in the same night resumes its numbers.
    ended: Option<NightStats>,
    /// When the silence reported began, on the wall clock (for the card).
    silence_from: Option<Local>,
    /// Something changed since the last save that can wait a little.
    soft: bool,
    /// [`Watch::marks`] at the last save.
    saved_marks: Option<Marks>,
    /// Per file, the end of the last line observed: lines read again are
    /// skipped ([`observed`]).
    observed: Observed,
    /// While a silence is reported (wall ms): only a file modified after
    /// this ends it (see [`Watch::silence_line`] and [`new_after`]).
    silence_new_after: Option<u64>,
    /// Incidents off: when the context of an alert of each rule and route
    /// was last posted on its own ([`Watch::context_alone`]).
    context_sent: HashMap<(usize, String), u64>,
}

/// What must be saved at once when it changes (see [`Watch::dirty`]).
#[derive(Debug, Clone, PartialEq)]
struct Marks {
    incidents: u64,
    expect: u64,
    expect_routes: Vec<usize>,
    card: Option<(i64, u32, usize)>,
    ended: Option<i64>,
    silence: Option<u64>,
    work: bool,
    frames: u32,
    exposing: bool,
}

/// How urgently the state should be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    Clean,
    /// Within [`SOFT_SAVE_MS`].
    Soft,
    /// Now: an alert depends on it.
    Hard,
}

/// The night watch's saved state ([`FILE`]): everything a restart must not
/// lose. Monotonic times in it are on the night watch's clock at
/// `mono_ms` (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct State {
    pub version: u32,
    /// When it was saved: wall-clock and monotonic milliseconds.
    pub wall_ms: u64,
    pub mono_ms: u64,
    pub incidents: Vec<Incident>,
    pub expect: Vec<expect::Saved>,
    /// Per expectation (by id), the route its alerts go to as learnt.
    pub expect_routes: Vec<(String, usize)>,
    pub session: Session,
    pub silence: Silence,
    pub silence_from: Option<Local>,
    pub card: Option<NightStats>,
    pub ended: Option<NightStats>,
    /// Per file, the end of the last line observed (absent before
    /// version 3: nothing is skipped).
    pub observed: Observed,
    /// While a silence is reported: a file modified after this (wall ms)
    /// was written after the silence began ([`new_after`]). Saved as
    /// `silence_alarm_wall` (the alarm's own time) by the first versions
    /// of format 3, read as such; absent before format 3: any line ends it.
    pub silence_new_after: Option<u64>,
}

impl State {
    /// Reads a saved state, keeping what can be read: returns it and what
    /// could not be read (for one warning). The first format, a bare array
    /// of open incidents, gives its incidents.
    pub fn parse(bytes: &[u8]) -> (State, Vec<String>) {
        use serde_json::Value;
        let mut problems = Vec::new();
        let mut state = State::default();
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("not readable ({e})"));
                return (state, problems);
            }
        };
        fn each<T: serde::de::DeserializeOwned>(
            v: Value,
            what: &str,
            problems: &mut Vec<String>,
        ) -> Vec<T> {
            let Value::Array(items) = v else {
                problems.push(format!("{what}: not a list"));
                return Vec::new();
            };
            let n = items.len();
            let kept: Vec<T> = items
                .into_iter()
                .filter_map(|i| serde_json::from_value(i).ok())
                .collect();
            if kept.len() < n {
                problems.push(format!("{what}: {} of {n} unreadable", n - kept.len()));
            }
            kept
        }
        match value {
            Value::Array(_) => state.incidents = each(value, "incidents", &mut problems),
            Value::Object(mut map) => {
                let mut field = |name: &str| map.remove(name).filter(|v| !v.is_null());
                macro_rules! take {
                    ($name:ident) => {
                        if let Some(v) = field(stringify!($name)) {
                            match serde_json::from_value(v) {
                                Ok(x) => state.$name = x,
                                Err(e) => problems.push(format!("{}: {e}", stringify!($name))),
                            }
                        }
                    };
                }
                take!(version);
                take!(wall_ms);
                take!(mono_ms);
                if let Some(v) = field("incidents") {
                    state.incidents = each(v, "incidents", &mut problems);
                }
                if let Some(v) = field("expect") {
                    state.expect = each(v, "expect", &mut problems);
                }
                take!(expect_routes);
                take!(session);
                take!(silence);
                take!(silence_from);
                take!(card);
                take!(ended);
                take!(observed);
                take!(silence_new_after);
                if state.silence_new_after.is_none() {
                    // Format 3 as first written: the alarm's time (stricter
                    // by a tick of the file clock, which is all it missed).
                    state.silence_new_after =
                        field("silence_alarm_wall").and_then(|v| serde_json::from_value(v).ok());
                }
                if state.version > STATE_VERSION {
                    problems.push(format!(
                        "written by a newer version (format {})",
                        state.version
                    ));
                }
            }
            _ => problems.push("not a saved state".into()),
        }
        (state, problems)
    }
}

impl Watch {
    pub fn new(settings: Settings, ekos_route: usize) -> Watch {
        Watch {
            incidents: Incidents::new(settings.incident_window).with_alerts(settings.alerts),
            storms: storms::Storms::new(settings.incident_window),
            expectations: Expectations::new(settings.expect.clone()),
            expect_routes: settings.expect_routes.clone(),
            card: None,
            ended: None,
            silence_from: None,
            settings,
            session: Session::new(),
            silence: Silence::default(),
            context: HashMap::new(),
            context_clock: 0,
            ekos_route,
            ekos_path: None,
            soft: false,
            saved_marks: None,
            observed: Observed::default(),
            silence_new_after: None,
            context_sent: HashMap::new(),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn incidents(&self) -> &Incidents {
        &self.incidents
    }

    /// The night card running, if any.
    pub fn card(&self) -> Option<&NightStats> {
        self.card.as_ref()
    }

    /// The watch begins at `wall`: `[[expect]]` deadlines already passed
    /// are not judged (their lines may have been written unseen).
    pub fn start(&mut self, wall: u64) {
        let missed = self.expectations.due(local(wall));
        debug_assert!(missed.is_empty(), "the first look judges nothing");
    }

    fn expect_notices(&self, alerts: Vec<expect::Alert>, out: &mut Vec<Notice>) {
        for a in alerts {
            out.push(a.notice(self.expect_routes.get(a.index).copied().unwrap_or(0)));
        }
    }

    /// A line of the Ekos log was observed at `now`: the card starts,
    /// counts it, or ends. Returns whether the live card changed.
    fn card_line(&mut self, now: Local, event: Option<Severity>, out: &mut Vec<Notice>) -> bool {
        let night = self.settings.night;
        if let Some(n) = self.card.as_mut() {
            n.after_line(&self.session, now);
            if let Some(s) = event {
                n.event(s);
            }
            return match card::night_over(&self.session, n, now, &night) {
                Some(reason) => {
                    self.close_card(reason, now, out);
                    false
                }
                None => true,
            };
        }
        if !self.settings.card || !self.session.work_in_progress() {
            return false;
        }
        let day = card::night_of(now, night.start);
        if now >= night.end_of(day) {
            // Past night_end: this night is over by the clock; the next
            // one begins at night_start.
            return false;
        }
        let mut n = match self.ended.take() {
            Some(prev) if prev.night == day => prev,
            _ => NightStats::new(day, now, &self.session),
        };
        n.after_line(&self.session, now);
        if let Some(s) = event {
            n.event(s);
        }
        self.card = Some(n);
        true
    }

    /// The night is over: its summary goes at once, in place of the card.
    fn close_card(&mut self, reason: EndReason, now: Local, out: &mut Vec<Notice>) {
        let Some(n) = self.card.take() else {
            return;
        };
        let end = match reason {
            EndReason::NextNight | EndReason::NightEnd => {
                now.min(self.settings.night.end_of(n.night))
            }
            _ => now,
        };
        out.push(card::summary_notice(
            self.ekos_route,
            &self.session,
            &n,
            end,
            reason,
        ));
        // A night the clock ended stays over; one the log ended resumes
        // if the scheduler starts again before the night is out.
        self.ended = matches!(
            reason,
            EndReason::Shutdown | EndReason::Parked | EndReason::SchedulerDone
        )
        .then_some(n);
    }

    /// A silence of the Ekos log ended after `quiet`, at `wall`.
    fn silence_ended(&mut self, quiet: Duration, wall: u64) -> Notice {
        self.silence_new_after = None;
        let at = self
            .silence_from
            .take()
            .unwrap_or_else(|| local(wall.saturating_sub(quiet.as_millis() as u64)));
        if let Some(n) = self.card.as_mut() {
            n.silence(card::Silence {
                at,
                duration: quiet,
            });
        }
        self.writing_again(quiet)
    }

    /// A line of the Ekos log arrived: activity for the silence alarm, and
    /// the end of a silence reported, unless its file was not modified
    /// since the silence began ([`new_after`]). Then the line was written
    /// before (the backlog of a Discord outage, read only now that the
    /// webhook takes lines again) and says nothing about Ekos now: the
    /// silence goes on, its arrival time is not activity, and it is ended
    /// by a line of a file modified since or by the log growing
    /// ([`Watch::log_grew`]). The modification time is read after the
    /// lines (see [`Seen::modified_ms`]): a file not modified since holds
    /// no line written after; one that was may still give old lines
    /// first, but then Ekos did write again. A copy without a time (or a
    /// silence saved by an older version) ends it as before.
    fn silence_line(
        &mut self,
        seen: &Seen,
        arrived_ms: u64,
        line: &str,
        wall: u64,
    ) -> Option<Notice> {
        let old = match (seen.modified_ms, self.silence_new_after) {
            (Some(m), Some(after)) => self.silence.reported().is_some() && m <= after,
            _ => false,
        };
        if old {
            return None;
        }
        let quiet = self.silence.line(arrived_ms, line)?;
        Some(self.silence_ended(quiet, wall))
    }

    /// Copies of Ekos chunks were dropped while the watch was behind: the
    /// log was not silent, unless their file (`modified`: the latest
    /// modification time of their files, wall ms) was not modified since
    /// a silence reported began (see [`Watch::silence_line`]).
    pub fn lines_lost(&mut self, now_ms: u64, wall: u64, modified: u64) -> Vec<Notice> {
        if self.silence.reported().is_some()
            && self
                .silence_new_after
                .is_some_and(|after| modified <= after)
        {
            return vec![];
        }
        self.unseen(now_ms, wall, "(lines not seen: the night watch was behind)")
    }

    /// The Ekos log grew while its route was held up (its lines are read
    /// once the webhook takes them): it was not silent.
    pub fn log_grew(&mut self, now_ms: u64, wall: u64) -> Vec<Notice> {
        self.unseen(
            now_ms,
            wall,
            "(lines not read yet: their webhook is behind)",
        )
    }

    fn unseen(&mut self, now_ms: u64, wall: u64, why: &str) -> Vec<Notice> {
        match self.silence.line(now_ms, why) {
            Some(quiet) => vec![self.silence_ended(quiet, wall)],
            None => vec![],
        }
    }

    /// The state to save, at `now_ms` (monotonic) and `wall`.
    pub fn snapshot(&self, now_ms: u64, wall: u64) -> State {
        State {
            version: STATE_VERSION,
            wall_ms: wall,
            mono_ms: now_ms,
            incidents: self.incidents.saved(),
            expect: self.expectations.saved(),
            expect_routes: (self.expect_routes.iter().enumerate())
                .filter_map(|(i, r)| Some((self.expectations.id(i)?, *r)))
                .collect(),
            session: self.session.clone(),
            silence: self.silence.clone(),
            silence_from: self.silence_from,
            card: self.card.clone(),
            ended: self.ended.clone(),
            observed: self.observed.clone(),
            silence_new_after: self.silence_new_after,
        }
    }

    /// Goes on from a saved state after a restart at `now_ms` (on the
    /// night watch's clock, continued: see the module documentation) and
    /// `wall`; call before [`Watch::start`].
    pub fn resume(&mut self, state: State, now_ms: u64, wall: u64) {
        self.incidents.restore(state.incidents);
        self.expectations
            .restore(state.expect, local(wall), local(wall + RESTART_GRACE_MS));
        for (id, route) in state.expect_routes {
            if let Some(i) = (0..self.expect_routes.len())
                .find(|i| self.expectations.id(*i).as_deref() == Some(id.as_str()))
            {
                self.expect_routes[i] = route;
            }
        }
        self.session = state.session;
        self.silence = state.silence;
        self.silence.restarted(now_ms);
        self.silence_from = state.silence_from;
        // A card of a night the configuration no longer wants is not
        // resumed; its message stays as last edited.
        self.card = state.card.filter(|_| self.settings.card);
        self.ended = state.ended;
        self.observed = state.observed;
        self.silence_new_after = state.silence_new_after;
        self.saved_marks = Some(self.marks());
    }

    fn marks(&self) -> Marks {
        Marks {
            incidents: self.incidents.generation(),
            expect: self.expectations.generation(),
            expect_routes: self.expect_routes.clone(),
            card: self.card.as_ref().map(|n| {
                (
                    n.night,
                    n.counts(&self.session).total_frames(),
                    n.silences.len(),
                )
            }),
            ended: self.ended.as_ref().map(|n| n.night),
            silence: self.silence.reported().map(|r| r.since_ms),
            work: self.session.work_in_progress(),
            frames: self.session.counts().total_frames(),
            exposing: self.session.exposure().is_some(),
        }
    }

    /// How urgently the state should be saved.
    pub fn dirty(&self) -> Dirty {
        if self.saved_marks.as_ref() != Some(&self.marks()) {
            Dirty::Hard
        } else if self.soft {
            Dirty::Soft
        } else {
            Dirty::Clean
        }
    }

    /// The state was saved.
    pub fn mark_saved(&mut self) {
        self.saved_marks = Some(self.marks());
        self.soft = false;
    }

    fn allowed(&self) -> Option<Duration> {
        Silence::allowed(self.settings.silence, &self.session)
    }

    /// The lines of one chunk, arrived at `arrived_ms`; `wall` for incidents.
    pub fn seen(&mut self, seen: &Seen, arrived_ms: u64, wall: u64) -> Vec<Notice> {
        // Lines read again (after a crash or a reload) were observed.
        let rest;
        let seen = match self.observed.fresh(seen.file, &seen.path, &seen.ends) {
            0 => seen,
            k if k >= seen.ends.len() => return Vec::new(),
            k => {
                rest = seen.without_first(k);
                &rest
            }
        };
        let mut out = Vec::new();
        let now = local(wall);
        let expected = !self.expectations.is_empty() && self.expectations.watches(&seen.path);
        if expected {
            // A line of the file proves where its alerts belong.
            let watching: Vec<usize> = self.expectations.watching(&seen.path).collect();
            for i in watching {
                if let Some(r) = self.expect_routes.get_mut(i) {
                    *r = seen.route;
                }
            }
        }
        let mut card_changed = false;
        let ekos = self.settings.ekos_source == Some(seen.source);
        if ekos {
            self.ekos_path = Some(seen.path.clone());
        }
        let n = self.settings.context_lines;
        let total = seen.line_count();
        let mut events = seen.events.iter().peekable();
        // Only the lines that can end up in a context are copied: the `n`
        // up to each event and the chunk's last `n`.
        let keep_from = total.saturating_sub(n);
        let mut ring_lines: Vec<&str> = Vec::new();
        let file = seen
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, line) in seen.lines().enumerate() {
            if expected {
                let alerts = self.expectations.observe(&seen.path, line, now);
                self.expect_notices(alerts, &mut out);
            }
            let next_event = events.peek().map(|(at, _)| *at);
            let is_event = next_event == Some(i);
            if ekos {
                self.soft |= self.session.observe(&crate::ekos::parse(line), arrived_ms);
                out.extend(self.silence_line(seen, arrived_ms, line, wall));
                let severity = events
                    .peek()
                    .filter(|_| is_event)
                    .map(|(_, ev)| ev.severity);
                card_changed |= self.card_line(now, severity, &mut out);
            }
            if n > 0 && (i >= keep_from || next_event.is_some_and(|e| e - i < n)) {
                ring_lines.push(line);
            }
            if !is_event {
                if let Some(st) = self.warning_storm(seen.source, line, wall) {
                    let o = Occurrence {
                        route: seen.route,
                        event: &st.event,
                        line,
                        file: &file,
                        context: None,
                    };
                    out.extend(self.incidents.event_after(o, wall, st.earlier, st.first_ms));
                }
                continue;
            }
            let (_, ev) = events.next().expect("peeked");
            self.soft = true;
            self.push_context(&seen.path, &ring_lines);
            ring_lines.clear();
            let context = (n > 0 && ev.severity >= Severity::Error)
                .then(|| self.context_of(&seen.path, &file));
            if let Some(c) = context.as_ref().filter(|_| !self.incidents.enabled()) {
                out.extend(self.context_alone(seen.route, ev, line, c.clone(), wall));
            }
            out.extend(self.incidents.event(
                Occurrence {
                    route: seen.route,
                    event: ev,
                    line,
                    file: &file,
                    context,
                },
                wall,
            ));
        }
        self.push_context(&seen.path, &ring_lines);
        if let Some(n) = self.card.as_ref().filter(|_| card_changed) {
            // One body per chunk; the sender's lane edits at most every
            // 5 minutes and always sends the newest.
            out.push(card::live_notice(self.ekos_route, &self.session, n, now));
        }
        out
    }

    /// A line of `source` that is not an event: a [`storms::Storm`] when
    /// it is a warning the source posts, repeated into a storm.
    fn warning_storm(&mut self, source: usize, line: &str, wall: u64) -> Option<storms::Storm> {
        let filter = self.settings.warning_storms.get(source)?.as_ref()?;
        let rec = crate::ekos::parse(line);
        if rec.level != Some(crate::ekos::Level::Warn) || !filter.keep_with_event(&rec, None) {
            return None;
        }
        self.storms.line(source, &rec, wall)
    }

    /// With incidents off, an alert of severity error and above is its
    /// line's own embed, which goes in a batch of log lines and carries no
    /// file; its context lines go in a message of their own, "Context of
    /// <title>", with the line and the `.log` attachment, not pinging (the
    /// line's embed pings). It is one of the daemon's own messages, which
    /// do not wait behind lines: it may come just before the line's embed.
    /// At most one per rule and route every [`CONTEXT_ALONE_GAP`]: a storm
    /// of one error is not a storm of attachments (with incidents on, the
    /// incident's first message carries the context, once).
    fn context_alone(
        &mut self,
        route: usize,
        ev: &EventPart,
        line: &str,
        file: crate::discord::NewFile,
        wall: u64,
    ) -> Option<Notice> {
        let gap = CONTEXT_ALONE_GAP.as_millis() as u64;
        if self.context_sent.len() >= CONTEXT_FILES {
            self.context_sent
                .retain(|_, t| wall.saturating_sub(*t) < gap && *t <= wall);
        }
        let k = (route, ev.rule.clone());
        if let Some(t) = self.context_sent.get(&k) {
            if wall.saturating_sub(*t) < gap && *t <= wall {
                return None;
            }
        }
        if self.context_sent.len() >= CONTEXT_FILES {
            // Many rules at once: the rest go without their context.
            return None;
        }
        self.context_sent.insert(k, wall);
        let mut alert = Alert::new(format!("Context of: {}", ev.title), ev.severity);
        alert.description = quoted_line(line, 1500);
        alert.footer = Some(format!(
            "the {} lines before the alert · {}",
            self.settings.context_lines, file.name
        ));
        Some(Notice {
            route,
            key: format!("context/{}/{wall}", ev.rule),
            body: alert.body(),
            files: vec![file],
            policy: Policy::New,
        })
    }

    fn push_context(&mut self, path: &Arc<Path>, lines: &[&str]) {
        let n = self.settings.context_lines;
        if n == 0 || lines.is_empty() {
            return;
        }
        self.context_clock += 1;
        if !self.context.contains_key(path) && self.context.len() >= CONTEXT_FILES {
            if let Some(old) = self
                .context
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(p, _)| p.clone())
            {
                self.context.remove(&old);
            }
        }
        let (t, ring) = self
            .context
            .entry(path.clone())
            .or_insert_with(|| (0, VecDeque::new()));
        *t = self.context_clock;
        for l in lines.iter().skip(lines.len().saturating_sub(n)) {
            if ring.len() == n {
                ring.pop_front();
            }
            ring.push_back(context_line(l));
        }
        let mut bytes: usize = ring.iter().map(String::len).sum();
        while bytes > CONTEXT_BYTES {
            match ring.pop_front() {
                Some(l) => bytes -= l.len(),
                None => break,
            }
        }
    }

    fn context_of(&self, path: &Path, name: &str) -> crate::discord::NewFile {
        let lines = self.context.get(path).map(|(_, r)| r);
        context_file(name, lines.into_iter().flatten().map(String::as_str))
    }

    /// Time passed: a silence, an incident without repeats, an
    /// `[[expect]]` deadline, the end of the night by the clock.
    pub fn tick(&mut self, now_ms: u64, wall: u64) -> Vec<Notice> {
        let mut out = self.incidents.tick(wall);
        let now = local(wall);
        if let Some(alarm) = self.silence.check(now_ms, self.allowed()) {
            // In milliseconds: the last line's own second, not one off.
            let from = local(wall.saturating_sub(alarm.quiet.as_millis() as u64));
            self.silence_from = Some(from);
            self.silence_new_after = Some(new_after(wall, alarm.quiet));
            if let Some(n) = self.card.as_mut() {
                n.silence(card::Silence {
                    at: from,
                    duration: alarm.quiet,
                });
            }
            out.push(self.silent(alarm));
        }
        let alerts = self.expectations.due(now);
        self.expect_notices(alerts, &mut out);
        if let Some(n) = &self.card {
            if let Some(reason) = card::night_over(&self.session, n, now, &self.settings.night) {
                self.close_card(reason, now, &mut out);
            }
        }
        out
    }

    /// When to tick next: (monotonic ms for the silence, wall ms for the
    /// incidents, `[[expect]]` deadlines and the end of the night), `wall`
    /// being the wall clock now.
    pub fn wake_at(&self, wall: u64) -> (Option<u64>, Option<u64>) {
        let now = local(wall);
        let deadline = self
            .expectations
            .next_deadline(now)
            .map(|t| wall_after(wall, t));
        let night_end = self
            .card
            .as_ref()
            .map(|n| wall_after(wall, self.settings.night.end_of(n.night)));
        let at = [self.incidents.wake_at(), deadline, night_end]
            .into_iter()
            .flatten()
            .min();
        (self.silence.wake_at(self.allowed()), at)
    }

    fn state_fields(&self) -> Vec<(String, String)> {
        let s = &self.session;
        let exposure = match s.exposure() {
            Some(e) => format!("{} s", e.seconds),
            None => "-".into(),
        };
        vec![
            ("Target".into(), s.job().unwrap_or("-").to_string()),
            ("Filter".into(), s.filter().unwrap_or("-").to_string()),
            ("Exposure".into(), exposure),
            ("State".into(), s.summary()),
        ]
    }

    fn silent(&self, alarm: silence::Alarm) -> Notice {
        let s = &self.session;
        let during = match (s.exposure(), s.job()) {
            (Some(e), Some(job)) => format!(" during a {} s exposure of {job}", e.seconds),
            (Some(e), None) => format!(" during a {} s exposure", e.seconds),
            (None, Some(job)) => format!(" while working on {job}"),
            (None, None) => String::new(),
        };
        let mut alert = Alert::new(
            format!("Ekos silent for {}{during}", human(alarm.quiet)),
            Severity::Error,
        );
        alert.description = format!("Last line:\n{}", quoted_line(&alarm.last_line, 1500));
        alert.fields = self.state_fields();
        alert.fields.push(("Allowed".into(), human(alarm.allowed)));
        alert.footer = Some("silence alarm · measured by when lines arrive".into());
        let files = match (self.settings.context_lines, self.context_path()) {
            (n, Some((p, name))) if n > 0 => vec![self.context_of(&p, &name)],
            _ => vec![],
        };
        Notice {
            route: self.ekos_route,
            key: format!(
                "silence/{}",
                self.silence.reported().map_or(0, |r| r.since_ms)
            ),
            body: alert.body(),
            files,
            policy: Policy::New,
        }
    }

    /// The most recently written file of the Ekos source's context.
    fn context_path(&self) -> Option<(Arc<Path>, String)> {
        // The Ekos log last written, not whichever file of any source
        // (a PHD2 or script log) was written last before the silence.
        self.ekos_path
            .as_ref()
            .filter(|p| self.context.contains_key(*p))
            .or_else(|| {
                self.context
                    .iter()
                    .max_by_key(|(_, (t, _))| *t)
                    .map(|(p, _)| p)
            })
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (p.clone(), name)
            })
    }

    fn writing_again(&self, quiet: Duration) -> Notice {
        let mut alert = Alert::new(
            format!("Ekos is writing again after {}", human(quiet)),
            Severity::Success,
        );
        alert.color = RESOLVED_COLOR;
        alert.fields = self.state_fields();
        Notice {
            route: self.ekos_route,
            key: "silence/resumed".into(),
            body: alert.body(),
            files: vec![],
            policy: Policy::New,
        }
    }
}

/// What `check` shows: the session as the end of the log `path` tells it
/// (its last [`REPLAY_TAIL`] bytes); `None` if it cannot be read.
pub fn replay_summary(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(REPLAY_TAIL);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.lines();
    if from > 0 {
        // The first line is cut.
        lines.next();
    }
    let mut session = Session::new();
    for l in lines {
        session.observe(&crate::ekos::parse(l), 0);
    }
    Some(session.summary())
}

/// How much of the Ekos log `check` reads for the session summary.
pub const REPLAY_TAIL: u64 = 8 * 1024 * 1024;

/// The actor: [`Watch`] on its own thread.
pub struct NightWatch {
    watch: Watch,
    clock: Box<dyn Clock>,
    stats: Arc<Stats>,
    counters: Arc<TapCounters>,
    state_file: Option<PathBuf>,
    /// Added to the clock's monotonic time: the saved clock's time plus
    /// the downtime, so monotonic times continue across a restart.
    mono_offset: u64,
    /// When the state was last saved (monotonic ms), for [`SOFT_SAVE_MS`].
    last_save_ms: Option<u64>,
}

/// The channel between the watcher and the night watch; the counters go
/// to [`NightWatch::new`].
pub fn channel(settings: &Settings) -> (Tap, Receiver<Seen>, Arc<TapCounters>) {
    channel_with(settings, SEEN_CHANNEL, SEEN_BYTES)
}

fn channel_with(
    settings: &Settings,
    chunks: usize,
    bytes: usize,
) -> (Tap, Receiver<Seen>, Arc<TapCounters>) {
    let (tx, rx) = crossbeam_channel::bounded(chunks);
    let counters = Arc::new(TapCounters::default());
    (
        Tap {
            tx,
            counters: counters.clone(),
            budget: bytes,
            incidents: !settings.incident_window.is_zero(),
            ekos_source: settings.ekos_source,
        },
        rx,
        counters,
    )
}

impl NightWatch {
    /// `ekos_route`: where the silence alarm goes (the Ekos source's route).
    pub fn new(
        settings: Settings,
        ekos_route: usize,
        clock: Box<dyn Clock>,
        stats: Arc<Stats>,
        counters: Arc<TapCounters>,
    ) -> NightWatch {
        let state_file = settings.state_file.clone();
        let mut watch = Watch::new(settings, ekos_route);
        let mut mono_offset = 0;
        if let Some(path) = &state_file {
            if let Ok(bytes) = std::fs::read(path) {
                let (state, problems) = State::parse(&bytes);
                if !problems.is_empty() {
                    log::warn!(
                        "{}: {}; kept what could be read",
                        path.display(),
                        problems.join("; ")
                    );
                }
                let wall = clock.wall_ms();
                // The saved monotonic time plus the downtime (none if the
                // wall clock went back).
                let continued = state.mono_ms + wall.saturating_sub(state.wall_ms);
                mono_offset = continued.saturating_sub(clock.now_ms());
                watch.resume(state, clock.now_ms() + mono_offset, wall);
            }
        }
        NightWatch {
            watch,
            clock,
            stats,
            counters,
            state_file,
            mono_offset,
            last_save_ms: None,
        }
    }

    /// Monotonic milliseconds, continued across restarts.
    fn now_ms(&self) -> u64 {
        self.clock.now_ms() + self.mono_offset
    }

    /// When a pending change that can wait is to be saved.
    fn save_at(&self) -> Option<u64> {
        (self.state_file.is_some() && self.watch.dirty() == Dirty::Soft)
            .then(|| self.last_save_ms.map_or(0, |t| t + SOFT_SAVE_MS))
    }

    /// Saves the state if it is due, or whatever changed if `force`.
    fn save(&mut self, force: bool) {
        let Some(path) = &self.state_file else {
            return;
        };
        let now = self.now_ms();
        let due = match self.watch.dirty() {
            Dirty::Clean => false,
            Dirty::Hard => true,
            Dirty::Soft => force || self.save_at().is_some_and(|t| t <= now),
        };
        if !due {
            return;
        }
        let state = self.watch.snapshot(now, self.clock.wall_ms());
        let bytes = serde_json::to_vec(&state).expect("the state always serializes");
        self.last_save_ms = Some(now);
        match crate::sender::notices::write_atomic(path, &bytes) {
            Ok(()) => self.watch.mark_saved(),
            Err(source) => {
                let e = NightWatchError::Save {
                    path: path.display().to_string(),
                    source,
                };
                log::warn!(
                    "{e}; after a restart an open incident or an alert may be posted again and the night card may count from where it was last saved"
                );
                // Not tried again before SOFT_SAVE_MS, whatever changes.
                self.watch.mark_saved();
                self.watch.soft = true;
            }
        }
    }

    fn publish(&self) {
        // A job is tonight's target while it is worked on (the session
        // keeps the last job after the work ends, into the next night).
        let session = self.watch.session();
        if let Some(job) = session.job().filter(|_| session.work_in_progress()) {
            let night =
                card::night_of(local(self.clock.wall_ms()), self.watch.settings.night.start);
            self.stats.note_target(night, job);
        }
        self.stats.set_session(Some(self.watch.session().summary()));
    }

    fn emit(&mut self, out: Vec<Notice>, notices: &Sender<Notice>) {
        for n in out {
            // The sender takes notices whatever its backlog: this waits
            // only while it is busy with a batch, never on the network.
            if notices.send(n).is_err() {
                break;
            }
        }
        self.save(false);
    }

    /// A copy of lines read by the watcher.
    fn take(&mut self, lines: &Drained, seen: Seen, notices: &Sender<Notice>) {
        lines.took(&seen);
        let arrived = self.clock.at_ms(seen.arrived) + self.mono_offset;
        let wall = self.clock.wall_ms();
        let out = self.watch.seen(&seen, arrived, wall);
        self.emit(out, notices);
    }

    /// The actor loop: until the line channel closes (the watcher ended)
    /// or `Shutdown`/`Abort`. Answers pings for the watchdog.
    pub fn run(
        mut self,
        lines: Receiver<Seen>,
        control: Receiver<Control>,
        notices: Sender<Notice>,
    ) {
        let mut lines = Drained {
            rx: lines,
            counters: self.counters.clone(),
        };
        let (mut seen_lost, mut seen_grew) = (0, 0);
        let mut summary = String::new();
        // A session change STATUS= held back (at most 5 a second) is sent
        // this long after, rather than at the sender's next post.
        let mut flush_status_at: Option<u64> = None;
        self.watch.start(self.clock.wall_ms());
        loop {
            let now = self.now_ms();
            let wall = self.clock.wall_ms();
            let (silence_at, incident_at) = self.watch.wake_at(wall);
            let mono_at = [silence_at, self.save_at(), flush_status_at]
                .into_iter()
                .flatten()
                .min();
            let mut wait: Option<u64> = mono_at.map(|t| t.saturating_sub(now));
            if let Some(w) = incident_at.map(|t| t.saturating_sub(wall)) {
                wait = Some(wait.map_or(w, |x| x.min(w)));
            }
            let timer = match wait {
                Some(ms) => crossbeam_channel::after(Duration::from_millis(ms)),
                None => never(),
            };
            crossbeam_channel::select! {
                recv(control) -> msg => match msg {
                    Ok(Control::Ping(n)) => self.stats.nightwatch_pong.store(n, Ordering::Relaxed),
                    Ok(Control::Shutdown) | Ok(Control::Abort) | Err(_) => {
                        self.save(true);
                        return;
                    }
                },
                recv(lines.rx) -> seen => match seen {
                    Ok(seen) => self.take(&lines, seen, &notices),
                    Err(_) => {
                        lines.rx = never();
                    }
                },
                recv(timer) -> _ => {}
            }
            // Copies waiting now were read before now: all of them are
            // taken before the time is judged, or a timer chosen over them
            // (select! picks at random among the ready), or a night watch
            // that fell behind, would call silent a log that wrote. The
            // count is taken first, so a watcher that keeps sending cannot
            // hold the tick back.
            for _ in 0..lines.rx.len() {
                match lines.rx.try_recv() {
                    Ok(seen) => self.take(&lines, seen, &notices),
                    Err(_) => break,
                }
            }
            // Copies dropped while the watch was behind were lines: the
            // Ekos log was not silent.
            let lost = self.counters.lost.load(Ordering::SeqCst);
            if lost != seen_lost {
                seen_lost = lost;
                let modified = self.counters.lost_modified.load(Ordering::SeqCst);
                let out = self
                    .watch
                    .lines_lost(self.now_ms(), self.clock.wall_ms(), modified);
                self.emit(out, &notices);
            }
            // The Ekos log grew while its webhook held its lines back: the
            // watcher looks at its size on each change, so a log that
            // really stopped stops this too (see `Tap::grew`).
            let grew = self.counters.grew.load(Ordering::Relaxed);
            if grew != seen_grew {
                seen_grew = grew;
                let out = self.watch.log_grew(self.now_ms(), self.clock.wall_ms());
                self.emit(out, &notices);
            }
            let out = self.watch.tick(self.now_ms(), self.clock.wall_ms());
            self.emit(out, &notices);
            let s = self.watch.session().summary();
            if s != summary && self.watch.settings.ekos_source.is_some() {
                summary = s;
                self.publish();
                flush_status_at = Some(self.now_ms() + STATUS_FLUSH_MS);
            } else if flush_status_at.is_some_and(|t| t <= self.now_ms()) {
                flush_status_at = None;
                self.stats.flush_status();
            }
        }
    }
}

/// A line as kept for context: cut at a character boundary past
/// [`CONTEXT_LINE_BYTES`], with a marker.
fn context_line(l: &str) -> String {
    if l.len() <= CONTEXT_LINE_BYTES {
        return l.to_string();
    }
    let mut end = CONTEXT_LINE_BYTES;
    while !l.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [… {} bytes cut]", &l[..end], l.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_line_is_cut_at_a_character_boundary() {
        let long = "é".repeat(5000);
        let cut = context_line(&long);
        assert!(cut.len() < CONTEXT_LINE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with("bytes cut]"));
        assert_eq!(context_line("short"), "short");
    }
    use crate::ekos::Mention;

    const MIN: u64 = 60_000;

    fn line(cat: &str, msg: &str) -> String {
        format!("[2024-03-09T21:14:06.000 CET INFO ][{cat:>30}] - {msg}")
    }

    fn seen(source: usize, lines: &[String], events: Vec<(usize, EventPart)>) -> Seen {
        Seen {
            source,
            route: 0,
            path: Arc::from(Path::new("/logs/log_21-00-00.txt")),
            file: FileId(0),
            ends: vec![],
            modified_ms: None,
            arrived: Instant::now(),
            text: lines.iter().map(|l| format!("{l}\n")).collect(),
            events,
        }
    }

    #[test]
    fn seen_lines_are_split_terminator_lines() {
        for text in [
            "",
            "\n",
            "a",
            "a\n",
            "a\n\n",
            "\n\nb",
            "a\nb",
            "a\nb\n",
            "é\n\u{240a}\n",
        ] {
            let mut s = seen(0, &[], vec![]);
            s.text = text.to_string();
            let want: Vec<&str> = text.split_terminator('\n').collect();
            assert_eq!(s.lines().collect::<Vec<_>>(), want, "{text:?}");
            assert_eq!(s.line_count(), want.len(), "{text:?}");
        }
    }

    fn settings() -> Settings {
        Settings {
            ekos_source: Some(0),
            silence: Threshold::After(Duration::from_secs(120)),
            incident_window: Duration::from_secs(600),
            context_lines: 3,
            state_file: None,
            expect: vec![],
            expect_routes: vec![],
            night: NightSettings::default(),
            card: true,
            warning_storms: vec![],
            alerts: None,
        }
    }

    fn exposing() -> Vec<String> {
        vec![
            line("org.kde.kstars.ekos.scheduler", "Executing Job  \"M31\""),
            line(
                "org.kde.kstars.ekos.capture",
                "\"Capturing 300.000-second Ha image...\"",
            ),
        ]
    }

    fn crash() -> EventPart {
        EventPart {
            severity: Severity::Critical,
            title: "INDI driver X crashed".into(),
            footer: None,
            mention: None,
            alert_mention: None,
            covered: false,
            rule: "indi-driver-crashed".into(),
            more: 0,
        }
    }

    fn tap(cap: usize, incidents: bool) -> (Tap, Receiver<Seen>) {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let tap = Tap {
            tx,
            counters: Arc::default(),
            budget: SEEN_BYTES,
            incidents,
            ekos_source: Some(0),
        };
        (tap, rx)
    }

    fn pinging_chunk() -> Chunk {
        let e = EventPart {
            mention: Some(Mention::Role(42)),
            alert_mention: Some(Mention::Role(42)),
            ..crash()
        };
        Chunk {
            file: crate::checkpoint::FileId(1),
            source: 0,
            route: 0,
            label: None,
            start: 0,
            lines: vec![crate::tail::Line {
                text: "crash".into(),
                end: 6,
            }],
            shown: vec![Some(Some(e))],
        }
    }

    fn covered(c: &Chunk) -> bool {
        c.shown[0].as_ref().unwrap().as_ref().unwrap().covered
    }

    fn line_mention(c: &Chunk) -> Option<Mention> {
        c.shown[0].as_ref().unwrap().as_ref().unwrap().mention
    }

    #[test]
    fn the_tap_takes_the_mention_off_the_line_only_once_the_night_watch_has_the_copy() {
        let (t, rx) = tap(1, true);
        let mut c = pinging_chunk();
        t.offer(&mut c, Path::new("/x"), None);
        assert_eq!(line_mention(&c), None, "the incident pings instead");
        let got = rx.try_recv().unwrap();
        assert_eq!(got.events[0].1.mention, Some(Mention::Role(42)));
        assert!(!got.events[0].1.covered, "the night watch's copy as read");
        assert!(
            covered(&c),
            "the incident goes to the alerts webhook, not the line's copy"
        );

        // The channel is full (a catch-up): the copy is dropped, so the
        // line must ping itself, and its alerts copy goes.
        let mut first = pinging_chunk();
        t.offer(&mut first, Path::new("/x"), None);
        let mut c = pinging_chunk();
        t.offer(&mut c, Path::new("/x"), None);
        assert_eq!(line_mention(&c), Some(Mention::Role(42)));
        assert!(!covered(&c));
        assert_eq!(t.counters.lost.load(Ordering::Relaxed), 1);

        // The night watch is gone.
        drop(rx);
        let mut c = pinging_chunk();
        t.offer(&mut c, Path::new("/x"), None);
        assert_eq!(line_mention(&c), Some(Mention::Role(42)));
        assert!(!covered(&c));

        // Incidents off: nothing is taken.
        let (t, _rx) = tap(1, false);
        let mut c = pinging_chunk();
        t.offer(&mut c, Path::new("/x"), None);
        assert_eq!(line_mention(&c), Some(Mention::Role(42)));
        assert!(!covered(&c));

        // An info event: no incident stands for it.
        let (t, _rx) = tap(1, true);
        let mut c = pinging_chunk();
        if let Some(Some(e)) = c.shown[0].as_mut() {
            e.severity = Severity::Info;
        }
        t.offer(&mut c, Path::new("/x"), None);
        assert_eq!(line_mention(&c), Some(Mention::Role(42)));
        assert!(!covered(&c));
    }

    /// With an alerts webhook (route 1, threshold error), an incident of a
    /// crash goes there too, with its ping and its context.
    #[test]
    fn an_incident_goes_to_the_alerts_route_too() {
        let mut s = settings();
        s.alerts = Some((1, Severity::Error));
        s.card = false;
        let mut w = Watch::new(s, 0);
        let pinging = EventPart {
            mention: Some(Mention::Role(42)),
            alert_mention: Some(Mention::Role(42)),
            ..crash()
        };
        let chunk = seen(0, &["before".into(), "crash".into()], vec![(1, pinging)]);
        let out = w.seen(&chunk, 0, 1_000);
        let routes: Vec<usize> = out.iter().map(|n| n.route).collect();
        assert_eq!(routes, [0, 1], "{:?}", titles(&out));
        assert_eq!(out[1].body["content"], out[0].body["content"]);
        assert!(out[1].body["content"].as_str().unwrap().contains("<@&42>"));
        assert_eq!(out[1].files.len(), 1, "the context on both");
        assert_eq!(out[1].key, incidents::alerts_key(&out[0].key, 0));
    }

    #[test]
    fn only_the_ekos_source_feeds_the_session_and_the_silence_alarm() {
        let mut w = Watch::new(settings(), 0);
        assert!(w.seen(&seen(1, &exposing(), vec![]), 0, 0).is_empty());
        assert!(
            !w.session().work_in_progress(),
            "a script log is no session"
        );
        assert_eq!(w.wake_at(0), (None, None));
        w.seen(&seen(0, &exposing(), vec![]), 0, 0);
        assert!(w.session().work_in_progress());
        assert_eq!(w.wake_at(0).0, Some(120_001));
        assert!(w.tick(2 * MIN, 0).is_empty());
        let out = w.tick(3 * MIN, 0);
        assert_eq!(out.len(), 1);
        let title = out[0].body["embeds"][0]["title"].as_str().unwrap();
        assert_eq!(
            title,
            "Ekos silent for 3 min during a 300 s exposure of M31"
        );
        assert_eq!(out[0].files.len(), 1, "the last lines attached");
        assert!(w.tick(10 * MIN, 0).is_empty(), "never twice");
        // A script writing meanwhile does not end an Ekos silence.
        assert!(
            w.seen(&seen(1, &["backup ok".into()], vec![]), 11 * MIN, 0)
                .is_empty()
        );
        let back = w.seen(&seen(0, &["next".into()], vec![]), 14 * MIN, 0);
        assert_eq!(
            back[0].body["embeds"][0]["title"],
            "Ekos is writing again after 14 min"
        );
    }

    /// The silence alert's context is the Ekos log's last lines, even when
    /// a script log (another source) was written after it.
    #[test]
    fn a_silence_carries_the_ekos_log_not_the_file_written_last() {
        let mut w = Watch::new(settings(), 0);
        w.seen(&seen(0, &exposing(), vec![]), 0, 0);
        let script = Seen {
            path: Arc::from(Path::new("/srv/service/event/backup.log")),
            ..seen(1, &["backup step 1".into()], vec![])
        };
        w.seen(&script, MIN, 0);
        let out = w.tick(3 * MIN, 0);
        assert_eq!(out.len(), 1);
        let f = &out[0].files[0];
        assert_eq!(f.name, "log_21-00-00.txt.log");
        let text = String::from_utf8_lossy(&f.data);
        assert!(
            text.contains("300.000-second Ha") && !text.contains("backup"),
            "{text}"
        );
    }

    #[test]
    fn an_error_carries_the_lines_before_it_from_its_own_file() {
        let mut w = Watch::new(settings(), 0);
        let before: Vec<String> = (0..5).map(|i| format!("line {i}")).collect();
        w.seen(&seen(1, &before[..2], vec![]), 0, 0);
        let mut lines = before[2..].to_vec();
        lines.push("Driver X crashed".into());
        lines.push("after".into());
        let out = w.seen(&seen(1, &lines, vec![(3, crash())]), 0, 1_000);
        assert_eq!(out.len(), 1);
        let f = &out[0].files[0];
        assert_eq!(f.name, "log_21-00-00.txt.log");
        assert_eq!(
            String::from_utf8_lossy(&f.data),
            "line 3\nline 4\nDriver X crashed\n"
        );
        let mut none = settings();
        none.context_lines = 0;
        let mut w = Watch::new(none, 0);
        assert!(
            w.seen(&seen(1, &lines, vec![(3, crash())]), 0, 0)[0]
                .files
                .is_empty()
        );
    }

    /// A clock the test moves.
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
        fn at_ms(&self, _t: Instant) -> u64 {
            self.now_ms()
        }
        fn wall_ms(&self) -> u64 {
            1_700_000_000_000 + self.now_ms()
        }
    }

    struct Actor {
        lines: Sender<Seen>,
        ctl: Sender<Control>,
        notices: Receiver<Notice>,
        stats: Arc<Stats>,
        thread: std::thread::JoinHandle<()>,
    }

    fn actor(s: Settings, clock: FakeClock) -> Actor {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
        let (ntx, notices) = crossbeam_channel::bounded(8);
        let stats = Arc::new(Stats::default());
        let nw = NightWatch::new(s, 0, Box::new(clock), stats.clone(), Arc::default());
        let thread = std::thread::spawn(move || nw.run(rx, ctl_rx, ntx));
        Actor {
            lines: tx,
            ctl,
            notices,
            stats,
            thread,
        }
    }

    #[test]
    fn the_actor_answers_pings_publishes_the_session_and_keeps_incidents_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        s.state_file = Some(dir.path().join(FILE));
        let clock = FakeClock::default();
        let a = actor(s.clone(), clock.clone());
        a.ctl.send(Control::Ping(7)).unwrap();
        a.lines
            .send(seen(0, &["Driver X crashed".into()], vec![(0, crash())]))
            .unwrap();
        let first = a.notices.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(first.policy, Policy::Upsert { .. }));
        a.lines.send(seen(0, &exposing(), vec![])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !a.stats.status_line().contains("M31")
            || a.stats.nightwatch_pong.load(Ordering::SeqCst) != 7
        {
            assert!(Instant::now() < deadline, "{}", a.stats.status_line());
            std::thread::yield_now();
        }
        a.ctl.send(Control::Shutdown).unwrap();
        a.thread.join().unwrap();

        let b = actor(s, clock.clone());
        b.lines
            .send(seen(0, &["Driver X crashed".into()], vec![(0, crash())]))
            .unwrap();
        let again = b.notices.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(again.key, first.key, "the same message is edited");
        assert!(
            again.body["embeds"][0]["title"]
                .as_str()
                .unwrap()
                .ends_with("(×2)")
        );
        // Simulated time: the window passes, the incident ends (Final).
        // The night card, restored with the session, goes on too.
        let card = b.notices.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(card.key.starts_with("night:"), "{}", card.key);
        assert!(card.body.to_string().contains("M31"), "{}", card.body);
        clock.0.store(11 * MIN, Ordering::SeqCst);
        b.ctl.send(Control::Ping(1)).unwrap();
        let end = b.notices.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (end.key.as_str(), end.policy),
            (first.key.as_str(), Policy::Final)
        );
        b.ctl.send(Control::Abort).unwrap();
        b.thread.join().unwrap();
    }

    /// A clock whose monotonic and wall times the test sets apart (a new
    /// process's monotonic clock starts again at zero).
    #[derive(Clone, Default)]
    struct SplitClock {
        mono: Arc<AtomicU64>,
        wall: Arc<AtomicU64>,
    }

    impl Clock for SplitClock {
        fn now_ms(&self) -> u64 {
            self.mono.load(Ordering::SeqCst)
        }
        fn at_ms(&self, _t: Instant) -> u64 {
            self.now_ms()
        }
        fn wall_ms(&self) -> u64 {
            self.wall.load(Ordering::SeqCst)
        }
    }

    fn split_actor(s: Settings, clock: SplitClock) -> Actor {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
        let (ntx, notices) = crossbeam_channel::bounded(64);
        let stats = Arc::new(Stats::default());
        let nw = NightWatch::new(s, 0, Box::new(clock), stats.clone(), Arc::default());
        let thread = std::thread::spawn(move || nw.run(rx, ctl_rx, ntx));
        Actor {
            lines: tx,
            ctl,
            notices,
            stats,
            thread,
        }
    }

    /// Waits until the actor answered ping `n` and finished the loop
    /// round that followed (a second ping), so its notices are out.
    fn settle(a: &Actor, n: u64) {
        for p in [n, n + 1] {
            a.ctl.send(Control::Ping(p)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while a.stats.nightwatch_pong.load(Ordering::SeqCst) != p {
                assert!(Instant::now() < deadline, "no pong {p}");
                std::thread::yield_now();
            }
        }
    }

    /// A clock whose lines were read (`read`) before now (`now`): a night
    /// watch behind the watcher. `taken` counts the copies it took.
    #[derive(Clone, Default)]
    struct LagClock {
        now: Arc<AtomicU64>,
        read: Arc<AtomicU64>,
        taken: Arc<AtomicU64>,
    }

    impl Clock for LagClock {
        fn now_ms(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        fn at_ms(&self, _t: Instant) -> u64 {
            self.taken.fetch_add(1, Ordering::SeqCst);
            self.read.load(Ordering::SeqCst)
        }
        fn wall_ms(&self) -> u64 {
            1_700_000_000_000 + self.now_ms()
        }
    }

    /// A line read before the silence deadline but still in the channel
    /// when the night watch gets to it after the deadline (it was busy, or
    /// `select!` chose the timer first) is activity: no alarm. The actor
    /// is held in the middle of a round (its first notice, the night's
    /// card, waits for a taker) while a line is queued and the clock
    /// passes the deadline.
    #[test]
    fn lines_waiting_in_the_channel_are_taken_before_the_silence_is_judged() {
        let clock = LagClock::default();
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
        let (ntx, notices) = crossbeam_channel::bounded(0);
        let stats = Arc::new(Stats::default());
        let nw = NightWatch::new(
            settings(),
            0,
            Box::new(clock.clone()),
            stats.clone(),
            Arc::default(),
        );
        let thread = std::thread::spawn(move || nw.run(rx, ctl_rx, ntx));
        // Read at 0; once taken, the actor waits to hand out the card.
        tx.send(seen(0, &exposing(), vec![])).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while clock.taken.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "not taken");
            std::thread::yield_now();
        }
        let deadline = 120 * 1000;
        clock.read.store(deadline - 1000, Ordering::SeqCst);
        let next = line("org.kde.kstars.ekos.guide", "\"Guiding...\"");
        tx.send(seen(0, &[next], vec![])).unwrap();
        clock.now.store(deadline + 1000, Ordering::SeqCst);
        let collector = std::thread::spawn(move || notices.iter().collect::<Vec<Notice>>());
        for p in 1..=2 {
            ctl.send(Control::Ping(p)).unwrap();
            let until = Instant::now() + Duration::from_secs(5);
            while stats.nightwatch_pong.load(Ordering::SeqCst) != p {
                assert!(Instant::now() < until, "no pong {p}");
                std::thread::yield_now();
            }
        }
        assert_eq!(clock.taken.load(Ordering::SeqCst), 2);
        ctl.send(Control::Shutdown).unwrap();
        thread.join().unwrap();
        let titles: Vec<String> = collector
            .join()
            .unwrap()
            .iter()
            .map(|n| {
                n.body["embeds"][0]["title"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert!(titles[0].starts_with("Night of"), "{titles:?}");
        assert!(
            titles.iter().all(|t| !t.starts_with("Ekos silent")),
            "{titles:?}"
        );
    }

    /// The monotonic clock of a new process starts at zero; the night
    /// watch's goes on from the saved value plus the downtime, so the
    /// saved arrival times keep their meaning: the quiet is counted from
    /// the restart, not from a saved time that now lies in the future.
    #[test]
    fn the_actors_monotonic_time_continues_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        s.state_file = Some(dir.path().join(FILE));
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let clock = SplitClock::default();
        clock.mono.store(50 * MIN, Ordering::SeqCst);
        clock.wall.store(w0, Ordering::SeqCst);
        let a = split_actor(s.clone(), clock.clone());
        a.lines.send(seen(0, &exposing(), vec![])).unwrap();
        settle(&a, 1);
        a.ctl.send(Control::Shutdown).unwrap();
        a.thread.join().unwrap();
        let saved = State::parse(&std::fs::read(dir.path().join(FILE)).unwrap()).0;
        assert_eq!(saved.mono_ms, 50 * MIN);
        assert!(saved.card.is_some() && saved.session.work_in_progress());

        // A new process 10 min later: monotonic zero.
        let clock = SplitClock::default();
        clock.wall.store(w0 + 10 * MIN, Ordering::SeqCst);
        let b = split_actor(s, clock.clone());
        settle(&b, 1);
        assert!(b.notices.try_recv().is_err(), "no silence for the downtime");
        clock.mono.store(MIN, Ordering::SeqCst);
        clock.wall.store(w0 + 11 * MIN, Ordering::SeqCst);
        settle(&b, 3);
        assert!(
            b.notices.try_recv().is_err(),
            "within silence_after of the restart"
        );
        clock.mono.store(3 * MIN, Ordering::SeqCst);
        clock.wall.store(w0 + 13 * MIN, Ordering::SeqCst);
        settle(&b, 5);
        let n = b
            .notices
            .try_recv()
            .expect("a silence counted from the restart");
        assert_eq!(
            n.body["embeds"][0]["title"],
            "Ekos silent for 3 min during a 300 s exposure of M31"
        );
        b.ctl.send(Control::Abort).unwrap();
        b.thread.join().unwrap();
        let saved = State::parse(&std::fs::read(dir.path().join(FILE)).unwrap()).0;
        assert!(saved.silence.reported().is_some(), "saved at the alarm");
        assert_eq!(saved.mono_ms, 60 * MIN + 3 * MIN);
    }

    /// Wall-clock milliseconds at which the local clock shows `t` (the
    /// test's time zone, whatever it is).
    fn wall_of(t: Local) -> u64 {
        let guess = t.day * 86_400 + t.secs as i64;
        let off = Local::from_unix(guess).since(t);
        ((guess - off) * 1000) as u64
    }

    fn with_expect(by: &str) -> Settings {
        let spec = expect::Spec {
            name: None,
            file: "backup.log".into(),
            pattern: "completed".into(),
            by: by.into(),
            weekdays: None,
        };
        let mut s = settings();
        s.expect = expect::from_specs(&[spec], Path::new("/etc")).unwrap();
        s.expect_routes = vec![0];
        s
    }

    fn script(line: &str) -> Seen {
        Seen {
            source: 1,
            route: 1,
            path: Arc::from(Path::new("/var/log/backup.log")),
            file: FileId(0),
            ends: vec![],
            modified_ms: None,
            arrived: Instant::now(),
            text: format!("{line}\n"),
            events: vec![],
        }
    }

    fn titles(out: &[Notice]) -> Vec<String> {
        out.iter()
            .map(|n| {
                n.body["embeds"][0]["title"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn an_expect_deadline_alerts_once_on_its_files_route_then_once_late() {
        let t0 = Local::ymd_hms(2026, 11, 22, 4, 0, 0).unwrap();
        let w0 = wall_of(t0);
        let mut w = Watch::new(with_expect("04:30"), 0);
        w.start(w0);
        assert!(w.seen(&script("backup started"), 0, w0 + 1000).is_empty());
        // The timer is set just past the deadline.
        let deadline = wall_of(t0.plus(30 * 60));
        assert_eq!(w.wake_at(w0).1, Some(w0 + WALL_WAIT_MS));
        assert_eq!(w.wake_at(deadline - 5_000).1, Some(deadline + 1000));
        assert!(w.tick(0, deadline).is_empty(), "not before it has passed");
        let out = w.tick(0, deadline + 1000);
        assert_eq!(titles(&out), ["Expected line missing"]);
        assert_eq!(out[0].route, 1, "the route of the file's source");
        assert_eq!(
            out[0].body["embeds"][0]["description"],
            "backup.log: no 'completed' line by 04:30"
        );
        assert!(w.tick(0, deadline + 60_000).is_empty(), "once");
        let late = w.seen(&script("backup completed"), 0, deadline + 600_000);
        assert_eq!(titles(&late), ["Expected line late"]);
        assert!(
            w.seen(&script("backup completed"), 0, deadline + 700_000)
                .is_empty()
        );
    }

    #[test]
    fn a_deadline_passed_before_the_start_is_not_judged_and_a_line_in_time_is_quiet() {
        let t0 = Local::ymd_hms(2026, 11, 22, 5, 0, 0).unwrap();
        let w0 = wall_of(t0);
        let mut w = Watch::new(with_expect("04:30"), 0);
        w.start(w0);
        assert!(w.tick(0, w0 + 1000).is_empty(), "04:30 passed before");
        let next = wall_of(t0.plus(DAY_S - 30 * 60));
        assert!(w.seen(&script("completed"), 0, next - 3_600_000).is_empty());
        assert!(w.tick(0, next + 1000).is_empty(), "the line came in time");
        assert_eq!(
            titles(&w.tick(0, next + 86_400_000 + 1000)),
            ["Expected line missing"],
            "the day after, none came"
        );
    }

    const DAY_S: i64 = 86_400;
    const NIGHT: &str = include_str!("../../tests/data/night-2024-03-09.txt");

    /// Feeds a log to the watch line by line at its timestamps (arrival
    /// = timestamp), ticking when the watch asks to, as the actor does.
    fn drive(w: &mut Watch, log: &str) -> Vec<Notice> {
        let rules = crate::ekos::Rules::with_user(&[]).unwrap();
        let filter = crate::ekos::Filter::default();
        let mut out = Vec::new();
        let mut wall = None;
        let mut base: Option<(u64, u64)> = None;
        for l in log.lines() {
            let rec = crate::ekos::parse(l);
            if let Some(t) = rec.time.and_then(Local::parse_timestamp) {
                let ms = rec.time.unwrap()[20..23].parse::<u64>().unwrap();
                wall = Some(wall_of(t) + ms);
            }
            let wall = wall.unwrap();
            let (w0, m0) = *base.get_or_insert((wall, 1_000_000));
            let mono = |wall: u64| m0 + (wall - w0);
            // Time passes up to this line: ticks where the watch wakes.
            loop {
                let (s, x) = w.wake_at(wall - 1);
                let next = [s, x.map(mono)].into_iter().flatten().min();
                match next {
                    Some(t) if t < mono(wall) => {
                        out.extend(w.tick(t, t - m0 + w0));
                    }
                    _ => break,
                }
            }
            let events = match crate::format::classify_line(
                &rules,
                &filter,
                crate::format::EventMode::On,
                l,
            ) {
                Some(Some(ev)) => vec![(0, ev)],
                _ => vec![],
            };
            let seen = Seen {
                source: 0,
                route: 0,
                path: Arc::from(Path::new("/logs/log_21-00-00.txt")),
                file: FileId(0),
                ends: vec![],
                modified_ms: None,
                arrived: Instant::now(),
                text: format!("{l}\n"),
                events,
            };
            out.extend(w.seen(&seen, mono(wall), wall));
        }
        out
    }

    #[test]
    fn the_actors_night_card_is_the_replays_card_and_the_summary_goes_final() {
        let mut s = settings();
        s.silence = Threshold::Auto;
        s.incident_window = Duration::ZERO;
        s.context_lines = 0;
        let mut w = Watch::new(s, 0);
        let out = drive(&mut w, NIGHT);
        let cards: Vec<&Notice> = out.iter().filter(|n| n.key.starts_with("night:")).collect();
        assert!(cards.len() > 10, "a live body per chunk: {}", cards.len());
        let (last, live) = cards.split_last().unwrap();
        assert!(live.iter().all(|n| n.key == "night:2024-03-09"
            && n.policy
                == Policy::Upsert {
                    min_interval: card::CARD_EDIT_INTERVAL
                }));
        assert_eq!(
            (last.key.as_str(), last.policy),
            ("night:2024-03-09", Policy::Final)
        );
        let rules = crate::ekos::Rules::with_user(&[]).unwrap();
        let replayed = card::replay(
            NIGHT.lines(),
            &rules,
            &NightSettings::default(),
            Threshold::Auto,
        );
        assert_eq!(replayed.len(), 1);
        assert_eq!(last.body, replayed[0].card, "the same numbers as --replay");
        let desc = last.body["embeds"][0]["description"].as_str().unwrap();
        assert!(desc.contains("9 frames"), "{desc}");
        // The 40-minute stop in mid-exposure: one alarm, one resumption,
        // and the card lists it.
        let t = titles(&out);
        assert_eq!(
            t.iter().filter(|t| t.starts_with("Ekos silent")).count(),
            1,
            "{t:?}"
        );
        assert_eq!(
            t.iter()
                .filter(|t| t.starts_with("Ekos is writing again"))
                .count(),
            1
        );
        assert!(last.body.to_string().contains("Silences"), "{}", last.body);
        assert!(w.card().is_none(), "the night is over");
    }

    #[test]
    fn night_card_off_posts_no_card_and_keeps_the_rest() {
        let mut s = settings();
        s.silence = Threshold::Auto;
        s.card = false;
        let mut w = Watch::new(s, 0);
        let out = drive(&mut w, NIGHT);
        assert!(out.iter().all(|n| !n.key.starts_with("night:")));
        assert!(w.card().is_none());
        assert!(
            titles(&out).iter().any(|t| t.starts_with("Ekos silent")),
            "the silence alarm does not depend on the card"
        );
    }

    #[test]
    fn night_end_closes_the_card_by_the_clock_and_work_after_it_opens_none() {
        let mut s = settings();
        s.silence = Threshold::Off;
        s.night = NightSettings {
            start: crate::localtime::TimeOfDay(12 * 3600),
            end: Some(crate::localtime::TimeOfDay(21 * 3600 + 30 * 60)),
        };
        let mut w = Watch::new(s, 0);
        // The night up to its second frame (21:14), then nothing.
        let part: String = NIGHT.lines().take(24).map(|l| format!("{l}\n")).collect();
        let out = drive(&mut w, &part);
        assert!(out.iter().all(|n| n.policy != Policy::Final));
        let n = w.card().expect("running").clone();
        let end = wall_of(w.settings.night.end_of(n.night));
        let wake = w.wake_at(end - 2_000).1.unwrap();
        assert_eq!(wake, end + 1000);
        let out = w.tick(0, wake);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].policy, Policy::Final);
        let desc = out[0].body["embeds"][0]["description"].as_str().unwrap();
        assert!(
            desc.contains("2 frames") && desc.contains("night_end"),
            "{desc}"
        );
        // More work the same night, after night_end: no new card.
        let more: String = NIGHT
            .lines()
            .skip(24)
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect();
        let out = drive(&mut w, &more.replace("2024-03-09T21:", "2024-03-09T22:"));
        assert!(
            out.iter().all(|n| !n.key.starts_with("night:")),
            "{:?}",
            titles(&out)
        );
    }

    /// A scripted step: an Ekos line or a line of the script log.
    #[derive(Debug, Clone)]
    enum Step {
        Ekos(String),
        Script(String),
    }

    /// splitmix64: a seeded generator for the scripts.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn restart_settings() -> Settings {
        let mut s = with_expect("21:30");
        let second = expect::Spec {
            name: Some("archive".into()),
            file: "backup.log".into(),
            pattern: "archived".into(),
            by: "22:45".into(),
            weekdays: None,
        };
        s.expect
            .extend(expect::from_specs(&[second], Path::new("/etc")).unwrap());
        s.expect_routes = vec![0, 0];
        s.silence = Threshold::Auto;
        s
    }

    /// The real night with random stops (silences), repeated warnings
    /// (incidents), script lines (some deadlines met, some missed) and,
    /// after its shutdown, work resumed in the same night; times in ms.
    fn night_script(rng: &mut Rng) -> Vec<(u64, Step)> {
        let mut out = Vec::new();
        let mut extra = 0;
        let resumed: Vec<&str> = NIGHT.lines().skip(1).take(30).collect();
        let lines = NIGHT.lines().chain(resumed.iter().copied());
        let mut prev = 0;
        for (i, l) in lines.enumerate() {
            let rec = crate::ekos::parse(l);
            let t = rec.time.and_then(Local::parse_timestamp).unwrap();
            let mut at = wall_of(t) + extra;
            if i >= 68 {
                // The resumed work: after 23:00, before noon.
                at += 2 * 3_600_000;
            }
            at = at.max(prev);
            if rng.below(8) == 0 {
                extra += rng.below(30 * 60) * 1000;
                at += extra;
            }
            if rng.below(6) == 0 {
                let text = ["backup started", "backup completed", "backup archived"]
                    [rng.below(3) as usize];
                out.push((at, Step::Script(text.into())));
                at += rng.below(3000);
            }
            out.push((at, Step::Ekos(l.to_string())));
            if rng.below(5) == 0 {
                for k in 0..rng.below(4) {
                    out.push((
                        at + k * 20_000,
                        Step::Ekos(
                            "[2024-03-09T22:30:03.813 CET INFO ][      org.kde.kstars.ekos.align] - \"Solver Failed.\""
                                .into(),
                        ),
                    ));
                }
            }
            prev = out.last().unwrap().0;
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }

    fn step_seen(step: &Step, rules: &crate::ekos::Rules) -> Seen {
        match step {
            Step::Script(l) => script(l),
            Step::Ekos(l) => {
                let events = match crate::format::classify_line(
                    rules,
                    &crate::ekos::Filter::default(),
                    crate::format::EventMode::On,
                    l,
                ) {
                    Some(Some(ev)) => vec![(0, ev)],
                    _ => vec![],
                };
                Seen {
                    events,
                    ..seen(0, std::slice::from_ref(l), vec![])
                }
            }
        }
    }

    /// Runs `script` through a watch, ticking where it asks, until `end`;
    /// restarts it (state through JSON into a new watch) before step
    /// `restart`. Returns the notices (without their attachments: the
    /// context lines are not saved) and the final state.
    fn run_script(
        settings: &Settings,
        script: &[(u64, Step)],
        end: u64,
        restart: Option<usize>,
    ) -> (Vec<(usize, String, Policy, serde_json::Value)>, State) {
        let rules = crate::ekos::Rules::with_user(&[]).unwrap();
        let w0 = script[0].0 - 60_000;
        let m0 = 1_000_000;
        let mono = |wall: u64| m0 + (wall - w0);
        let mut w = Watch::new(settings.clone(), 0);
        w.start(w0);
        let mut out = Vec::new();
        let advance = |w: &mut Watch, wall: u64, out: &mut Vec<Notice>| loop {
            let (s, x) = w.wake_at(wall - 1);
            match [s, x.map(mono)].into_iter().flatten().min() {
                Some(t) if t < mono(wall) => out.extend(w.tick(t, t - m0 + w0)),
                _ => break,
            }
        };
        for (i, (wall, step)) in script.iter().enumerate() {
            advance(&mut w, *wall, &mut out);
            if restart == Some(i) {
                let json = serde_json::to_vec(&w.snapshot(mono(*wall), *wall)).unwrap();
                let (state, problems) = State::parse(&json);
                assert!(problems.is_empty(), "{problems:?}");
                let mut again = Watch::new(settings.clone(), 0);
                again.resume(state, mono(*wall), *wall);
                again.start(*wall);
                w = again;
            }
            out.extend(w.seen(&step_seen(step, &rules), mono(*wall), *wall));
        }
        advance(&mut w, end, &mut out);
        let notices = out
            .into_iter()
            .map(|n| (n.route, n.key, n.policy, n.body))
            .collect();
        (notices, w.snapshot(mono(end), end))
    }

    /// Whether a restart at `wall` would fall just after an `[[expect]]`
    /// deadline, before the tick that judges it: the restart then judges
    /// it after its grace, later than an uninterrupted run.
    fn just_after_a_deadline(s: &Settings, wall: u64) -> bool {
        let t = local(wall);
        s.expect.iter().any(|e| {
            let d = t.secs as i64 - e.by.0 as i64;
            (0..=2).contains(&d)
        })
    }

    /// The oracle: a restart anywhere between two Ekos lines (state saved,
    /// read back, a new watch) gives the same notices and the same final
    /// state as the uninterrupted run.
    #[test]
    fn a_restart_at_a_random_point_changes_no_notice_and_no_count() {
        let s = restart_settings();
        let mut covered = (0, 0, 0, 0);
        for seed in 0..24 {
            let mut rng = Rng(seed);
            let script = night_script(&mut rng);
            let end = wall_of(Local::ymd_hms(2024, 3, 10, 13, 0, 0).unwrap());
            let (want, want_state) = run_script(&s, &script, end, None);
            let candidates: Vec<usize> = (1..script.len())
                .filter(|i| matches!(script[*i].1, Step::Ekos(_)))
                .filter(|i| !just_after_a_deadline(&s, script[*i].0))
                .collect();
            for _ in 0..3 {
                let k = candidates[rng.below(candidates.len() as u64) as usize];
                let (got, got_state) = run_script(&s, &script, end, Some(k));
                assert_eq!(
                    got.len(),
                    want.len(),
                    "seed {seed}, restart before step {k}: {:#?}",
                    got.iter().zip(&want).find(|(a, b)| a != b)
                );
                for (a, b) in got.iter().zip(&want) {
                    assert_eq!(a, b, "seed {seed}, restart before step {k}");
                }
                assert_eq!(
                    got_state, want_state,
                    "seed {seed}, restart before step {k}"
                );
            }
            let keys: Vec<&str> = want.iter().map(|(_, k, _, _)| k.as_str()).collect();
            covered.0 += keys.iter().any(|k| k.starts_with("expect:")) as u32;
            covered.1 += keys.iter().any(|k| k.starts_with("silence/")) as u32;
            covered.2 += keys.iter().any(|k| k.starts_with("incident/")) as u32;
            covered.3 += (keys.iter().filter(|k| k.starts_with("night:")).count() > 20) as u32;
        }
        assert!(
            covered.0 > 6 && covered.1 > 6 && covered.2 > 6 && covered.3 > 6,
            "the scripts exercise every part: {covered:?}"
        );
    }

    #[test]
    fn the_state_file_keeps_what_it_can_read() {
        let inc = Incident {
            route: 0,
            rule: "indi-driver-crashed".into(),
            key: "incident/indi-driver-crashed/1".into(),
            severity: Severity::Critical,
            title: "INDI driver X crashed".into(),
            file: "log.txt".into(),
            last_line: "x".into(),
            count: 2,
            first_ms: 1,
            last_ms: 2,
        };
        // The first format: a bare array of open incidents.
        let old = serde_json::to_vec(&vec![inc.clone()]).unwrap();
        let (st, problems) = State::parse(&old);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(st.incidents, vec![inc.clone()]);
        assert_eq!(st.session, Session::new());
        // Torn (a write cut short) or garbage: one problem, nothing kept.
        for bad in [&b"{\"version\":2,\"incid"[..], b"\x00\x01", b"42"] {
            let (st, problems) = State::parse(bad);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(st, State::default());
        }
        // One part unreadable (another version's card): the rest is kept.
        let mut w = Watch::new(settings(), 0);
        w.seen(
            &seen(0, &exposing(), vec![]),
            0,
            wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap()),
        );
        let mut state = w.snapshot(5, 6);
        state.incidents = vec![inc.clone()];
        let mut v = serde_json::to_value(&state).unwrap();
        v["card"] = serde_json::json!({"night": "soon"});
        v["incidents"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"what": 1}));
        v["future_key"] = serde_json::json!(true);
        let (st, problems) = State::parse(&serde_json::to_vec(&v).unwrap());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(st.card, None);
        assert_eq!(st.incidents, vec![inc]);
        assert_eq!((st.session.clone(), st.mono_ms), (state.session.clone(), 5));
        assert!(st.session.work_in_progress());
        v["card"] = serde_json::Value::Null;
        v["version"] = 99.into();
        let (_, problems) = State::parse(&serde_json::to_vec(&v).unwrap());
        assert!(problems.iter().any(|p| p.contains("newer")), "{problems:?}");
    }

    fn capture_line(msg: &str) -> String {
        line("org.kde.kstars.ekos.capture", &format!("\"{msg}\""))
    }

    fn field_of(n: &Notice, name: &str) -> String {
        n.body["embeds"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["value"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Down 20 min in mid-exposure: no "Ekos silent" for the downtime, the
    /// quiet counted from the restart, a line read back is activity, and
    /// the card goes on with the same key and its numbers.
    #[test]
    fn a_restart_after_downtime_in_mid_exposure_is_no_silence_and_the_card_goes_on() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let mut s = settings();
        s.silence = Threshold::Auto;
        let mut w = Watch::new(s.clone(), 0);
        w.start(w0);
        w.seen(&seen(0, &exposing(), vec![]), 0, w0);
        let out = w.seen(
            &seen(0, &[capture_line("Received image 1 out of 5.")], vec![]),
            5 * MIN,
            w0 + 5 * MIN,
        );
        let key = out.last().unwrap().key.clone();
        assert_eq!(field_of(out.last().unwrap(), "Tonight"), "1 frames, 5 min");
        w.seen(
            &seen(
                0,
                &[capture_line("Capturing 300.000-second Ha image...")],
                vec![],
            ),
            5 * MIN + 1000,
            w0 + 5 * MIN + 1000,
        );
        let state = w.snapshot(6 * MIN, w0 + 6 * MIN);
        // Back 20 min later (the continued monotonic clock too).
        let back = 26 * MIN;
        let mut w = Watch::new(s, 0);
        w.resume(
            State::parse(&serde_json::to_vec(&state).unwrap()).0,
            back,
            w0 + back,
        );
        w.start(w0 + back);
        assert!(
            w.tick(back + 1000, w0 + back + 1000).is_empty(),
            "the daemon was down, not Ekos"
        );
        let allowed = 7 * MIN; // 300 s + download + margin
        assert_eq!(w.wake_at(w0 + back).0, Some(back + allowed + 1));
        // A line read back at start is activity: no "writing again".
        let out = w.seen(
            &seen(0, &[capture_line("Received image 2 out of 5.")], vec![]),
            back + 2000,
            w0 + back + 2000,
        );
        assert_eq!(
            titles(&out),
            ["Night of 2024-03-09 — in progress"],
            "only the card"
        );
        assert_eq!(out[0].key, key, "the same message");
        assert_eq!(field_of(&out[0], "Tonight"), "2 frames, 10 min");
        assert!(matches!(out[0].policy, Policy::Upsert { .. }));
        // Then a real silence, counted from that line.
        w.seen(
            &seen(
                0,
                &[capture_line("Capturing 300.000-second Ha image...")],
                vec![],
            ),
            back + 3000,
            w0 + back + 3000,
        );
        let out = w.tick(back + 3000 + allowed + 1, w0 + back + 3000 + allowed + 1);
        assert_eq!(
            titles(&out),
            ["Ekos silent for 7 min during a 300 s exposure of M31"]
        );
    }

    #[test]
    fn check_replays_the_end_of_the_log_for_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.txt");
        std::fs::write(&p, exposing().join("\n")).unwrap();
        let s = replay_summary(&p).unwrap();
        assert!(s.contains("M31") && s.contains("Ha 300 s"), "{s}");
        assert_eq!(replay_summary(&dir.path().join("none")), None);
    }

    /// A chunk of `source` whose copy carries `bytes` bytes of text.
    fn chunk_of(source: usize, bytes: usize) -> Chunk {
        let text = "x".repeat(bytes.saturating_sub(1));
        Chunk {
            file: crate::checkpoint::FileId(1),
            source,
            route: 0,
            label: None,
            start: 0,
            lines: vec![crate::tail::Line {
                end: bytes as u64,
                text,
            }],
            shown: vec![None],
        }
    }

    /// Seeded random offers and receives against a model of the channel:
    /// a copy goes in exactly when both the chunk count and the byte count
    /// leave room; one that does not is counted lost when it is the Ekos
    /// log's (as for a full channel); the byte count is always what the
    /// channel holds, and is 0 once the receiver has drained it.
    #[test]
    fn the_tap_bounds_the_channel_in_bytes_and_never_leaks_them() {
        for seed in 1..=40u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (chunks, budget) = (1 + next(8) as usize, 1 + next(5000) as usize);
            let (tap, rx, counters) = channel_with(&settings(), chunks, budget);
            let mut model: VecDeque<usize> = VecDeque::new();
            let mut lost = 0;
            for _ in 0..400 {
                if next(3) == 0 {
                    let got = rx.try_recv().ok();
                    assert_eq!(got.as_ref().map(|s| s.text.len()), model.pop_front());
                    // What the night watch does with each copy it takes.
                    if let Some(s) = got {
                        counters.bytes.fetch_sub(s.text.len(), Ordering::SeqCst);
                    }
                } else {
                    let (source, bytes) = (next(2) as usize, 1 + next(2000) as usize);
                    tap.offer(&mut chunk_of(source, bytes), Path::new("/x"), None);
                    let held: usize = model.iter().sum();
                    if model.len() < chunks && held + bytes <= budget {
                        model.push_back(bytes);
                    } else if source == 0 {
                        lost += 1;
                    }
                }
                let held: usize = model.iter().sum();
                assert_eq!(counters.bytes.load(Ordering::SeqCst), held, "seed {seed}");
                assert!(held <= budget);
                assert_eq!(counters.lost.load(Ordering::SeqCst), lost, "seed {seed}");
            }
            // The night watch ends with copies still in the channel: its
            // end of the channel gives their bytes back.
            drop(Drained {
                rx,
                counters: counters.clone(),
            });
            assert_eq!(counters.bytes.load(Ordering::SeqCst), 0, "seed {seed}");
            // Offers after it ended change nothing.
            tap.offer(&mut chunk_of(0, 10), Path::new("/x"), None);
            assert_eq!(counters.bytes.load(Ordering::SeqCst), 0, "seed {seed}");
        }
    }

    /// The actor takes the bytes of every copy off as it receives it, and
    /// gives back those of copies still queued when it is stopped; a copy
    /// offered after it ended is refused without counting.
    #[test]
    fn the_night_watch_gives_back_the_bytes_it_received_or_left_behind() {
        for stop in [Control::Shutdown, Control::Abort] {
            let (tap, rx, counters) = channel_with(&settings(), 64, SEEN_BYTES);
            for i in 0..40 {
                tap.offer(&mut chunk_of(i % 2, 1000 + i), Path::new("/x"), None);
            }
            assert!(counters.bytes.load(Ordering::SeqCst) > 40_000);
            let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
            let (ntx, _notices) = crossbeam_channel::bounded(1024);
            let nw = NightWatch::new(
                settings(),
                0,
                Box::new(FakeClock::default()),
                Arc::new(Stats::default()),
                counters.clone(),
            );
            // The stop is there before the first copy is looked at: some
            // copies are received, the rest are left in the channel.
            ctl.send(stop).unwrap();
            std::thread::spawn(move || nw.run(rx, ctl_rx, ntx))
                .join()
                .unwrap();
            assert_eq!(counters.bytes.load(Ordering::SeqCst), 0);
            tap.offer(&mut chunk_of(0, 500), Path::new("/x"), None);
            assert_eq!(counters.bytes.load(Ordering::SeqCst), 0);
        }
        // Drained by the actor while it runs.
        let (tap, rx, counters) = channel_with(&settings(), 64, SEEN_BYTES);
        let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
        let (ntx, _notices) = crossbeam_channel::bounded(1024);
        let nw = NightWatch::new(
            settings(),
            0,
            Box::new(FakeClock::default()),
            Arc::new(Stats::default()),
            counters.clone(),
        );
        let h = std::thread::spawn(move || nw.run(rx, ctl_rx, ntx));
        for i in 0..200 {
            tap.offer(&mut chunk_of(1, 100 + i), Path::new("/x"), None);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.bytes.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "the bytes never came back");
            std::thread::yield_now();
        }
        ctl.send(Control::Shutdown).unwrap();
        h.join().unwrap();
    }

    /// The Ekos log growing unread (its webhook behind) keeps the silence
    /// alarm away like lines do; when it stops growing the alarm comes,
    /// saying its last lines are unread; growth again is the log writing
    /// again.
    #[test]
    fn growth_of_an_unread_ekos_log_is_activity_and_its_end_a_silence() {
        let mut w = Watch::new(settings(), 0);
        w.seen(&seen(0, &exposing(), vec![]), 0, 0);
        for t in 1..=10 {
            assert!(w.log_grew(t * MIN, 0).is_empty());
            assert!(w.tick(t * MIN + MIN, 0).is_empty(), "minute {t}");
        }
        // 2 min allowed: it stopped growing at minute 10.
        assert!(w.tick(12 * MIN, 0).is_empty());
        let out = w.tick(12 * MIN + 1, 0);
        assert_eq!(
            titles(&out),
            vec!["Ekos silent for 2 min during a 300 s exposure of M31".to_string()]
        );
        assert!(
            out[0].body["embeds"][0]["description"]
                .as_str()
                .unwrap()
                .contains("not read yet"),
            "{}",
            out[0].body
        );
        assert!(w.tick(20 * MIN, 0).is_empty(), "once");
        let back = w.log_grew(21 * MIN, 0);
        assert_eq!(
            titles(&back),
            vec!["Ekos is writing again after 11 min".to_string()]
        );
    }

    /// A storm of one WARN line (a number changing inside) fed through
    /// [`Watch::seen`]: no incident for the first two, one opened at the
    /// third with a count of three and no ping, edited with each repeat,
    /// ended after a window without repeats with the count of all; a line
    /// the source's filter drops, or a source without warning storms,
    /// makes none.
    #[test]
    fn a_storm_of_one_warning_is_one_incident_with_its_count() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let warn = |i: u64| {
            format!(
                "[2024-03-09T21:14:{:02}.000 CET WARN ][  org.kde.kstars.indi] - \"Timeout after {} s\"",
                i % 60,
                i + 3
            )
        };
        let mut s = settings();
        let errors_only = crate::ekos::Filter::new(&crate::ekos::FilterSpec {
            min_level: Some("error".into()),
            ..Default::default()
        })
        .unwrap();
        s.warning_storms = vec![
            Some(crate::ekos::Filter::default()),
            None,
            Some(errors_only),
        ];
        let mut w = Watch::new(s, 0);
        let mut keys = std::collections::BTreeSet::new();
        let mut last = None;
        for i in 0..20u64 {
            // One chunk per line on source 0, two lines per chunk on 1 and 2.
            let mut out = w.seen(&seen(0, &[warn(i)], vec![]), i * 1000, w0 + i * 1000);
            for other in [1, 2] {
                let lines = [warn(i), warn(i + 100)];
                assert!(
                    w.seen(&seen(other, &lines, vec![]), i * 1000, w0 + i * 1000)
                        .is_empty()
                );
            }
            if i < 2 {
                assert!(out.is_empty(), "line {i}: {:?}", titles(&out));
                continue;
            }
            assert_eq!(out.len(), 1, "line {i}");
            let n = out.pop().unwrap();
            let title = titles(std::slice::from_ref(&n))[0].clone();
            assert_eq!(
                title,
                format!("Repeated warning: Timeout after # s (×{})", i + 1)
            );
            assert!(matches!(n.policy, Policy::Upsert { .. }));
            assert_eq!(
                n.body["content"],
                serde_json::Value::Null,
                "no ping: {}",
                n.body
            );
            keys.insert(n.key.clone());
            last = Some(n);
        }
        assert_eq!(keys.len(), 1, "one incident: {keys:?}");
        assert!(last.unwrap().body.to_string().contains("20 times"));
        assert_eq!(w.incidents().open_count(), 1);
        // A window without repeats ends it, with its count.
        let end = w0 + 19_000 + 600_001;
        let out = w.tick(20 * MIN, end);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].policy, Policy::Final));
        assert_eq!(titles(&out), ["Repeated warning: Timeout after # s (×20)"]);
        // A new storm after it starts from one again.
        for i in 0..2 {
            assert!(
                w.seen(&seen(0, &[warn(i)], vec![]), 0, end + i * 1000)
                    .is_empty()
            );
        }
        let out = w.seen(&seen(0, &[warn(7)], vec![]), 0, end + 2000);
        assert_eq!(titles(&out), ["Repeated warning: Timeout after # s (×3)"]);
        assert_ne!(out[0].key, *keys.first().unwrap());
    }

    /// The lines `from..to` of a file whose lines end at `ends`.
    fn chunk_seen(
        lines: &[(String, Option<EventPart>)],
        ends: &[u64],
        from: usize,
        to: usize,
        modified_ms: Option<u64>,
    ) -> Seen {
        Seen {
            file: FileId(7),
            ends: ends[from..to].to_vec(),
            modified_ms,
            events: (from..to)
                .filter_map(|i| Some((i - from, lines[i].1.clone()?)))
                .collect(),
            ..seen(
                0,
                &lines[from..to]
                    .iter()
                    .map(|(l, _)| l.clone())
                    .collect::<Vec<_>>(),
                vec![],
            )
        }
    }

    /// What a night counted: frames in the session and on the card,
    /// incidents' counts, events by severity on the card.
    fn counted(w: &Watch) -> (u32, Option<u32>, Vec<u64>, String) {
        (
            w.session().counts().total_frames(),
            w.card().map(|n| n.counts(w.session()).total_frames()),
            w.incidents().saved().iter().map(|i| i.count).collect(),
            format!("{:?}", w.card().map(|n| n.counts(w.session()))),
        )
    }

    /// Seeded: a night of frames and driver crashes read in chunks of
    /// random size; at a random point the daemon dies, its state as last
    /// saved (at an earlier chunk), and the next run reads again from a
    /// random point at or before the saved one (what Discord accepted), in
    /// other chunks (partly overlapping those before). Every frame and
    /// every crash is counted once: the counts are those of the run
    /// without the crash.
    #[test]
    fn lines_read_again_after_a_restart_are_not_counted_twice() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let mut s = settings();
        s.silence = Threshold::Off;
        for seed in 0..40 {
            let mut rng = Rng(seed);
            let mut lines: Vec<(String, Option<EventPart>)> =
                exposing().into_iter().map(|l| (l, None)).collect();
            for i in 1..=30 {
                lines.push((capture_line("Capturing 60.000-second L image..."), None));
                if rng.below(4) == 0 {
                    lines.push(("indi driver crashed".into(), Some(crash())));
                }
                lines.push((
                    capture_line(&format!("Received image {i} out of 30.")),
                    None,
                ));
            }
            let mut ends = Vec::new();
            let mut end = 0;
            for (l, _) in &lines {
                end += l.len() as u64 + 1;
                ends.push(end);
            }
            let n = lines.len();
            // Chunk boundaries of the first run.
            let mut cuts = vec![0];
            while *cuts.last().unwrap() < n {
                let c = *cuts.last().unwrap() + 1 + rng.below(6) as usize;
                cuts.push(c.min(n));
            }
            let at = |i: usize| (i as u64 * 1000, w0 + i as u64 * 1000);
            let mut whole = Watch::new(s.clone(), 0);
            for c in cuts.windows(2) {
                let (t, wall) = at(c[1]);
                whole.seen(&chunk_seen(&lines, &ends, c[0], c[1], None), t, wall);
            }
            let want = counted(&whole);
            assert_eq!(want.0, 30);
            // The crash after chunk `died`, the state saved after `saved`.
            let died = 1 + rng.below(cuts.len() as u64 - 1) as usize;
            let saved = rng.below(died as u64 + 1) as usize;
            let mut w = Watch::new(s.clone(), 0);
            let mut state = w.snapshot(0, w0);
            for (k, c) in cuts.windows(2).take(died).enumerate() {
                let (t, wall) = at(c[1]);
                w.seen(&chunk_seen(&lines, &ends, c[0], c[1], None), t, wall);
                if k + 1 == saved {
                    state = w.snapshot(t, wall);
                }
            }
            let (back, wall) = at(n + 100);
            let mut w = Watch::new(s.clone(), 0);
            w.resume(
                State::parse(&serde_json::to_vec(&state).unwrap()).0,
                back,
                wall,
            );
            // Read again from what Discord accepted: at most what was saved.
            let mut from = rng.below(cuts[saved] as u64 + 1) as usize;
            while from < n {
                let to = (from + 1 + rng.below(7) as usize).min(n);
                let (t, wall) = at(n + 100 + to);
                w.seen(&chunk_seen(&lines, &ends, from, to, None), t, wall);
                // Sometimes a chunk is read twice more (a reload).
                if rng.below(5) == 0 {
                    let again = from.saturating_sub(rng.below(4) as usize);
                    w.seen(&chunk_seen(&lines, &ends, again, to, None), t, wall);
                }
                from = to;
            }
            assert_eq!(counted(&w), want, "seed {seed}: died {died}, saved {saved}");
        }
    }

    /// A chunk that overlaps what was observed counts only its new lines;
    /// one entirely observed changes nothing and posts nothing.
    #[test]
    fn a_partly_overlapping_chunk_counts_only_its_new_lines() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let mut lines: Vec<(String, Option<EventPart>)> =
            exposing().into_iter().map(|l| (l, None)).collect();
        for i in 1..=3 {
            lines.push((capture_line(&format!("Received image {i} out of 3.")), None));
        }
        let ends: Vec<u64> = (1..=lines.len() as u64).map(|i| i * 100).collect();
        let mut w = Watch::new(settings(), 0);
        w.seen(&chunk_seen(&lines, &ends, 0, 3, None), 0, w0);
        assert_eq!(w.session().counts().total_frames(), 1);
        assert!(
            w.seen(&chunk_seen(&lines, &ends, 0, 3, None), 1, w0)
                .is_empty()
        );
        w.seen(&chunk_seen(&lines, &ends, 1, 5, None), 2, w0);
        assert_eq!(w.session().counts().total_frames(), 3);
        assert_eq!(w.card().unwrap().counts(w.session()).total_frames(), 3);
        // The same file rewritten (a new identity) is new content.
        let again = Seen {
            file: FileId(8),
            ..chunk_seen(&lines, &ends, 2, 5, None)
        };
        w.seen(&again, 3, w0);
        assert_eq!(w.session().counts().total_frames(), 6);
    }

    #[test]
    fn a_copy_without_its_first_lines_keeps_the_rest_and_their_events() {
        let lines: Vec<(String, Option<EventPart>)> = vec![
            ("a".into(), Some(crash())),
            ("bb".into(), None),
            ("ccc".into(), Some(crash())),
            ("".into(), None),
        ];
        let s = chunk_seen(&lines, &[2, 5, 9, 10], 0, 4, Some(5));
        for k in 0..=4 {
            let r = s.without_first(k);
            assert_eq!(
                r.lines().collect::<Vec<_>>(),
                s.lines().skip(k).collect::<Vec<_>>()
            );
            assert_eq!(r.ends, s.ends[k..]);
            let evs: Vec<usize> = r.events.iter().map(|(i, _)| *i + k).collect();
            let want: Vec<usize> = s
                .events
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| *i >= k)
                .collect();
            assert_eq!(evs, want);
            assert_eq!((r.file, r.modified_ms), (s.file, s.modified_ms));
        }
    }

    /// Ekos stops during a Discord outage: the alarm is raised; the
    /// backlog read when Discord is back (its file not modified since the
    /// alarm), or dropped on the way, does not end it; a line of the file
    /// modified after the alarm does, once; across a restart too.
    #[test]
    fn old_lines_read_after_a_silence_do_not_end_it() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        for restart in [false, true] {
            let mut w = Watch::new(settings(), 0);
            w.seen(&seen(0, &exposing(), vec![]), 0, w0);
            // The log grows unread, then stops at minute 3.
            for t in 1..=3 {
                assert!(w.log_grew(t * MIN, w0 + t * MIN).is_empty());
            }
            let stopped = w0 + 3 * MIN;
            let out = w.tick(5 * MIN + 1, w0 + 5 * MIN + 1);
            assert_eq!(titles(&out).len(), 1, "the alarm");
            if restart {
                let state = w.snapshot(6 * MIN, w0 + 6 * MIN);
                w = Watch::new(settings(), 0);
                w.resume(
                    State::parse(&serde_json::to_vec(&state).unwrap()).0,
                    7 * MIN,
                    w0 + 7 * MIN,
                );
            }
            // Discord back at minute 9: the backlog, written by minute 3.
            let backlog = Seen {
                modified_ms: Some(stopped),
                ..seen(0, &[capture_line("Received image 1 out of 5.")], vec![])
            };
            let out = w.seen(&backlog, 9 * MIN, w0 + 9 * MIN);
            assert!(
                titles(&out).iter().all(|t| t.starts_with("Night of")),
                "only the card: {:?}",
                titles(&out)
            );
            assert!(w.lines_lost(9 * MIN, w0 + 9 * MIN, stopped).is_empty());
            assert!(
                w.tick(10 * MIN, w0 + 10 * MIN).is_empty(),
                "no second alarm"
            );
            assert_eq!(w.session().counts().total_frames(), 1, "still counted");
            // Ekos writes again at minute 12.
            let fresh = Seen {
                modified_ms: Some(w0 + 12 * MIN),
                ..seen(
                    0,
                    &[capture_line("Capturing 300.000-second Ha image...")],
                    vec![],
                )
            };
            let out = w.seen(&fresh, 12 * MIN, w0 + 12 * MIN);
            let again: Vec<String> = titles(&out)
                .into_iter()
                .filter(|t| t.starts_with("Ekos is writing again"))
                .collect();
            assert_eq!(
                again,
                ["Ekos is writing again after 9 min"],
                "restart {restart}"
            );
            let out = w.seen(&fresh, 12 * MIN + 1, w0 + 12 * MIN + 1);
            assert!(
                titles(&out).iter().all(|t| !t.starts_with("Ekos is")),
                "once"
            );
        }
    }

    /// A line written just after the alarm may carry a modification time
    /// a tick older than the alarm (the kernel's coarse clock; seen in a
    /// loaded test run with the same millisecond): it still ends the
    /// silence, as do lines dropped on the way with that time. A state
    /// saved with the alarm's own time (`silence_alarm_wall`) still tells
    /// the backlog from new lines.
    #[test]
    fn a_line_stamped_by_the_coarse_file_clock_just_after_the_alarm_ends_the_silence() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let alarm = w0 + 2 * MIN + 1;
        for dropped in [false, true] {
            let mut w = Watch::new(settings(), 0);
            w.seen(&seen(0, &exposing(), vec![]), 0, w0);
            assert_eq!(titles(&w.tick(2 * MIN + 1, alarm)).len(), 1);
            let out = if dropped {
                w.lines_lost(2 * MIN + 5, alarm + 4, alarm - 4)
            } else {
                let line = Seen {
                    modified_ms: Some(alarm - 4),
                    ..seen(0, &[capture_line("Received image 1 out of 5.")], vec![])
                };
                w.seen(&line, 2 * MIN + 5, alarm + 4)
            };
            assert!(
                titles(&out)
                    .iter()
                    .any(|t| t.starts_with("Ekos is writing again")),
                "dropped {dropped}: {:?}",
                titles(&out)
            );
        }
        let mut w = Watch::new(settings(), 0);
        w.seen(&seen(0, &exposing(), vec![]), 0, w0);
        assert_eq!(titles(&w.tick(2 * MIN + 1, alarm)).len(), 1);
        let mut json = serde_json::to_value(w.snapshot(3 * MIN, w0 + 3 * MIN)).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("silence_new_after");
        map.insert("silence_alarm_wall".into(), alarm.into());
        let (state, problems) = State::parse(&serde_json::to_vec(&json).unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(state.silence_new_after, Some(alarm));
        let mut w = Watch::new(settings(), 0);
        w.resume(state, 4 * MIN, w0 + 4 * MIN);
        let backlog = Seen {
            modified_ms: Some(w0 + 10),
            ..seen(0, &[capture_line("Received image 1 out of 5.")], vec![])
        };
        let out = w.seen(&backlog, 5 * MIN, w0 + 5 * MIN);
        assert!(
            titles(&out).iter().all(|t| !t.starts_with("Ekos is")),
            "{:?}",
            titles(&out)
        );
    }

    /// Lines dropped on the way (the night watch behind) end a silence
    /// only if their file was modified after the alarm.
    #[test]
    fn dropped_lines_end_a_silence_only_if_written_after_it() {
        let w0 = wall_of(Local::ymd_hms(2024, 3, 9, 21, 0, 0).unwrap());
        let mut w = Watch::new(settings(), 0);
        w.seen(&seen(0, &exposing(), vec![]), 0, w0);
        assert_eq!(titles(&w.tick(2 * MIN + 1, w0 + 2 * MIN + 1)).len(), 1);
        assert!(w.lines_lost(3 * MIN, w0 + 3 * MIN, w0 + MIN).is_empty());
        let out = w.lines_lost(4 * MIN, w0 + 4 * MIN, w0 + 4 * MIN);
        assert_eq!(titles(&out), ["Ekos is writing again after 4 min"]);
        // Unknown times (u64::MAX) are writing, as before.
        let mut w = Watch::new(settings(), 0);
        w.seen(&seen(0, &exposing(), vec![]), 0, w0);
        w.tick(2 * MIN + 1, w0 + 2 * MIN + 1);
        assert_eq!(titles(&w.lines_lost(3 * MIN, w0, u64::MAX)).len(), 1);
    }

    /// Incidents off: an error's context goes in a message of its own
    /// (not pinging: the line's embed pings), at most one per rule and
    /// route a minute; a warning has none; `context_lines = 0` none.
    #[test]
    fn with_incidents_off_an_errors_context_is_a_message_of_its_own() {
        let mut s = settings();
        s.incident_window = Duration::ZERO;
        let mut w = Watch::new(s.clone(), 0);
        let pinging = EventPart {
            mention: Some(Mention::Role(42)),
            ..crash()
        };
        let chunk = |i: usize| {
            seen(
                0,
                &[format!("before {i}"), format!("crash {i}")],
                vec![(1, pinging.clone())],
            )
        };
        let out = w.seen(&chunk(1), 0, 1_000);
        assert_eq!(out.len(), 1, "{:?}", titles(&out));
        let n = &out[0];
        assert_eq!(n.policy, Policy::New);
        assert_eq!(titles(&out), ["Context of: INDI driver X crashed"]);
        assert_eq!(n.body.get("content"), None, "no ping: {}", n.body);
        let text = String::from_utf8_lossy(&n.files[0].data);
        assert_eq!(text, "before 1\ncrash 1\n");
        assert!(n.files[0].name.ends_with(".log"));
        // The same rule within a minute: none; after it: one.
        assert!(w.seen(&chunk(2), 1, 30_000).is_empty());
        let out = w.seen(&chunk(3), 2, 61_001);
        assert_eq!(out.len(), 1);
        let text = String::from_utf8_lossy(&out[0].files[0].data);
        assert_eq!(text, "crash 2\nbefore 3\ncrash 3\n", "the last 3 lines");
        // A warning has no context.
        let warning = EventPart {
            severity: Severity::Warning,
            rule: "guide-star-lost".into(),
            ..crash()
        };
        assert!(
            w.seen(&seen(0, &["lost".into()], vec![(0, warning)]), 3, 200_000)
                .is_empty()
        );
        // No context lines: nothing.
        s.context_lines = 0;
        let mut w = Watch::new(s, 0);
        assert!(w.seen(&chunk(1), 0, 1_000).is_empty());
    }

    /// A capture sequence run by hand (no scheduler), aborted, then the
    /// mount parked (by Ekos or as the INDI driver reports it): the night
    /// is over at the park, live as in `--replay`.
    #[test]
    fn a_manual_sequence_ends_at_the_park_live_as_in_the_replay() {
        let cap = |t: &str, m: &str| {
            format!("[2024-03-09T{t}.000 CET INFO ][    org.kde.kstars.ekos.capture] - \"{m}\"")
        };
        for park in [
            "[2024-03-09T21:00:09.000 CET INFO ][      org.kde.kstars.ekos.mount] - \"Mount parked.\"",
            "[2024-03-09T21:00:09.000 CET INFO ][           org.kde.kstars.indi] - EQMod Mount :  \"[INFO] Mount is parked. \"",
        ] {
            let log = [
                cap("21:00:00", "Capturing 1.000-second Ha image..."),
                cap("21:00:02", "Received image 1 out of 3."),
                cap("21:00:03", "Capturing 1.000-second Ha image..."),
                cap("21:00:05", "Received image 2 out of 3."),
                cap("21:00:06", "CCD capture aborted"),
                park.to_string(),
            ]
            .join("\n");
            let mut s = settings();
            s.silence = Threshold::Auto;
            s.incident_window = Duration::ZERO;
            s.context_lines = 0;
            let mut w = Watch::new(s, 0);
            let out = drive(&mut w, &log);
            let last = out
                .iter()
                .rfind(|n| n.key == "night:2024-03-09")
                .expect("a card");
            assert_eq!(last.policy, Policy::Final, "{park}: {}", last.body);
            assert!(w.card().is_none(), "{park}: the night is over");
            let rules = crate::ekos::Rules::with_user(&[]).unwrap();
            let replayed = card::replay(
                log.lines(),
                &rules,
                &NightSettings::default(),
                Threshold::Auto,
            );
            assert_eq!(replayed.len(), 1);
            assert_eq!(
                last.body, replayed[0].card,
                "{park}: the same card as --replay"
            );
            let desc = last.body["embeds"][0]["description"].as_str().unwrap();
            assert!(desc.contains("ended: mount parked"), "{desc}");
            assert!(desc.contains("2 frames"), "{desc}");
        }
    }
}
