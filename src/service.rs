//! Glue with the service manager: logging, signals, sd_notify and the
//! shared counters behind the `STATUS=` line and the watchdog.
//!
//! Logging goes to journald through its native protocol when the process
//! was started by systemd with its output on the journal (`JOURNAL_STREAM`),
//! so records keep their priority and carry fields such as the followed
//! file; otherwise it goes to stderr. SIGINT and SIGTERM ask for a clean
//! stop and SIGHUP for a reload (through `signal-hook`'s self-pipe). The
//! watchdog is only fed when both worker threads answered the previous
//! ping, so a hung thread gets the service restarted.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crossbeam_channel::Sender;
use signal_hook::iterator::Signals;

/// Messages from the supervisor (main thread) to a worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Answer by storing the number in your heartbeat slot.
    Ping(u64),
    /// Stop. The sender first posts what it holds, within a bounded time.
    Shutdown,
    /// Stop now without posting more (a reload follows; lines it held are
    /// read again from the checkpoint by the new pipeline).
    Abort,
}

/// What the main thread learns from signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// Counters shared by all threads; they feed `STATUS=` and the watchdog.
#[derive(Debug, Default)]
pub struct Stats {
    pub lines_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub watcher_pong: AtomicU64,
    pub sender_pong: AtomicU64,
    pub nightwatch_pong: AtomicU64,
    /// The Ekos session as the night watch sees it.
    session: Mutex<Option<String>>,
    /// The targets of a night (day number) in the order first seen, for
    /// the name of a forum route's post of that night.
    night_targets: Mutex<(i64, Vec<String>)>,
    /// What the heartbeat judges health by.
    pub health: crate::heartbeat::Signals,
    followed: Mutex<Vec<String>>,
    last_post: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
    /// When `STATUS=` was last sent, and whether it is out of date.
    last_publish: Mutex<Option<std::time::Instant>>,
    status_dirty: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stats {
    pub fn set_followed(&self, files: Vec<String>) {
        *lock(&self.followed) = files;
        self.publish();
    }

    /// The session summary shown in `STATUS=` (the night watch's model).
    pub fn set_session(&self, summary: Option<String>) {
        *lock(&self.session) = summary;
        self.publish();
    }

    /// Target `name` was worked on during night `night`.
    pub fn note_target(&self, night: i64, name: &str) {
        let mut t = lock(&self.night_targets);
        if t.0 != night {
            *t = (night, Vec::new());
        }
        if !t.1.iter().any(|n| n == name) {
            t.1.push(name.to_string());
        }
    }

    /// The targets of night `night` seen so far.
    pub fn targets_of(&self, night: i64) -> Vec<String> {
        let t = lock(&self.night_targets);
        if t.0 == night {
            t.1.clone()
        } else {
            Vec::new()
        }
    }

    pub fn followed(&self) -> Vec<String> {
        lock(&self.followed).clone()
    }

    pub fn record_post(&self, lines: usize) {
        self.lines_sent.fetch_add(lines as u64, Ordering::Relaxed);
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_post) = Some(SystemTime::now());
        self.publish();
    }

    /// The last error, shown in `STATUS=` (world-readable): scrubbed of
    /// anything that looks like a URL path or a token, whoever wrote it.
    pub fn record_error(&self, e: Option<String>) {
        *lock(&self.last_error) = e.map(|e| crate::webhook::redact_secrets(&e));
        self.publish();
    }

    /// The one-line status shown by `systemctl status`.
    pub fn status_line(&self) -> String {
        let followed = lock(&self.followed);
        let files = match followed.len() {
            0 => "no file yet".to_string(),
            1 => followed[0].clone(),
            n => format!("{n} files"),
        };
        let last = match *lock(&self.last_post) {
            Some(t) => format!("last post {}", hhmmss(t)),
            None => "nothing posted yet".to_string(),
        };
        let session = match &*lock(&self.session) {
            // Capped: a job name comes from the log and STATUS= is one line.
            Some(s) if s.chars().count() > 160 => {
                format!("; Ekos: {}…", s.chars().take(160).collect::<String>())
            }
            Some(s) => format!("; Ekos: {s}"),
            None => String::new(),
        };
        let err = match &*lock(&self.last_error) {
            Some(e) => format!("; last error: {e}"),
            None => String::new(),
        };
        format!(
            "Following {files}; {} lines sent; {last}{session}{err}",
            self.lines_sent.load(Ordering::Relaxed)
        )
    }

    /// Sends `STATUS=` to systemd (a no-op outside systemd), at most five
    /// times a second: a backlog posts messages faster than anyone reads a
    /// status line. What is skipped is sent by [`Stats::flush_status`].
    pub fn publish(&self) {
        let now = std::time::Instant::now();
        {
            let mut last = lock(&self.last_publish);
            if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(200)) {
                self.status_dirty.store(true, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        self.status_dirty.store(false, Ordering::Relaxed);
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let line = self.status_line();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
        }
    }

    /// Sends a status line that [`Stats::publish`] held back, if any (the
    /// sender calls this before it waits).
    pub fn flush_status(&self) {
        if self.status_dirty.swap(false, Ordering::Relaxed) {
            *lock(&self.last_publish) = None;
            self.publish();
        }
    }
}

/// UTC time of day, for the status line (journald shows local times).
fn hhmmss(t: SystemTime) -> String {
    let s = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// A minimal stderr logger for interactive runs and tests.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            // One write per line (stderr is unbuffered: writeln! would
            // make one per piece, ten thousand at a large start-up).
            let line = format!("ekos-log-monitor: {level}: {}\n", r.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

/// Installs the journald logger when our stderr is the journal, else the
/// stderr logger. Safe to call once per process.
pub fn init_logging(level: log::LevelFilter) {
    let journal = if systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new()
            .ok()
            .map(|j| j.with_syslog_identifier("ekos-log-monitor".into()))
    } else {
        None
    };
    let _ = match journal {
        Some(j) => log::set_boxed_logger(Box::new(Ours(j))),
        None => log::set_boxed_logger(Box::new(Ours(StderrLogger))),
    };
    log::set_max_level(level);
}

/// Keeps debug records of dependencies (ureq, rustls: chatty) out.
struct Ours<L>(L);

fn ours(m: &log::Metadata) -> bool {
    m.level() <= log::max_level()
        && (m.level() <= log::Level::Info || m.target().starts_with("ekos_log_monitor"))
}

impl<L: log::Log> log::Log for Ours<L> {
    fn enabled(&self, m: &log::Metadata) -> bool {
        ours(m) && self.0.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if ours(r.metadata()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// What a signal asks the main thread to do.
fn signal_meaning(sig: libc::c_int) -> Option<Signal> {
    match sig {
        libc::SIGINT | libc::SIGTERM => Some(Signal::Stop),
        libc::SIGHUP => Some(Signal::Reload),
        _ => None,
    }
}

/// Routes SIGINT/SIGTERM (stop) and SIGHUP (reload) into `tx`.
///
/// signal-hook's handler only writes to a self-pipe; the `signals` thread
/// turns what arrives into messages. A signal repeated before the thread
/// ran is delivered once, and a further SIGTERM during the shutdown only
/// queues a `Stop` nobody reads any more: the shutdown keeps its bounded
/// time (systemd's `TimeoutStopSec=` is the backstop).
pub fn install_signal_handlers(tx: Sender<Signal>) -> std::io::Result<()> {
    let mut signals = Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if let Some(s) = signal_meaning(sig) {
                    if tx.send(s).is_err() {
                        break;
                    }
                }
            }
        })?;
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: with
/// `follow = "all"` every followed file holds a descriptor (so a rotated
/// file can still be read to its end).
pub fn raise_nofile_limit() {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Two malloc arenas: glibc otherwise gives threads up to 8 per core,
/// each costing resident memory on an idle daemon; two keep the watcher
/// (which allocates lines) and the sender (which frees them) from
/// contending on one lock during a backlog.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives memory freed after start-up (configuration parsing, rule
/// validation, the initial scan) back to the system.
pub fn trim_memory() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// sd_notify, ignoring errors (there is nothing better to do with them).
pub fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(states);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_reload_signals() {
        assert_eq!(signal_meaning(libc::SIGINT), Some(Signal::Stop));
        assert_eq!(signal_meaning(libc::SIGTERM), Some(Signal::Stop));
        assert_eq!(signal_meaning(libc::SIGHUP), Some(Signal::Reload));
        assert_eq!(signal_meaning(libc::SIGUSR1), None);
    }

    #[test]
    fn status_line_never_carries_a_token() {
        let token = "Zx9-Qw8_Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm-MnBvCxZ_LkJhGfDsAqWeRtYuIo1";
        let stats = Stats::default();
        stats.record_error(Some(format!(
            "POST https://discord.com/api/webhooks/123456789012345678/{token}: timed out"
        )));
        let line = stats.status_line();
        assert!(!line.contains(&token[..16]), "{line}");
        assert!(line.contains("last error: POST https://discord.com/api/webhooks/123456789012345678/****: timed out"), "{line}");
        stats.record_error(Some(format!("raw token {token}")));
        assert!(!stats.status_line().contains(&token[..16]));
        stats.record_error(None);
        assert!(!stats.status_line().contains("last error"));
    }
}
