//! The night watch: the thread that reads along with the watcher and writes
//! the daemon's own messages ([`Notice`]s): the silence alarm, incidents
//! (repeats of one rule folded into one edited message, with the context
//! lines of an error attached) and, through the session model, the state
//! shown in `STATUS=`.
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
//! The decisions are pure ([`Watch`], over [`silence`] and [`incidents`]),
//! fed with the times of an injectable [`Clock`], so they are tested in
//! simulated time; [`NightWatch::run`] is the thin actor around them.

pub mod card;
pub mod expect;
pub mod incidents;
pub mod silence;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, never};

use crate::config::Config;
use crate::ekos::Severity;
use crate::format::EventPart;
use crate::notice::{Alert, Notice, Policy, RESOLVED_COLOR, context_file, human, quoted_line};
use crate::service::{Control, Stats};
use crate::session::Session;
use crate::watcher::Chunk;

use incidents::{Incident, Incidents, Occurrence};
use silence::{Silence, Threshold};

/// Capacity of the watcher → night-watch channel, in chunks: room for a
/// burst; beyond, copies are dropped (see [`Tap`]).
pub const SEEN_CHANNEL: usize = 64;
/// Files whose last lines are kept for context attachments.
const CONTEXT_FILES: usize = 64;
/// The night watch's state file (open incidents), in the state directory.
pub const FILE: &str = "nightwatch.json";

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
    /// When the watcher read the lines.
    pub arrived: Instant,
    /// The lines, each ended by `\n`.
    pub text: String,
    /// Lines that are events: index of the line and the event (with its
    /// mention, which the line's own embed no longer carries).
    pub events: Vec<(usize, EventPart)>,
}

impl Seen {
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split_terminator('\n')
    }
}

/// The watcher's end of the channel: never blocks.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: Sender<Seen>,
    /// Copies dropped because the night watch was behind.
    lost: Arc<AtomicU64>,
    /// Incidents are on: an event of warning and above pings from its
    /// incident, not from its line's embed.
    incidents: bool,
    /// Only dropped copies of the Ekos log count (for the silence alarm).
    ekos_source: Option<usize>,
}

impl Tap {
    /// Copies the chunk's lines and events; takes the mention off the
    /// line embeds of events that incidents cover (the incident's first
    /// message carries it, once). Never blocks: a copy the night watch has
    /// no room for is dropped and counted.
    pub fn offer(&self, chunk: &mut Chunk, path: &Path) {
        let mut text =
            String::with_capacity(chunk.lines.iter().map(|l| l.text.len() + 1).sum::<usize>());
        for l in &chunk.lines {
            text.push_str(&l.text);
            text.push('\n');
        }
        let mut events = Vec::new();
        for (i, shown) in chunk.shown.iter_mut().enumerate() {
            if let Some(Some(ev)) = shown {
                events.push((i, ev.clone()));
                if self.incidents && ev.severity >= Severity::Warning {
                    ev.mention = None;
                }
            }
        }
        let seen = Seen {
            source: chunk.source,
            route: chunk.route,
            path: Arc::from(path),
            arrived: Instant::now(),
            text,
            events,
        };
        let ekos = self.ekos_source == Some(chunk.source);
        if let Err(TrySendError::Full(_)) = self.tx.try_send(seen) {
            if ekos {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
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
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        Settings {
            ekos_source: cfg.sources.iter().position(|s| s.name == "ekos"),
            silence: cfg.silence_after,
            incident_window: cfg.incident_window,
            context_lines: cfg.context_lines,
            state_file: None,
        }
    }
}

/// The pure core: the session, the silence alarm, incidents and the last
/// lines of each file, fed lines and ticks with their times.
pub struct Watch {
    settings: Settings,
    session: Session,
    silence: Silence,
    incidents: Incidents,
    /// Per file: its last `context_lines` lines; the least recently
    /// written file is forgotten beyond [`CONTEXT_FILES`].
    context: HashMap<Arc<Path>, (u64, VecDeque<String>)>,
    context_clock: u64,
    /// Route of the Ekos source (where its silence alarm goes).
    ekos_route: usize,
    /// Save even if no incident opened or ended (at the end).
    dirty: bool,
    saved_generation: u64,
}

impl Watch {
    pub fn new(settings: Settings, ekos_route: usize) -> Watch {
        Watch {
            incidents: Incidents::new(settings.incident_window),
            settings,
            session: Session::new(),
            silence: Silence::default(),
            context: HashMap::new(),
            context_clock: 0,
            ekos_route,
            dirty: false,
            saved_generation: 0,
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn incidents(&self) -> &Incidents {
        &self.incidents
    }

    pub fn restore(&mut self, saved: Vec<Incident>) {
        self.incidents.restore(saved);
    }

    /// Whether incidents opened or ended since the last call (counts
    /// are saved with the next opening or ending, and at the end).
    pub fn take_dirty(&mut self) -> bool {
        let g = self.incidents.generation();
        std::mem::replace(&mut self.saved_generation, g) != g || std::mem::take(&mut self.dirty)
    }

    fn allowed(&self) -> Option<Duration> {
        Silence::allowed(self.settings.silence, &self.session)
    }

    /// The lines of one chunk, arrived at `arrived_ms`; `wall` for incidents.
    pub fn seen(&mut self, seen: &Seen, arrived_ms: u64, wall: u64) -> Vec<Notice> {
        let mut out = Vec::new();
        let ekos = self.settings.ekos_source == Some(seen.source);
        let n = self.settings.context_lines;
        let total = seen.lines().count();
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
            if ekos {
                self.session.observe(&crate::ekos::parse(line), arrived_ms);
                if let Some(quiet) = self.silence.line(arrived_ms, line) {
                    out.push(self.writing_again(quiet));
                }
            }
            let next_event = events.peek().map(|(at, _)| *at);
            let is_event = next_event == Some(i);
            if n > 0 && (i >= keep_from || next_event.is_some_and(|e| e - i < n)) {
                ring_lines.push(line);
            }
            if !is_event {
                continue;
            }
            let (_, ev) = events.next().expect("peeked");
            self.push_context(&seen.path, &ring_lines);
            ring_lines.clear();
            let context = (n > 0 && ev.severity >= Severity::Error)
                .then(|| self.context_of(&seen.path, &file));
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
        out
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
            ring.push_back(l.to_string());
        }
    }

    fn context_of(&self, path: &Path, name: &str) -> crate::discord::NewFile {
        let lines = self.context.get(path).map(|(_, r)| r);
        context_file(name, lines.into_iter().flatten().map(String::as_str))
    }

    /// Time passed: a silence, an incident without repeats.
    pub fn tick(&mut self, now_ms: u64, wall: u64) -> Vec<Notice> {
        let mut out = self.incidents.tick(wall);
        if let Some(alarm) = self.silence.check(now_ms, self.allowed()) {
            out.push(self.silent(alarm));
        }
        out
    }

    /// When to tick next: (monotonic ms for the silence, wall ms for the
    /// incidents).
    pub fn wake_at(&self) -> (Option<u64>, Option<u64>) {
        (
            self.silence.wake_at(self.allowed()),
            self.incidents.wake_at(),
        )
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
        // The Ekos log is the file written last before the silence.
        self.context
            .iter()
            .max_by_key(|(_, (t, _))| *t)
            .map(|(p, _)| {
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
    lost: Arc<AtomicU64>,
    state_file: Option<PathBuf>,
}

/// The channel between the watcher and the night watch; the counter of
/// Ekos chunks dropped goes to [`NightWatch::new`].
pub fn channel(settings: &Settings) -> (Tap, Receiver<Seen>, Arc<AtomicU64>) {
    let (tx, rx) = crossbeam_channel::bounded(SEEN_CHANNEL);
    let lost = Arc::new(AtomicU64::new(0));
    (
        Tap {
            tx,
            lost: lost.clone(),
            incidents: !settings.incident_window.is_zero(),
            ekos_source: settings.ekos_source,
        },
        rx,
        lost,
    )
}

impl NightWatch {
    /// `ekos_route`: where the silence alarm goes (the Ekos source's route).
    pub fn new(
        settings: Settings,
        ekos_route: usize,
        clock: Box<dyn Clock>,
        stats: Arc<Stats>,
        lost: Arc<AtomicU64>,
    ) -> NightWatch {
        let state_file = settings.state_file.clone();
        let mut watch = Watch::new(settings, ekos_route);
        if let Some(path) = &state_file {
            if let Ok(bytes) = std::fs::read(path) {
                match serde_json::from_slice::<Vec<Incident>>(&bytes) {
                    Ok(saved) => watch.restore(saved),
                    Err(e) => log::warn!("ignoring {}: {e}", path.display()),
                }
            }
        }
        NightWatch {
            watch,
            clock,
            stats,
            lost,
            state_file,
        }
    }

    fn save(&mut self) {
        if !self.watch.take_dirty() {
            return;
        }
        let Some(path) = &self.state_file else {
            return;
        };
        let bytes = serde_json::to_vec(&self.watch.incidents().saved())
            .expect("incidents always serialize");
        if let Err(source) = crate::sender::notices::write_atomic(path, &bytes) {
            let e = NightWatchError::Save {
                path: path.display().to_string(),
                source,
            };
            log::warn!("{e}; an open incident may be posted again after a restart");
        }
    }

    fn publish(&self) {
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
        self.save();
    }

    /// The actor loop: until the line channel closes (the watcher ended)
    /// or `Shutdown`/`Abort`. Answers pings for the watchdog.
    pub fn run(
        mut self,
        lines: Receiver<Seen>,
        control: Receiver<Control>,
        notices: Sender<Notice>,
    ) {
        let mut lines = lines;
        let mut seen_lost = 0;
        let mut summary = String::new();
        loop {
            let (silence_at, incident_at) = self.watch.wake_at();
            let now = self.clock.now_ms();
            let wall = self.clock.wall_ms();
            let mut wait: Option<u64> = silence_at.map(|t| t.saturating_sub(now));
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
                        self.watch.dirty = true;
                        self.save();
                        return;
                    }
                },
                recv(lines) -> seen => match seen {
                    Ok(seen) => {
                        let arrived = self.clock.at_ms(seen.arrived);
                        let wall = self.clock.wall_ms();
                        let out = self.watch.seen(&seen, arrived, wall);
                        self.emit(out, &notices);
                    }
                    Err(_) => {
                        lines = never();
                    }
                },
                recv(timer) -> _ => {}
            }
            // Copies dropped while the watch was behind were lines: the
            // Ekos log was not silent.
            let lost = self.lost.load(Ordering::Relaxed);
            if lost != seen_lost {
                seen_lost = lost;
                let now = self.clock.now_ms();
                if let Some(q) = self
                    .watch
                    .silence
                    .line(now, "(lines not seen: the night watch was behind)")
                {
                    let n = self.watch.writing_again(q);
                    self.emit(vec![n], &notices);
                }
            }
            let out = self.watch.tick(self.clock.now_ms(), self.clock.wall_ms());
            self.emit(out, &notices);
            let s = self.watch.session().summary();
            if s != summary && self.watch.settings.ekos_source.is_some() {
                summary = s;
                self.publish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn line(cat: &str, msg: &str) -> String {
        format!("[2024-03-09T21:14:06.000 CET INFO ][{cat:>30}] - {msg}")
    }

    fn seen(source: usize, lines: &[String], events: Vec<(usize, EventPart)>) -> Seen {
        Seen {
            source,
            route: 0,
            path: Arc::from(Path::new("/logs/log_21-00-00.txt")),
            arrived: Instant::now(),
            text: lines.iter().map(|l| format!("{l}\n")).collect(),
            events,
        }
    }

    fn settings() -> Settings {
        Settings {
            ekos_source: Some(0),
            silence: Threshold::After(Duration::from_secs(120)),
            incident_window: Duration::from_secs(600),
            context_lines: 3,
            state_file: None,
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
            rule: "indi-driver-crashed".into(),
            more: 0,
        }
    }

    #[test]
    fn only_the_ekos_source_feeds_the_session_and_the_silence_alarm() {
        let mut w = Watch::new(settings(), 0);
        assert!(w.seen(&seen(1, &exposing(), vec![]), 0, 0).is_empty());
        assert!(
            !w.session().work_in_progress(),
            "a script log is no session"
        );
        assert_eq!(w.wake_at(), (None, None));
        w.seen(&seen(0, &exposing(), vec![]), 0, 0);
        assert!(w.session().work_in_progress());
        assert_eq!(w.wake_at().0, Some(120_001));
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

    #[test]
    fn check_replays_the_end_of_the_log_for_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.txt");
        std::fs::write(&p, exposing().join("\n")).unwrap();
        let s = replay_summary(&p).unwrap();
        assert!(s.contains("M31") && s.contains("Ha 300 s"), "{s}");
        assert_eq!(replay_summary(&dir.path().join("none")), None);
    }
}
