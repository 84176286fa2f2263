//! Understanding Ekos (KStars) and INDI log lines, and deciding which ones matter.
//!
//! The daemon follows log files line by line; this module turns each line into a
//! [`Record`] (time, level, module, message), decides with [`Rules`] whether the
//! line is an [`Event`] worth a Discord notification, and with [`Filter`] whether
//! the line is forwarded at all. It is deliberately pure (no I/O, no threads, no
//! global state) so that every decision can be unit tested from plain strings,
//! and it is fast because it runs on every line of logs that can grow by
//! hundreds of megabytes a night when verbose driver logging is on: [`parse`] is
//! hand written and allocation free, and the built-in rules are matched with a
//! single [`RegexSet`] pass, behind a prefilter (one vectorised search for
//! all the rules' anchors) that most lines fail.
//!
//! Formats understood by [`parse`] (checked by their first byte, so any other
//! line costs a single comparison before being kept as an unparsed record):
//!
//! | first byte | format | example |
//! | --- | --- | --- |
//! | `[` | modern KStars (`KSUtils::Logging`) | `[2023-06-16T09:27:47.970 CEST INFO ][   org.kde.kstars.ekos.capture] - "Received image 2 out of 17."` |
//! | digit | KStars before ~3.0 | `2017-06-21T08:04:58.505 - DEBG - Capture:  "Received image 1 out of 3."` |
//! | `A`–`Z` | INDI driver log file (`~/.indi/logs/<date>/<driver>/*.log`) | `ERROR\t12.345678 sec\t: [EQMod Mount] Failed to read position.` |
//! | other | unparsed: kept whole, `level` is `None` | a continuation line of a multi-line message |
//!
//! INDI drivers report their own severity inside the message (`[ERROR] ...`,
//! `[WARNING] ...`), while KStars logs all of them at `INFO`; [`parse`] uses the
//! embedded tag as the record's level when the KStars level is `INFO` or
//! `DEBG`, so "drop debug lines but keep driver errors" is a plain `min_level`.
//!
//! # Built-in rules
//!
//! Rules are tried in this order; the first that matches decides. All patterns
//! are matched case-insensitively against the record's message (the whole line
//! for unparsed records). Titles never exceed 250 characters.
//!
//! | name | matches | severity | title |
//! | --- | --- | --- | --- |
//! | `indi-driver-crashed` | KStars `INDI driver "X" crashed!` (also unquoted, and `KStars detected INDI driver X crashed`) | critical | INDI driver X crashed |
//! | `indi-driver-terminated` | indiserver `Driver X: Terminated after #N restarts.` | critical | INDI driver X terminated after N restarts |
//! | `indi-driver-killed` | indiserver `Driver X: process P killed with signal S - name` | critical | INDI driver X killed by signal S |
//! | `indi-driver-exited` | indiserver `Driver X: process P exited with status S` | error | INDI driver X exited with status S |
//! | `indi-driver-eof` | indiserver `Driver X: stderr EOF` (or `stdin EOF`) | error | INDI driver X exited (stderr EOF) |
//! | `indi-driver-pipe-error` | indiserver `Driver X: stderr <error>`, `stdin <error>`, `Error on stderr: <error>` | error | INDI driver X pipe error: error |
//! | `indi-driver-start-failed` | indiserver `Driver X: execlp <exe>: <error>` | error | INDI driver X failed to start: error |
//! | `indi-driver-died` | old indiserver `Child process P died` | error | INDI driver process P died |
//! | `indi-driver-restart` | indiserver `Driver X: restart #N` | warning | INDI driver X restarted (#N) |
//! | `guide-aborted` | `Autoguiding aborted.` (also after every PHD2 abort) | error | Autoguiding aborted |
//! | `guide-star-lost` | `Lost track of the guide star...`, PHD2 `PHD2: Star Lost.` (`... Trying to reacquire[ for Ns].`) | warning | Lost track of the guide star |
//! | `guide-suspended` | `Guiding suspended.` | warning | Guiding suspended |
//! | `guide-calibration-failed` | `Calibration rejected...`, `Warning: job 'X' calibration failed.`, PHD2 `PHD2: Calibration Failed (R).` / `PHD2: Calibration turned to looping, failed.` | error | Guide calibration failed |
//! | `guide-connection-lost` | PHD2 `The host disconnected.` / `The connection was refused by the peer. Make sure the PHD2 is running...` / `The host was not found. Please check the host name and port settings in Guide options.` / `PHD2 Error: Equipment not connected.` | error | Guider connection lost |
//! | `guide-settle-failed` | PHD2 `PHD2: Settling failed (R).` | warning | Guide settling failed: R |
//! | `dither-failed` | `Dithering failed.`, PHD2 `PHD2: There was no dithering response from PHD2, but continue guiding.` | warning | Dithering failed |
//! | `phd2-alert` | a PHD2 alert of type error, `PHD2 error: M` | error | PHD2: M |
//! | `capture-failed` | `Capture failed. Check INDI Control Panel for details.` | error | Capture failed |
//! | `capture-aborted` | `CCD capture aborted` (or `Camera capture aborted`) | warning | Capture aborted |
//! | `capture-suspended` | `CCD capture suspended` | warning | Capture suspended |
//! | `solver-failed` | `Solver Failed` / `Solver failed after N seconds.` / `Solver timed out...` | warning | Plate solving failed |
//! | `image-received` | `Received image N out of M.` | info | Image N/M received |
//! | `solver-success` | `Astrometric solver is successful.` / `Solver completed after X seconds.` | success | Plate solved |
//! | `autofocus-complete` | `Autofocus complete after N iterations.` | success | Autofocus complete after N iterations |
//! | `autofocus-failed` | `Autofocus failed...` | warning | Autofocus failed |
//! | `meridian-flip-completed` | `Meridian flip completed` | success | Meridian flip completed |
//! | `meridian-flip-failed` | `Meridian flip failed...` | error | Meridian flip failed |
//! | `meridian-flip-started` | `Meridian flip started` / `Starting meridian flip` | info | Meridian flip started |
//! | `job-complete` | `Job 'X' is complete.` | success | Job X complete |
//! | `job-failed` | `Job 'X' is terminated due to errors.` | error | Job X failed |
//! | `job-aborted` | `Job 'X' is aborted.` / `Job 'X' has not been processed upon scheduler stop, marking aborted.` | warning | Job X aborted |
//! | `weather-alert` | `Weather alert detected...` / `Job 'X' cannot start because weather status is...` | error | Weather alert |
//! | `mount-park-failed` | `Mount parking error.` / `Mount unparking error.` / `...park operation timed out on last attempt.` | error | Mount parking failed |
//! | `dome-park-failed` | `Dome parking error.` / `Dome unparking failed...` | error | Dome parking failed |
//! | `shutdown-failed` | `Shutdown procedure failed, aborting...` / `Shutdown script failed...` | error | Shutdown failed |
//! | `mount-parked` | `Mount parked.` | info | Mount parked |
//! | `mount-parking` | `Parking mount in progress...` | info | Mount parking |
//! | `mount-unparked` | `Mount unparked.` | info | Mount unparked |
//! | `dome-parked` | `Dome parked.` | info | Dome parked |
//! | `dome-unparked` | `Dome unparked.` | info | Dome unparked |
//! | `dome-parking` | `Parking dome...` / `Unparking dome...` | info | Dome moving |
//! | `guide-calibration-complete` | `Calibration completed.` | success | Guider calibrated |
//! | `guide-started` | `Autoguiding started.` / `Guiding resumed.`, PHD2 `PHD2: Guiding started.` / `PHD2: Guiding resumed.` / `PHD2: Star found, guiding resumed.` / `PHD2: Star found, guiding is resuming...` / `PHD2: Settling complete, Guiding Started.` | info | Guiding |
//! | `guide-stopped` | PHD2 `PHD2: Guiding Stopped.` (an abort is also logged `Autoguiding aborted.`) | info | Guiding stopped |
//! | `autofocus-started` | `Autofocus starting...` / `Autofocus in progress...` | info | Autofocus started |
//! | `job-started` | `Executing Job "X"` | info | Job X started |
//! | `job-capturing` | `Job 'X' capture is in progress...` | info | Job X capturing |
//! | `slew-started` | `Job 'X' is slewing to target.` | info | Slewing to X |
//! | `slew-complete` | `Job 'X' slew is complete.` / `Job 'X' repositioning is complete.` | info | Slew to X complete |
//! | `scheduler-started` | `Scheduler started.` | info | Scheduler started |
//! | `scheduler-sleeping` | `Sleeping until observation job...` / `Observatory scheduled for (soft) shutdown until...` | info | Scheduler sleeping |
//! | `shutdown-started` | `Starting shutdown process...` | info | Observatory shutdown started |
//! | `shutdown-complete` | `Shutdown complete.` | success | Observatory shutdown complete |
//! | `indi-error` | level error: an embedded `[ERROR]` or an INDI log file `ERROR` line | error | `<device>: <message>` |
//! | `critical` | any `CRIT` line | critical | `Critical: <message, 200 chars>` |
//! | `fatal` | any `FATL` line | critical | `Fatal: <message, 200 chars>` |
//!
//! `WARN` lines are deliberately not events: Ekos warns about many transient,
//! self-correcting conditions.
//!
//! The texts come from KStars' sources (`kstars/ekos/scheduler/schedulerprocess.cpp`,
//! `ekos/guide/guide.cpp`, `internalguide/` and `externalguide/phd2.cpp` (its
//! texts from 2016 on), `ekos/capture/`, `ekos/focus/focus.cpp`,
//! `ekos/align/align.cpp`, `ekos/mount/`) and INDI's `indiserver/` (`DvrInfo.cpp`,
//! `LocalDvrInfo.cpp`, and the older `indiserver.c`). Every `kstars.notifyrc` event
//! that KStars accompanies with a log line has a rule; see [`crate::session`] for the
//! state those lines move. Users add their own rules with [`RuleSpec`]
//! (for instance for a translated KStars, whose messages are localised).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexSet};
use serde::Deserialize;

/// How far into a message an embedded INDI tag is looked for: the tag follows a
/// short device name and maybe a timestamp, and bounding the scan keeps long
/// debug lines cheap.
const TAG_WINDOW: usize = 128;
/// Length kept of a message quoted in a title.
const MESSAGE_CHARS: usize = 200;
/// Discord rejects embed titles over 256 characters; leave room for an ellipsis.
const TITLE_CHARS: usize = 250;

/// Severity of a log line as written by KStars, Qt or an INDI driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
    Fatal,
}

impl Level {
    /// Parses a level name as written in logs or configuration, ignoring case:
    /// `DEBUG`/`DEBG`, `INFO`, `WARN`/`WARNING`, `ERROR`, `CRIT`/`CRITICAL`,
    /// `FATL`/`FATAL`; Qt's `UNKN` counts as info.
    pub fn parse(name: &str) -> Option<Level> {
        const NAMES: [(&str, Level); 11] = [
            ("debg", Level::Debug),
            ("info", Level::Info),
            ("warn", Level::Warn),
            ("crit", Level::Critical),
            ("fatl", Level::Fatal),
            ("debug", Level::Debug),
            ("warning", Level::Warn),
            ("error", Level::Error),
            ("critical", Level::Critical),
            ("fatal", Level::Fatal),
            ("unkn", Level::Info),
        ];
        let name = name.trim();
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, level)| level)
    }

    /// Lowercase name, as accepted by [`Level::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Critical => "critical",
            Level::Fatal => "fatal",
        }
    }
}

impl FromStr for Level {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Level, RuleError> {
        Level::parse(s).ok_or_else(|| RuleError::InvalidLevel {
            value: s.to_string(),
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line, split into its parts. Every field borrows from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Timestamp as written, time zone included (`2023-06-16T09:27:47.970 CEST`);
    /// for INDI driver logs, seconds since the driver started (`12.345678`).
    pub time: Option<&'a str>,
    /// Effective level; `None` only for unparsed lines.
    pub level: Option<Level>,
    /// Qt category (`org.kde.kstars.ekos.capture`), the module of old logs
    /// (`Capture`) or the device of an INDI driver log line (`EQMod Mount`).
    pub module: Option<&'a str>,
    /// Message, without surrounding quotes and whitespace; the whole line when
    /// unparsed.
    pub message: &'a str,
    /// The line without its line terminator.
    pub raw: &'a str,
}

impl Record<'_> {
    /// True for lines in none of the known formats, such as continuation lines
    /// of a multi-line message.
    pub fn is_unparsed(&self) -> bool {
        self.level.is_none()
    }
}

/// Splits one log line into a [`Record`]. Never fails: a line in no known
/// format is returned whole as an unparsed record. Trailing `\r`/`\n` are
/// ignored.
pub fn parse(line: &str) -> Record<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    let parsed = match line.as_bytes().first() {
        Some(b'[') => parse_modern(line),
        Some(b'0'..=b'9') => parse_old(line),
        Some(b'A'..=b'Z') => parse_indi_file(line),
        _ => None,
    };
    parsed.unwrap_or(Record {
        time: None,
        level: None,
        module: None,
        message: line,
        raw: line,
    })
}

/// True if `b` starts like a date: four digits and a dash.
fn starts_with_year(b: &[u8]) -> bool {
    b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// `[2023-06-16T09:27:47.970 CEST INFO ][   org.kde.kstars.ekos.capture] - msg`,
/// and the stdout variant `[2023-06-16 9:27:47.970 CEST INFO] [cat] - msg`.
fn parse_modern(line: &str) -> Option<Record<'_>> {
    if !starts_with_year(&line.as_bytes()[1..]) {
        return None;
    }
    let close = line.find(']')?;
    let (time, level) = line[1..close].trim_end().rsplit_once(' ')?;
    let level = Level::parse(level)?;
    let mut rest = line[close + 1..].trim_start_matches(' ');
    let mut module = None;
    if let Some(inner) = rest.strip_prefix('[') {
        let end = inner.find(']')?;
        module = Some(inner[..end].trim()).filter(|m| !m.is_empty());
        rest = inner[end + 1..].trim_start_matches(' ');
    }
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let message = unquote(rest);
    Some(Record {
        time: Some(time.trim_end()),
        level: Some(embedded_level(level, message)),
        module,
        message,
        raw: line,
    })
}

/// `2017-06-21T08:04:58.505 - DEBG - Capture:  "msg"`.
fn parse_old(line: &str) -> Option<Record<'_>> {
    let b = line.as_bytes();
    if !starts_with_year(b) {
        return None;
    }
    // The timestamp is short: bound the search so that script logs starting
    // with a date are rejected without scanning the whole line.
    let time_end = find_dash_separator(&b[..b.len().min(48)])?;
    let rest = &line[time_end + 3..];
    let (level, rest) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
    let level = Level::parse(level)?;
    let rest = rest.trim_start_matches(' ');
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    // Old KStars wrote `Module:  "message"`; only a short, unquoted label
    // before the first colon counts as a module.
    let (module, msg) = match rest.find(':') {
        Some(colon)
            if colon <= 32
                && rest.as_bytes()[0].is_ascii_alphabetic()
                && !rest[..colon].contains(['"', '[']) =>
        {
            (Some(rest[..colon].trim()), &rest[colon + 1..])
        }
        _ => (None, rest),
    };
    let message = unquote(msg);
    Some(Record {
        time: Some(&line[..time_end]),
        level: Some(embedded_level(level, message)),
        module,
        message,
        raw: line,
    })
}

/// The first ` - ` in `b`: the dashes of a date come first and are
/// stepped over with `memchr`, which on every line of a log is far cheaper
/// than comparing a three-byte window at each offset.
fn find_dash_separator(b: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'-', b)
        .find(|&i| i > 0 && b[i - 1] == b' ' && b.get(i + 1) == Some(&b' '))
        .map(|i| i - 1)
}

/// `TAG\t<sec>.<usec> sec\t: [Device] msg` as written by INDI's `Logger`.
fn parse_indi_file(line: &str) -> Option<Record<'_>> {
    let b = line.as_bytes();
    let tab = b[..b.len().min(24)].iter().position(|&c| c == b'\t')?;
    let tag = &b[..tab];
    if !tag
        .iter()
        .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    let rest = &line[tab + 1..];
    let digits = rest
        .bytes()
        .take_while(|&c| c.is_ascii_digit() || c == b'.')
        .count();
    if digits == 0 {
        return None;
    }
    let msg = rest[digits..].strip_prefix(" sec\t")?;
    let msg = msg.strip_prefix(':').unwrap_or(msg).trim_start();
    // The `[Device] ` prefix is only written when the driver runs several devices.
    let (module, msg) = match msg.strip_prefix('[').and_then(|m| m.split_once("] ")) {
        Some((device, msg)) => (Some(device), msg),
        None => (None, msg),
    };
    let level = match tag {
        b"ERROR" => Level::Error,
        b"WARNING" => Level::Warn,
        b"INFO" => Level::Info,
        // DEBUG and the driver-defined extra levels (SCOPE, DBG_EXTRA_1...).
        _ => Level::Debug,
    };
    Some(Record {
        time: Some(&rest[..digits]),
        level: Some(level),
        module,
        message: msg.trim(),
        raw: line,
    })
}

/// Strips the quotes Qt's `qDebug() << QString` adds, and surrounding spaces.
fn unquote(s: &str) -> &str {
    let t = s.trim();
    match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.trim(),
        None => t,
    }
}

/// KStars logs INDI driver messages at INFO whatever their real severity, so
/// an embedded `[ERROR]`-style tag wins over INFO and DEBG (never over a
/// higher KStars level).
fn embedded_level(level: Level, message: &str) -> Level {
    if level > Level::Info {
        return level;
    }
    indi_tag(message).map_or(level, |(_, _, tagged)| tagged)
}

/// Finds an INDI message tag (`[ERROR]`, `[WARNING]`, `[INFO]`, `[DEBUG]`,
/// `[SCOPE]`, `[DBG_EXTRA_1]`...) near the start of a message; returns the
/// byte range of the tag and its level.
fn indi_tag(message: &str) -> Option<(usize, usize, Level)> {
    let b = message.as_bytes();
    let window = &b[..b.len().min(TAG_WINDOW)];
    let mut from = 0;
    while let Some(p) = window[from..].iter().position(|&c| c == b'[') {
        let start = from + p;
        let tail = &b[start + 1..b.len().min(start + 14)];
        if let Some(len) = tail.iter().position(|&c| c == b']') {
            let level = match &tail[..len] {
                b"ERROR" => Some(Level::Error),
                b"WARNING" => Some(Level::Warn),
                b"INFO" => Some(Level::Info),
                b"DEBUG" | b"SCOPE" => Some(Level::Debug),
                t if t.starts_with(b"DBG_EXTRA_") || t.starts_with(b"EXTRA_") => Some(Level::Debug),
                _ => None,
            };
            if let Some(level) = level {
                return Some((start, start + len + 2, level));
            }
        }
        from = start + 1;
    }
    None
}

/// How important an event is; ordered so that routing can use thresholds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Success,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Success,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// Parses `info`, `success`, `warning`, `error` or `critical` (any case).
    pub fn parse(name: &str) -> Option<Severity> {
        let name = name.trim();
        Severity::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Success => "success",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// Discord embed colour.
    pub fn color(self) -> u32 {
        match self {
            Severity::Critical => 0xE74C3C,
            Severity::Error => 0xE67E22,
            Severity::Warning => 0xF1C40F,
            Severity::Success => 0x2ECC71,
            Severity::Info => 0x3498DB,
        }
    }
}

impl FromStr for Severity {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Severity, RuleError> {
        Severity::parse(s).ok_or_else(|| RuleError::InvalidSeverityName {
            value: s.to_string(),
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who to ping on Discord when an event fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mention {
    Role(u64),
    User(u64),
}

impl Mention {
    /// Parses `<@&ID>` (role), `<@ID>` or `<@!ID>` (user), `role:ID`, `user:ID`.
    /// Anything else, `@everyone` and `@here` in particular, is refused: a log
    /// monitor must never be able to ping a whole server.
    pub fn parse(s: &str) -> Option<Mention> {
        let s = s.trim();
        let tagged = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix('>'));
        let (make, id): (fn(u64) -> Mention, &str) = if let Some(id) = tagged("<@&") {
            (Mention::Role, id)
        } else if let Some(id) = tagged("<@!").or_else(|| tagged("<@")) {
            (Mention::User, id)
        } else if let Some(id) = s.strip_prefix("role:") {
            (Mention::Role, id)
        } else if let Some(id) = s.strip_prefix("user:") {
            (Mention::User, id)
        } else {
            return None;
        };
        if id.is_empty() || !id.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().filter(|&id| id != 0).map(make)
    }

    /// The `allowed_mentions` object for a Discord message: nothing may ping
    /// except this mention. Always send it, because log text is untrusted and
    /// may contain `@everyone` or `<@&id>`.
    pub fn allowed_mentions(mention: Option<&Mention>) -> serde_json::Value {
        let (roles, users): (Vec<u64>, Vec<u64>) = match mention {
            Some(Mention::Role(id)) => (vec![*id], vec![]),
            Some(Mention::User(id)) => (vec![], vec![*id]),
            None => (vec![], vec![]),
        };
        // Discord wants snowflakes as strings.
        let ids = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>();
        serde_json::json!({ "parse": [], "roles": ids(roles), "users": ids(users) })
    }
}

impl fmt::Display for Mention {
    /// Discord syntax, ready to put in a message's `content`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mention::Role(id) => write!(f, "<@&{id}>"),
            Mention::User(id) => write!(f, "<@{id}>"),
        }
    }
}

/// A line that deserves a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub severity: Severity,
    pub title: String,
    /// Name of the rule that matched (`user-N` for an unnamed user rule).
    pub rule: String,
    pub mention: Option<Mention>,
}

/// A rule as users write it in a TOML `[[rule]]` table.
///
/// `pattern` is a regular expression matched against the message (add `(?i)`
/// for case-insensitivity). `severity` is one of info, success, warning,
/// error, critical, or `none`/`ignore` to make matching lines non-events.
/// `title` may use `$1`, `${1}`, `${name}` captures and `${message}`; empty
/// means the message itself. `module` restricts the rule to a category,
/// matched by suffix like [`FilterSpec::modules`].
///
/// A rule named like a built-in replaces it in place (keeping the built-in's
/// position, so specific rules still come before the catch-alls); if its
/// pattern is empty it reuses the built-in's matcher, and title when its own
/// is empty, which is how to add a mention to, or disable, a built-in.
/// Other user rules are tried before all built-ins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub pattern: String,
    pub severity: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub mention: Option<String>,
    #[serde(default)]
    pub module: Option<String>,
}

/// Errors in user rules and filters; each names the key or rule at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    // The regex error is part of the message, not a `source`, so that error
    // reporters that print causes do not repeat it.
    #[error("rule {rule:?}: invalid pattern: {error}")]
    InvalidPattern { rule: String, error: regex::Error },
    #[error(
        "rule {rule:?}: pattern is empty: expected a regular expression (only a rule named like a built-in may omit it)"
    )]
    EmptyPattern { rule: String },
    #[error(
        "rule {rule:?}: invalid severity {value:?}: expected one of info, success, warning, error, critical, none"
    )]
    InvalidSeverity { rule: String, value: String },
    #[error(
        "rule {rule:?}: invalid mention {value:?}: expected \"<@&ROLE_ID>\", \"<@USER_ID>\", \"role:ID\" or \"user:ID\" (@everyone and @here are not allowed)"
    )]
    InvalidMention { rule: String, value: String },
    #[error("rule {rule:?}: module is empty: expected a category such as \"capture\"")]
    EmptyRuleModule { rule: String },
    #[error("duplicate rule name {name:?}: expected each rule name once")]
    DuplicateName { name: String },
    #[error("rules cannot be combined: {0}")]
    RuleSet(regex::Error),
    #[error(
        "invalid min_level {value:?}: expected one of debug, info, warn, error, critical, fatal"
    )]
    InvalidMinLevel { value: String },
    #[error("invalid {key} entry {value:?}: {error}")]
    InvalidFilterRegex {
        key: &'static str,
        value: String,
        error: regex::Error,
    },
    #[error("empty {key} entry: expected a category such as \"capture\"")]
    EmptyModule { key: &'static str },
    #[error("invalid level {value:?}: expected one of debug, info, warn, error, critical, fatal")]
    InvalidLevel { value: String },
    #[error("invalid severity {value:?}: expected one of info, success, warning, error, critical")]
    InvalidSeverityName { value: String },
}

/// Matchers that look at the level rather than the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LevelMatch {
    /// Level error: an embedded `[ERROR]` or an INDI driver log `ERROR` line.
    IndiError,
    Critical,
    Fatal,
}

impl LevelMatch {
    fn matches(self, rec: &Record) -> bool {
        let wanted = match self {
            LevelMatch::IndiError => Level::Error,
            LevelMatch::Critical => Level::Critical,
            LevelMatch::Fatal => Level::Fatal,
        };
        rec.level == Some(wanted)
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    /// Index into `Rules::user`.
    User(usize),
    /// Index into `Rules::builtin`.
    Builtin(usize),
    Level(LevelMatch),
}

#[derive(Debug, Clone)]
enum Title {
    /// `$1`/`${name}`/`${message}` template.
    Template(String),
    /// The message itself.
    Message,
    /// `<device>: <message>` for INDI errors.
    Device,
    /// A fixed prefix before the message (`Critical: ...`).
    Prefixed(&'static str),
}

/// A built-in rule; `pattern` is empty for level matchers.
struct Builtin {
    name: &'static str,
    /// Three-letter fragments, one of which occurs in any text the pattern
    /// matches (one per alternative): see [`Trigrams`].
    anchors: &'static [&'static str],
    pattern: &'static str,
    level: Option<LevelMatch>,
    severity: Severity,
    title: &'static str,
}

const fn text(
    name: &'static str,
    anchors: &'static [&'static str],
    pattern: &'static str,
    severity: Severity,
    title: &'static str,
) -> Builtin {
    Builtin {
        name,
        anchors,
        pattern,
        level: None,
        severity,
        title,
    }
}

const fn level(name: &'static str, level: LevelMatch, title: &'static str) -> Builtin {
    let severity = match level {
        LevelMatch::IndiError => Severity::Error,
        LevelMatch::Critical | LevelMatch::Fatal => Severity::Critical,
    };
    Builtin {
        name,
        anchors: &[],
        pattern: "",
        level: Some(level),
        severity,
        title,
    }
}

/// The built-in rules, in evaluation order (see the module documentation).
/// Text rules come before the level catch-alls so that, say, a CRIT line about
/// a crashed driver gets its specific title. `(?i-u)` is ASCII-only case
/// folding: KStars' English messages need no more, and it keeps the automaton
/// small; only the job name needs Unicode.
#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    text("indi-driver-crashed", &["ras"], r#"(?i-u)INDI driver\s+"?([\w.-]+)"?\s+crashed"#,
        Severity::Critical, "INDI driver $1 crashed"),
    text("indi-driver-terminated", &["rmi"],
        r"(?i-u)(?:Driver\s+([\w.-]+?):\s*)?Terminated after #?(\d+) restarts",
        Severity::Critical, "INDI driver $1 terminated after $2 restarts"),
    text("indi-driver-killed", &["kil"],
        r"(?i-u)Driver\s+([\w.-]+?):\s*process\s+\d+\s+killed with signal\s+(\d+)",
        Severity::Critical, "INDI driver $1 killed by signal $2"),
    text("indi-driver-exited", &["xit"],
        r"(?i-u)Driver\s+([\w.-]+?):\s*process\s+\d+\s+exited with status\s+(\d+)",
        Severity::Error, "INDI driver $1 exited with status $2"),
    text("indi-driver-eof", &["eof"], r"(?i-u)(?:Driver\s+([\w.-]+?):\s*)?(stderr|stdin) EOF",
        Severity::Error, "INDI driver $1 exited ($2 EOF)"),
    text("indi-driver-pipe-error", &["std"],
        r#"(?i-u)Driver\s+([\w.-]+?):\s*(?:Error on stderr:|stderr|stdin)\s+((?u:[^\s"][^"]*))"#,
        Severity::Error, "INDI driver $1 pipe error: $2"),
    text("indi-driver-start-failed", &["xec"], r#"(?i-u)Driver\s+([\w.-]+?):\s*execlp\s+(?u:\S+):\s*((?u:[^"]*))"#,
        Severity::Error, "INDI driver $1 failed to start: $2"),
    text("indi-driver-died", &["die"], r"(?i-u)Child process (\d+) died",
        Severity::Error, "INDI driver process $1 died"),
    text("indi-driver-restart", &["t #"], r"(?i-u)Driver\s+([\w.-]+?):\s*restart #(\d+)",
        Severity::Warning, "INDI driver $1 restarted (#$2)"),
    text("guide-aborted", &["bor"], r"(?i-u)Autoguiding aborted", Severity::Error, "Autoguiding aborted"),
    // PHD2 (ekos/guide/externalguide/phd2.cpp) says `PHD2: Star Lost.` (2016),
    // `PHD2: Star Lost. Trying to reacquire.` (2018) and `PHD2: Star Lost.
    // Trying to reacquire for %1s.` (since): the same event as the internal
    // guider's, so the same rule, incident and resolution.
    text("guide-star-lost", &["los"], r"(?i-u)Lost track of the guide star|PHD2: Star Lost",
        Severity::Warning, "Lost track of the guide star"),
    text("guide-suspended", &["usp"], r"(?i-u)Guiding suspended", Severity::Warning, "Guiding suspended"),
    // `PHD2: Calibration Failed (%1).` is matched by `calibration failed`.
    text("guide-calibration-failed", &["bra"],
        r"(?i-u)Calibration rejected|calibration failed|Calibration turned to looping, failed",
        Severity::Error, "Guide calibration failed"),
    // phd2.cpp `displayError()`; `PHD2 Error: Equipment not connected.` when a
    // guide, dither or abort finds PHD2's camera or mount disconnected.
    text("guide-connection-lost", &["hos", "phd"],
        r"(?i-u)The host disconnected\.|The connection was refused by the peer\. Make sure the PHD2|The host was not found\. Please check the host name and port settings in Guide|PHD2 Error: Equipment not connected",
        Severity::Error, "Guider connection lost"),
    // SettleDone with an error; the `Settling failed, aborted.` that may follow
    // is not matched (its `Autoguiding aborted.` is the abort).
    text("guide-settle-failed", &["ttl"], r"(?i-u)PHD2: Settling failed \(((?u:[^)]*))\)",
        Severity::Warning, "Guide settling failed: $1"),
    // PHD2's dither timer expired without an answer (a SettleDone error while
    // dithering is already a `guide-settle-failed`).
    text("dither-failed", &["ith"], r"(?i-u)Dithering failed|There was no dithering response from PHD2",
        Severity::Warning, "Dithering failed"),
    // A PHD2 Alert event of type `error` (`PHD2 %1: %2`); KStars' own
    // `PHD2 Error: ...` is capitalised and is not one.
    text("phd2-alert", &["phd"], r"(?i-u)PHD2 (?-i:error): ((?u:.+))", Severity::Error, "PHD2: $1"),
    text("capture-failed", &["fai"], r"(?i-u)Capture failed", Severity::Error, "Capture failed"),
    text("capture-aborted", &["bor"], r"(?i-u)(?:CCD|camera) capture aborted",
        Severity::Warning, "Capture aborted"),
    text("capture-suspended", &["usp"], r"(?i-u)(?:CCD|camera) capture suspended",
        Severity::Warning, "Capture suspended"),
    text("solver-failed", &["fai", "tim"], r"(?i-u)Solver failed|Solver timed out",
        Severity::Warning, "Plate solving failed"),
    text("image-received", &["eiv"], r"(?i-u)Received image (\d+) out of (\d+)",
        Severity::Info, "Image $1/$2 received"),
    text("solver-success", &["ucc", "mpl"],
        r"(?i-u)Astrometric solver is successful|Solver completed after ([\d.]+) seconds",
        Severity::Success, "Plate solved"),
    text("autofocus-complete", &["mpl"], r"(?i-u)Autofocus complete after (\d+) iterations",
        Severity::Success, "Autofocus complete after $1 iterations"),
    text("autofocus-failed", &["fai"], r"(?i-u)Autofocus failed", Severity::Warning, "Autofocus failed"),
    text("meridian-flip-completed", &["rid"], r"(?i-u)Meridian flip completed",
        Severity::Success, "Meridian flip completed"),
    text("meridian-flip-failed", &["rid"], r"(?i-u)Meridian flip failed",
        Severity::Error, "Meridian flip failed"),
    text("meridian-flip-started", &["rid"], r"(?i-u)Meridian flip started|Starting meridian flip",
        Severity::Info, "Meridian flip started"),
    text("job-complete", &["mpl"], r"(?i-u)Job '((?u:[^']*))' is complete",
        Severity::Success, "Job $1 complete"),
    text("job-failed", &["rmi"], r"(?i-u)Job '((?u:[^']*))' is terminated due to errors",
        Severity::Error, "Job $1 failed"),
    text("job-aborted", &["bor", "ces"],
        r"(?i-u)Job '((?u:[^']*))' (?:is aborted|has not been processed upon scheduler stop)",
        Severity::Warning, "Job $1 aborted"),
    text("weather-alert", &["eat"], r"(?i-u)Weather alert detected|cannot start because weather status is",
        Severity::Error, "Weather alert"),
    text("mount-park-failed", &["rki", "ast"],
        r"(?i-u)Mount (?:un)?parking error|(?:un)?park operation timed out on last attempt",
        Severity::Error, "Mount parking failed"),
    text("dome-park-failed", &["dom"], r"(?i-u)Dome (?:un)?parking (?:error|failed)",
        Severity::Error, "Dome parking failed"),
    text("shutdown-failed", &["tdo"], r"(?i-u)Shutdown (?:procedure|script) failed",
        Severity::Error, "Shutdown failed"),
    text("mount-parked", &["rke"], r"(?i-u)Mount parked", Severity::Info, "Mount parked"),
    text("mount-parking", &["rki"], r"(?i-u)Parking mount", Severity::Info, "Mount parking"),
    text("mount-unparked", &["npa"], r"(?i-u)Mount unparked", Severity::Info, "Mount unparked"),
    text("dome-parked", &["dom"], r"(?i-u)Dome parked", Severity::Info, "Dome parked"),
    text("dome-unparked", &["dom"], r"(?i-u)Dome unparked", Severity::Info, "Dome unparked"),
    text("dome-parking", &["dom"], r"(?i-u)(?:un)?parking dome", Severity::Info, "Dome moving"),
    text("guide-calibration-complete", &["bra"], r"(?i-u)Calibration completed",
        Severity::Success, "Guider calibrated"),
    // `Guiding resumed` also covers PHD2's `Guiding resumed.` / `Guiding
    // Resumed.` and `Star found, guiding resumed.` (2018).
    text("guide-started", &["uto", "sum", "phd"],
        r"(?i-u)Autoguiding started|Guiding resumed|PHD2: (?:Guiding started|Star found, guiding|Settling complete, Guiding started)",
        Severity::Info, "Guiding"),
    text("guide-stopped", &["phd"], r"(?i-u)PHD2: Guiding stopped", Severity::Info, "Guiding stopped"),
    text("autofocus-started", &["ofo"], r"(?i-u)Autofocus (?:starting|in progress)",
        Severity::Info, "Autofocus started"),
    text("job-started", &["xec"], r#"(?i-u)Executing Job\s+"?((?u:[^"]*))"?"#,
        Severity::Info, "Job $1 started"),
    text("job-capturing", &["ogr"], r"(?i-u)Job '((?u:[^']*))' capture is in progress",
        Severity::Info, "Job $1 capturing"),
    text("slew-started", &["lew"], r"(?i-u)Job '((?u:[^']*))' is slewing to target",
        Severity::Info, "Slewing to $1"),
    text("slew-complete", &["lew", "osi"], r"(?i-u)Job '((?u:[^']*))' (?:slew|repositioning) is complete",
        Severity::Info, "Slew to $1 complete"),
    text("scheduler-started", &["dul"], r"(?i-u)Scheduler started", Severity::Info, "Scheduler started"),
    text("scheduler-sleeping", &["eep", "vat"],
        r"(?i-u)Sleeping until observation job|Observatory scheduled for (?:soft )?shutdown until",
        Severity::Info, "Scheduler sleeping"),
    text("shutdown-started", &["tdo"], r"(?i-u)Starting shutdown process",
        Severity::Info, "Observatory shutdown started"),
    text("shutdown-complete", &["tdo"], r"(?i-u)Shutdown complete",
        Severity::Success, "Observatory shutdown complete"),
    level("indi-error", LevelMatch::IndiError, ""),
    level("critical", LevelMatch::Critical, "Critical: "),
    level("fatal", LevelMatch::Fatal, "Fatal: "),
];

/// Every built-in rule's anchors, each once, in rule order.
fn builtin_anchors() -> Vec<&'static str> {
    let mut anchors: Vec<&'static str> = Vec::new();
    for a in BUILTINS.iter().flat_map(|b| b.anchors.iter().copied()) {
        if !anchors.contains(&a) {
            anchors.push(a);
        }
    }
    anchors
}

impl Builtin {
    fn describe(&self) -> &'static str {
        match self.level {
            Some(LevelMatch::IndiError) => "level error ([ERROR] tag or INDI log ERROR line)",
            Some(LevelMatch::Critical) => "level critical (CRIT line)",
            Some(LevelMatch::Fatal) => "level fatal (FATL line)",
            None => self.pattern,
        }
    }

    fn title(&self) -> Title {
        match self.level {
            Some(LevelMatch::IndiError) => Title::Device,
            Some(_) => Title::Prefixed(self.title),
            None => Title::Template(self.title.to_string()),
        }
    }
}

/// A prefilter for the built-in patterns: a bitmap of the anchors'
/// three-letter fragments, indexed by the low five bits of each byte (which
/// are equal for an ASCII letter's two cases). Most lines contain no anchor
/// and skip the regex engine, whose fixed cost per search dominates on short
/// log messages. False positives only cost that search.
#[derive(Debug, Clone)]
struct Trigrams(Box<[u64; 512]>);

impl Trigrams {
    fn new<'a>(anchors: impl IntoIterator<Item = &'a str>) -> Trigrams {
        let mut bits = Box::new([0u64; 512]);
        for anchor in anchors {
            for w in anchor.as_bytes().windows(3) {
                let i = Trigrams::push(Trigrams::push(Trigrams::push(0, w[0]), w[1]), w[2]);
                bits[i >> 6] |= 1 << (i & 63);
            }
        }
        Trigrams(bits)
    }

    fn push(index: usize, byte: u8) -> usize {
        ((index << 5) | usize::from(byte & 31)) & 0x7fff
    }

    fn maybe(&self, text: &str) -> bool {
        let mut i = 0;
        text.bytes().any(|b| {
            i = Trigrams::push(i, b);
            self.0[i >> 6] & (1 << (i & 63)) != 0
        })
    }
}

/// How many bytes of a message [`Prefilter::maybe`] folds on the stack;
/// longer messages (rare) are folded into a heap buffer.
const FOLD_STACK: usize = 256;

/// The built-in rules' prefilter: one search for all the anchors at once.
/// A line that matches no anchor (nearly every line of a verbose log)
/// never reaches the regex engine. The anchors are searched with the
/// vectorised multi-substring searcher ("Teddy") of `aho-corasick`, which
/// is already in the build as the regex crate's literal engine, over the
/// message folded with [`fold`]: a few tens of bytes per cycle, where
/// [`Trigrams`] goes one byte at a time along a chain of dependent
/// shifts. Where Teddy is not available (a CPU without SSSE3 or NEON,
/// 32-bit ARM), [`Trigrams`] does the job.
#[derive(Debug, Clone)]
struct Prefilter {
    packed: Option<aho_corasick::packed::Searcher>,
    trigrams: Trigrams,
}

impl Prefilter {
    fn new(anchors: &[&str]) -> Prefilter {
        let mut builder = aho_corasick::packed::Config::new().builder();
        for a in anchors {
            builder.add(a.bytes().map(fold).collect::<Vec<u8>>());
        }
        Prefilter {
            packed: builder.build(),
            trigrams: Trigrams::new(anchors.iter().copied()),
        }
    }

    /// False only if `text` contains none of the anchors, in any ASCII case.
    fn maybe(&self, text: &str) -> bool {
        let Some(packed) = &self.packed else {
            return self.trigrams.maybe(text);
        };
        let b = text.as_bytes();
        if b.len() <= FOLD_STACK {
            let mut buf = [0u8; FOLD_STACK];
            let folded = &mut buf[..b.len()];
            for (f, &c) in folded.iter_mut().zip(b) {
                *f = fold(c);
            }
            packed.find(folded).is_some()
        } else {
            packed
                .find(b.iter().map(|&c| fold(c)).collect::<Vec<u8>>())
                .is_some()
        }
    }
}

/// Folds ASCII letters to lower case by setting bit 5, and maps other
/// bytes to some byte (several to one: `@` and `` ` ``, `[` and `{`...).
/// Two bytes equal but for ASCII case fold to the same byte, so a text
/// holding an anchor in any case holds the folded anchor once folded;
/// other coincidences are false positives, which only cost a regex
/// search. Branch-free, so a line folds in a few vector instructions.
fn fold(b: u8) -> u8 {
    b | 0x20
}

/// Patterns searched together in one pass.
#[derive(Debug, Clone)]
struct Patterns {
    /// Compiled on first use: only rules with capture templates need one,
    /// and only once they matched; this keeps an idle daemon small.
    regexes: Vec<(String, std::sync::OnceLock<Regex>)>,
    /// Also built on first use: a daemon that has not seen a line yet
    /// does not hold the compiled set.
    set: std::sync::OnceLock<RegexSet>,
}

impl Patterns {
    /// The built-in patterns (all of them, or those user rules reuse):
    /// constants, which a unit test compiles alone and as one set, so
    /// nothing is compiled here. Compiling them at start-up only to check
    /// them ran most of the regex crate's parser and compilers, whose code
    /// and tables then stayed mapped in an idle daemon.
    fn builtin(patterns: &[(String, String)]) -> Patterns {
        Patterns {
            regexes: (patterns.iter())
                .map(|(_, p)| (p.clone(), std::sync::OnceLock::new()))
                .collect(),
            set: std::sync::OnceLock::new(),
        }
    }

    /// User patterns: each is compiled now, so that a bad one stops
    /// start-up with its rule's name.
    fn build(patterns: &[(String, String)]) -> Result<Patterns, RuleError> {
        // Compile each once to report a bad pattern with its rule's name.
        let regexes = patterns
            .iter()
            .map(|(rule, p)| {
                Regex::new(p)
                    .map(|_| (p.clone(), std::sync::OnceLock::new()))
                    .map_err(|error| RuleError::InvalidPattern {
                        rule: rule.clone(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;
        // Checked now (a set can fail where each pattern alone does not, on
        // size limits), kept for later.
        RegexSet::new(patterns.iter().map(|(_, p)| p)).map_err(RuleError::RuleSet)?;
        Ok(Patterns {
            regexes,
            set: std::sync::OnceLock::new(),
        })
    }

    fn set(&self) -> &RegexSet {
        self.set.get_or_init(|| {
            RegexSet::new(self.regexes.iter().map(|(p, _)| p)).expect("validated in build")
        })
    }

    fn regex(&self, i: usize) -> &Regex {
        let (pattern, cell) = &self.regexes[i];
        cell.get_or_init(|| Regex::new(pattern).expect("validated in build"))
    }

    /// Which patterns match; computed (allocating) only for the rare lines
    /// that match something.
    fn hits(&self, text: &str) -> Option<regex::SetMatches> {
        if self.regexes.is_empty() || !self.set().is_match(text) {
            return None;
        }
        Some(self.set().matches(text))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    /// Shown by [`Rules::describe`].
    pattern: String,
    matcher: Matcher,
    /// `None`: a matching line is not an event.
    severity: Option<Severity>,
    title: Title,
    mention: Option<Mention>,
    module: Option<String>,
}

/// An ordered set of rules deciding which records are events.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Patterns of user rules, searched on every line.
    user: Patterns,
    /// Built-in patterns (also when reused by a user rule), searched only
    /// when `prefilter` lets the line through.
    builtin: Patterns,
    prefilter: Prefilter,
    /// Some active rule matches on the level, so lines that match no pattern
    /// still go through the rule loop when their level is error or above.
    has_level_rules: bool,
}

impl Rules {
    /// The built-in rules only.
    pub fn builtin() -> Rules {
        Rules::with_user(&[]).expect("built-in rules are valid")
    }

    /// User rules combined with the built-ins (see [`RuleSpec`] for the order).
    pub fn with_user(user: &[RuleSpec]) -> Result<Rules, RuleError> {
        // (rule name, pattern) pairs, indexed by `Matcher::User`/`Builtin`.
        let mut user_patterns: Vec<(String, String)> = Vec::new();
        let mut builtin_patterns: Vec<(String, String)> = Vec::new();
        let mut builtin_matcher = |b: &Builtin, rule: &str| match b.level {
            Some(level) => Matcher::Level(level),
            None => {
                builtin_patterns.push((rule.to_string(), b.pattern.to_string()));
                Matcher::Builtin(builtin_patterns.len() - 1)
            }
        };
        let mut head: Vec<Rule> = Vec::new();
        let mut overrides: Vec<(usize, Rule)> = Vec::new();
        let mut names = HashSet::new();

        for (i, spec) in user.iter().enumerate() {
            let name = match spec.name.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => format!("user-{}", i + 1),
            };
            if !names.insert(name.clone()) {
                return Err(RuleError::DuplicateName { name });
            }
            let severity = match spec.severity.trim().to_ascii_lowercase().as_str() {
                "none" | "ignore" => None,
                other => {
                    Some(
                        Severity::parse(other).ok_or_else(|| RuleError::InvalidSeverity {
                            rule: name.clone(),
                            value: spec.severity.clone(),
                        })?,
                    )
                }
            };
            let mention = match spec.mention.as_deref() {
                None => None,
                Some(m) => Some(Mention::parse(m).ok_or_else(|| RuleError::InvalidMention {
                    rule: name.clone(),
                    value: m.to_string(),
                })?),
            };
            let module = match spec.module.as_deref().map(str::trim) {
                Some("") => return Err(RuleError::EmptyRuleModule { rule: name }),
                m => m.map(str::to_string),
            };
            let builtin = BUILTINS.iter().position(|b| b.name == name);
            let title = match spec.title.trim() {
                "" => Title::Message,
                t => Title::Template(t.to_string()),
            };
            let (pattern, matcher, title) = match (spec.pattern.is_empty(), builtin) {
                (true, None) => return Err(RuleError::EmptyPattern { rule: name }),
                (true, Some(b)) => {
                    let b = &BUILTINS[b];
                    let title = if spec.title.trim().is_empty() {
                        b.title()
                    } else {
                        title
                    };
                    (b.describe().to_string(), builtin_matcher(b, &name), title)
                }
                (false, _) => {
                    user_patterns.push((name.clone(), spec.pattern.clone()));
                    let matcher = Matcher::User(user_patterns.len() - 1);
                    (spec.pattern.clone(), matcher, title)
                }
            };
            let rule = Rule {
                name,
                pattern,
                matcher,
                severity,
                title,
                mention,
                module,
            };
            match builtin {
                Some(b) => overrides.push((b, rule)),
                None => head.push(rule),
            }
        }

        let mut rules = head;
        for (i, b) in BUILTINS.iter().enumerate() {
            if let Some(pos) = overrides.iter().position(|(o, _)| *o == i) {
                rules.push(overrides.swap_remove(pos).1);
                continue;
            }
            rules.push(Rule {
                name: b.name.to_string(),
                pattern: b.describe().to_string(),
                matcher: builtin_matcher(b, b.name),
                severity: Some(b.severity),
                title: b.title(),
                mention: None,
                module: None,
            });
        }
        let has_level_rules = rules.iter().any(|r| matches!(r.matcher, Matcher::Level(_)));
        Ok(Rules {
            rules,
            user: Patterns::build(&user_patterns)?,
            builtin: Patterns::builtin(&builtin_patterns),
            prefilter: Prefilter::new(&builtin_anchors()),
            has_level_rules,
        })
    }

    /// The event a record stands for, if any: the first matching rule decides
    /// (a matching rule of severity `none` means "not an event").
    pub fn classify(&self, rec: &Record) -> Option<Event> {
        let user_hits = self.user.hits(rec.message);
        let builtin_hits = match self.prefilter.maybe(rec.message) {
            true => self.builtin.hits(rec.message),
            false => None,
        };
        if user_hits.is_none()
            && builtin_hits.is_none()
            && (!self.has_level_rules || rec.level < Some(Level::Error))
        {
            return None;
        }
        let rule = self.rules.iter().find(|rule| {
            let matched = match rule.matcher {
                Matcher::User(i) => user_hits.as_ref().is_some_and(|h| h.matched(i)),
                Matcher::Builtin(i) => builtin_hits.as_ref().is_some_and(|h| h.matched(i)),
                Matcher::Level(level) => level.matches(rec),
            };
            matched
                && rule
                    .module
                    .as_deref()
                    .is_none_or(|want| rec.module.is_some_and(|m| module_matches(m, want)))
        })?;
        let severity = rule.severity?;
        let title = match &rule.title {
            Title::Message => truncate(&clean(rec.message), MESSAGE_CHARS),
            Title::Prefixed(prefix) => {
                format!("{prefix}{}", truncate(&clean(rec.message), MESSAGE_CHARS))
            }
            Title::Device => device_title(rec),
            Title::Template(template) => {
                let re = match rule.matcher {
                    Matcher::User(i) => Some(self.user.regex(i)),
                    Matcher::Builtin(i) => Some(self.builtin.regex(i)),
                    Matcher::Level(_) => None,
                };
                expand(re, template, rec.message)
            }
        };
        Some(Event {
            severity,
            title: truncate(&title, TITLE_CHARS),
            rule: rule.name.clone(),
            mention: rule.mention,
        })
    }

    /// Active rules in evaluation order: name, pattern (or a description of a
    /// level matcher) and severity. Disabled rules are left out.
    pub fn describe(&self) -> Vec<(String, String, Severity)> {
        self.rules
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.pattern.clone(), r.severity?)))
            .collect()
    }
}

/// Fills a title template with `${message}` and the captures of `re` (none
/// for level matchers) in `message`.
fn expand(re: Option<&Regex>, template: &str, message: &str) -> String {
    if !template.contains('$') {
        return template.to_string();
    }
    let caps = re.and_then(|re| re.captures(message));
    let mut template = template.to_string();
    if !re.is_some_and(|re| re.capture_names().any(|n| n == Some("message"))) {
        let text = truncate(&clean(message), MESSAGE_CHARS);
        // `$` in the message must not be read as a capture reference.
        let text = match caps {
            Some(_) => text.replace('$', "$$"),
            None => text,
        };
        template = template.replace("${message}", &text);
    }
    let mut out = String::new();
    match caps {
        Some(caps) => caps.expand(&template, &mut out),
        None => out = template,
    }
    // Optional groups that did not take part leave double spaces behind.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `<device>: <message>` for an INDI error; the device is the text before the
/// `[ERROR]` tag, else the device of an INDI log line, else "INDI".
fn device_title(rec: &Record) -> String {
    let (device, text) = match indi_tag(rec.message) {
        Some((start, end, _)) => (clean_device(&rec.message[..start]), &rec.message[end..]),
        None => ("", rec.message),
    };
    let device = match device {
        "" => rec
            .module
            .filter(|m| !m.starts_with("org.kde."))
            .unwrap_or("INDI"),
        d => d,
    };
    format!("{device}: {}", truncate(&clean(text), MESSAGE_CHARS))
}

/// Extracts a device name from what precedes an INDI tag, such as
/// `EQMod Mount :  "` or `EQMod Mount : \"2023-06-16T20:53:01: `.
fn clean_device(s: &str) -> &str {
    const JUNK: &[char] = &[' ', '\t', '"', '\\', ':'];
    let d = s.trim_matches(JUNK);
    // INDI clients prefix messages with the driver's timestamp: not a name.
    let last = d.rfind([' ', '"']).map_or(0, |p| p + 1);
    if d[last..]
        .bytes()
        .all(|c| c.is_ascii_digit() || b"-T:.".contains(&c))
    {
        d[..last].trim_matches(JUNK)
    } else {
        d
    }
}

/// Message text for a title: without the quoting and escaping Qt adds.
fn clean(s: &str) -> String {
    s.trim()
        .trim_end_matches(['"', '\\', ' '])
        .trim_start_matches(['"', ' '])
        .replace("\\\"", "\"")
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// True if `module` is `want` or ends with `.want`, ignoring ASCII case, so
/// that "capture" and "ekos.capture" both select `org.kde.kstars.ekos.capture`.
fn module_matches(module: &str, want: &str) -> bool {
    let (m, w) = (module.as_bytes(), want.as_bytes());
    if m.len() == w.len() {
        return m.eq_ignore_ascii_case(w);
    }
    m.len() > w.len()
        && m[m.len() - w.len() - 1] == b'.'
        && m[m.len() - w.len()..].eq_ignore_ascii_case(w)
}

/// Per-source line filter, as users write it in configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FilterSpec {
    /// Drop lines whose level is known and below this.
    pub min_level: Option<String>,
    /// If any, keep only lines whose raw text matches one of these.
    pub include_regex: Vec<String>,
    /// Drop lines whose raw text matches one of these.
    pub exclude_regex: Vec<String>,
    /// If any, keep only these categories (matched by suffix).
    pub modules: Vec<String>,
    /// Drop these categories (matched by suffix).
    pub drop_modules: Vec<String>,
}

/// Decides whether a record is forwarded. Built from a [`FilterSpec`].
///
/// Unparsed records (continuation lines, foreign formats) pass `min_level`,
/// `modules` and `drop_modules`, which they cannot be judged by; only the
/// regexes apply to them. Callers that want continuation lines to share the
/// fate of the line they continue must track that themselves.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    min_level: Option<Level>,
    include: Option<RegexSet>,
    exclude: Option<RegexSet>,
    modules: Vec<String>,
    drop_modules: Vec<String>,
}

impl Filter {
    pub fn new(spec: &FilterSpec) -> Result<Filter, RuleError> {
        let min_level = match spec.min_level.as_deref() {
            None => None,
            Some(v) => Some(Level::parse(v).ok_or_else(|| RuleError::InvalidMinLevel {
                value: v.to_string(),
            })?),
        };
        Ok(Filter {
            min_level,
            include: regex_set("include_regex", &spec.include_regex)?,
            exclude: regex_set("exclude_regex", &spec.exclude_regex)?,
            modules: module_list("modules", &spec.modules)?,
            drop_modules: module_list("drop_modules", &spec.drop_modules)?,
        })
    }

    /// True if the record passes every condition.
    pub fn keep(&self, rec: &Record) -> bool {
        self.keep_with_event(rec, None)
    }

    /// Like [`Filter::keep`], but `min_level` never drops a line that is an
    /// event of severity warning or above: call [`Rules::classify`] first and
    /// pass its result. The other conditions still apply.
    pub fn keep_with_event(&self, rec: &Record, ev: Option<&Event>) -> bool {
        let below = match (self.min_level, rec.level) {
            (Some(min), Some(level)) => level < min,
            _ => false,
        };
        let is_alert = ev.is_some_and(|e| e.severity >= Severity::Warning);
        if below && !is_alert {
            return false;
        }
        if self.include.as_ref().is_some_and(|s| !s.is_match(rec.raw)) {
            return false;
        }
        if self.exclude.as_ref().is_some_and(|s| s.is_match(rec.raw)) {
            return false;
        }
        match rec.module {
            Some(m) => {
                (self.modules.is_empty() || self.modules.iter().any(|w| module_matches(m, w)))
                    && !self.drop_modules.iter().any(|w| module_matches(m, w))
            }
            // A parsed line without a module cannot be one of the wanted ones.
            None => self.modules.is_empty() || rec.is_unparsed(),
        }
    }
}

fn regex_set(key: &'static str, patterns: &[String]) -> Result<Option<RegexSet>, RuleError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    // Compiled one by one first so that the error names the culprit.
    for p in patterns {
        Regex::new(p).map_err(|error| RuleError::InvalidFilterRegex {
            key,
            value: p.clone(),
            error,
        })?;
    }
    RegexSet::new(patterns)
        .map(Some)
        .map_err(|error| RuleError::InvalidFilterRegex {
            key,
            value: patterns.join(", "),
            error,
        })
}

fn module_list(key: &'static str, modules: &[String]) -> Result<Vec<String>, RuleError> {
    modules
        .iter()
        .map(|m| match m.trim() {
            "" => Err(RuleError::EmptyModule { key }),
            m => Ok(m.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, pattern: &str, severity: &str, title: &str) -> RuleSpec {
        RuleSpec {
            name: (!name.is_empty()).then(|| name.to_string()),
            pattern: pattern.to_string(),
            severity: severity.to_string(),
            title: title.to_string(),
            ..RuleSpec::default()
        }
    }

    fn event(rules: &Rules, line: &str) -> Option<Event> {
        rules.classify(&parse(line))
    }

    const CAPTURE: &str = r#"[2023-06-16T09:27:47.970 CEST INFO ][   org.kde.kstars.ekos.capture] - "Received image 2 out of 17.""#;

    #[test]
    fn parses_modern_lines() {
        let r = parse(CAPTURE);
        assert_eq!(r.time, Some("2023-06-16T09:27:47.970 CEST"));
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.module, Some("org.kde.kstars.ekos.capture"));
        assert_eq!(r.message, "Received image 2 out of 17.");
        assert_eq!(r.raw, CAPTURE);

        let r = parse("[2023-06-16T09:27:47.970  DEBG ][org.kde.kstars] - plain text\r\n");
        assert_eq!(r.time, Some("2023-06-16T09:27:47.970"));
        assert_eq!(r.level, Some(Level::Debug));
        assert_eq!(r.message, "plain text");
        assert_eq!(
            r.raw,
            "[2023-06-16T09:27:47.970  DEBG ][org.kde.kstars] - plain text"
        );

        let r =
            parse("[2023-06-16T09:27:47.970 GMT+2 UNKN ][org.kde.kstars.ekos.observatory] - \"x\"");
        assert_eq!(
            (r.time, r.level),
            (Some("2023-06-16T09:27:47.970 GMT+2"), Some(Level::Info))
        );
        assert_eq!(r.module, Some("org.kde.kstars.ekos.observatory"));

        // KStars' stdout pattern differs slightly.
        let r = parse("[2023-06-16 9:27:47.970 UTC CRIT] [org.kde.kstars] - boom");
        assert_eq!(
            (r.level, r.module, r.message),
            (Some(Level::Critical), Some("org.kde.kstars"), "boom")
        );
    }

    #[test]
    fn parses_old_lines() {
        let r = parse(r#"2017-06-21T08:04:58.505 - DEBG - Capture:  "Received image 1 out of 3.""#);
        assert_eq!(r.time, Some("2017-06-21T08:04:58.505"));
        assert_eq!(r.level, Some(Level::Debug));
        assert_eq!(r.module, Some("Capture"));
        assert_eq!(r.message, "Received image 1 out of 3.");
        let r = parse(r#"2017-06-21T08:04:58.505 - WARN - "no module: here""#);
        assert_eq!(
            (r.level, r.module, r.message),
            (Some(Level::Warn), None, "no module: here")
        );
        // A script log starting with a date is not an old Ekos line.
        assert!(parse("2023-06-16 12:00:00 - script - started").is_unparsed());
    }

    #[test]
    fn parses_indi_driver_logs() {
        let r = parse("ERROR\t12.345678 sec\t: [EQMod Mount] Failed to read position. Error: 4");
        assert_eq!(r.time, Some("12.345678"));
        assert_eq!(r.level, Some(Level::Error));
        assert_eq!(r.module, Some("EQMod Mount"));
        assert_eq!(r.message, "Failed to read position. Error: 4");
        let r = parse("WARNING\t1.000001 sec\t: single device driver");
        assert_eq!(
            (r.level, r.module, r.message),
            (Some(Level::Warn), None, "single device driver")
        );
        for tag in ["DEBUG", "SCOPE", "DBG_EXTRA_2", "EXTRA_3"] {
            let line = format!("{tag}\t3.5 sec\t: [Dev] x");
            assert_eq!(parse(&line).level, Some(Level::Debug), "{tag}");
        }
        assert!(parse("ERROR: not an INDI line").is_unparsed());
        assert!(parse("ERROR\tnot a time sec\t: x").is_unparsed());
    }

    #[test]
    fn keeps_anything_else_unparsed() {
        for line in [
            "",
            "[",
            "[]",
            "[2023-",
            "    at frame 3",
            "[2023-06-16T09:27 BOGUS ][x] - y",
            "é\u{1}\u{7f}",
        ] {
            let r = parse(line);
            assert!(r.is_unparsed(), "{line:?}");
            assert_eq!(
                (r.message, r.raw, r.time, r.module),
                (line, line, None, None)
            );
        }
    }

    #[test]
    fn embedded_indi_tags_set_the_level() {
        let line = |lvl: &str, msg: &str| {
            format!("[2023-06-16T09:27:47.970 CEST {lvl} ][ org.kde.kstars.indi] - {msg}")
        };
        let level = |lvl: &str, msg: &str| parse(&line(lvl, msg)).level;
        assert_eq!(
            level("INFO", r#""[ERROR] Failed to read position. Error: 4 ""#),
            Some(Level::Error)
        );
        assert_eq!(
            level("INFO", r#"EQMod Mount :  "[WARNING] Slow ""#),
            Some(Level::Warn)
        );
        assert_eq!(
            level("INFO", r#"EQMod Mount :  "[DEBUG] CMD ""#),
            Some(Level::Debug)
        );
        assert_eq!(level("DEBG", r#""[ERROR] x""#), Some(Level::Error));
        // A higher KStars level is never lowered, and ordinary brackets are no tags.
        assert_eq!(level("CRIT", r#""[INFO] x""#), Some(Level::Critical));
        assert_eq!(
            level("INFO", r#""Slewing to [M31] [ERRORS]""#),
            Some(Level::Info)
        );
    }

    #[test]
    fn levels_and_severities_parse_and_order() {
        for (s, l) in [
            ("DEBG", Level::Debug),
            ("debug", Level::Debug),
            ("Warning", Level::Warn),
            ("CRIT", Level::Critical),
            ("fatl", Level::Fatal),
            ("FATAL", Level::Fatal),
            ("UNKN", Level::Info),
            ("error", Level::Error),
        ] {
            assert_eq!(Level::parse(s), Some(l), "{s}");
            assert_eq!(s.parse::<Level>().unwrap(), l);
        }
        assert!(
            Level::Debug < Level::Info
                && Level::Error < Level::Critical
                && Level::Critical < Level::Fatal
        );
        let err = "loud".parse::<Level>().unwrap_err().to_string();
        assert!(
            err.contains("\"loud\"") && err.contains("expected"),
            "{err}"
        );

        assert!(Severity::Info < Severity::Success && Severity::Success < Severity::Warning);
        assert!(Severity::Error < Severity::Critical);
        assert_eq!("warning".parse::<Severity>().unwrap(), Severity::Warning);
        assert!("none".parse::<Severity>().is_err());
        assert_eq!(Severity::Critical.color(), 0xE74C3C);
        assert_eq!(Severity::Error.color(), 0xE67E22);
        assert_eq!(Severity::Warning.color(), 0xF1C40F);
        assert_eq!(Severity::Success.color(), 0x2ECC71);
        assert_eq!(Severity::Info.color(), 0x3498DB);
    }

    #[test]
    fn mentions_are_strict() {
        assert_eq!(Mention::parse("<@&123>"), Some(Mention::Role(123)));
        assert_eq!(Mention::parse("<@123>"), Some(Mention::User(123)));
        assert_eq!(Mention::parse(" <@!42> "), Some(Mention::User(42)));
        assert_eq!(Mention::parse("role:7"), Some(Mention::Role(7)));
        assert_eq!(Mention::parse("user:8"), Some(Mention::User(8)));
        for bad in [
            "@everyone",
            "@here",
            "<@&>",
            "<@&12a>",
            "role:",
            "<@0>",
            "123",
            "<#123>",
            "user:99999999999999999999999",
        ] {
            assert_eq!(Mention::parse(bad), None, "{bad}");
        }
        assert_eq!(Mention::Role(5).to_string(), "<@&5>");
        assert_eq!(Mention::User(6).to_string(), "<@6>");
        let am = Mention::allowed_mentions(Some(&Mention::Role(5)));
        assert_eq!(
            am,
            serde_json::json!({"parse": [], "roles": ["5"], "users": []})
        );

        let mut s = spec("loud", "x", "error", "");
        s.mention = Some("@everyone".into());
        let err = Rules::with_user(&[s]).unwrap_err().to_string();
        assert!(
            err.contains("\"loud\"") && err.contains("\"@everyone\""),
            "{err}"
        );
    }

    #[test]
    fn rule_specs_deserialize() {
        let s: RuleSpec = serde_json::from_value(serde_json::json!({
            "name": "fr", "pattern": "(?i)interrompu", "severity": "error", "mention": "role:1"
        }))
        .unwrap();
        assert_eq!((s.title.as_str(), s.module.as_deref()), ("", None));
        assert!(
            serde_json::from_value::<RuleSpec>(
                serde_json::json!({"pattern": "x", "severty": "error"})
            )
            .is_err()
        );
        let f: FilterSpec =
            serde_json::from_value(serde_json::json!({"min_level": "info"})).unwrap();
        assert_eq!(f.min_level.as_deref(), Some("info"));
        assert!(f.modules.is_empty());
    }

    #[test]
    fn notifyrc_and_indiserver_rule_titles() {
        let rules = Rules::builtin();
        let server = |t: &str| {
            format!(
                r#"[2023-06-16T22:01:03.123 CEST DEBG ][org.kde.kstars.indi] - INDI Server:  "2023-06-16T20:01:03: {t}""#
            )
        };
        let ekos = |m: &str| {
            format!(
                r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.scheduler] - "{m}""#
            )
        };
        for (line, rule, severity, title) in [
            (server("Driver indi_asi_ccd: process 42 killed with signal 11 - Segmentation fault"),
                "indi-driver-killed", Severity::Critical, "INDI driver indi_asi_ccd killed by signal 11"),
            (server("Driver indi_asi_ccd: process 42 exited with status 1"),
                "indi-driver-exited", Severity::Error, "INDI driver indi_asi_ccd exited with status 1"),
            (server("Driver indi_asi_ccd: Error on stderr: Connection reset by peer"),
                "indi-driver-pipe-error", Severity::Error, "INDI driver indi_asi_ccd pipe error: Connection reset by peer"),
            (server("Driver indi_asi_ccd: stdin EOF"),
                "indi-driver-eof", Severity::Error, "INDI driver indi_asi_ccd exited (stdin EOF)"),
            (server("Driver indi_nope: execlp indi_nope: No such file or directory"),
                "indi-driver-start-failed", Severity::Error, "INDI driver indi_nope failed to start: No such file or directory"),
            (server("Driver indi_asi_ccd: restart #2"),
                "indi-driver-restart", Severity::Warning, "INDI driver indi_asi_ccd restarted (#2)"),
            (r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.scheduler] - Executing Job  "M31 LRGB""#.to_string(),
                "job-started", Severity::Info, "Job M31 LRGB started"),
            (ekos("Job 'M31' has not been processed upon scheduler stop, marking aborted."),
                "job-aborted", Severity::Warning, "Job M31 aborted"),
            (ekos("Job 'M31' is terminated due to errors."), "job-failed", Severity::Error, "Job M31 failed"),
            (ekos("Job 'M31' repositioning is complete."), "slew-complete", Severity::Info, "Slew to M31 complete"),
            (ekos("Job 'M42' cannot start because weather status is Alert. Waiting until weather improves or until x"),
                "weather-alert", Severity::Error, "Weather alert"),
            (ekos("Warning: mount park operation timed out on last attempt."),
                "mount-park-failed", Severity::Error, "Mount parking failed"),
            (ekos("Job 'M42' scheduled for execution at x. Observatory scheduled for shutdown until next job is ready."),
                "scheduler-sleeping", Severity::Info, "Scheduler sleeping"),
            (ekos("Warning: job 'M31' calibration failed."),
                "guide-calibration-failed", Severity::Error, "Guide calibration failed"),
            (ekos("Guiding resumed."), "guide-started", Severity::Info, "Guiding"),
            (ekos("Parking dome..."), "dome-parking", Severity::Info, "Dome moving"),
        ] {
            let ev = event(&rules, &line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                (ev.rule.as_str(), ev.severity, ev.title.as_str()),
                (rule, severity, title),
                "{line}"
            );
        }
        // Driver traffic and a deliberate FIFO stop are not events.
        for quiet in [
            server("Driver indi_asi_ccd: snooping on Telescope.EQUATORIAL_EOD_COORD"),
            server("FIFO: Shutting down driver: indi_asi_ccd"),
            ekos("Manual shutdown procedure completed successfully."),
            ekos("Job 'M31' alignment is complete."),
        ] {
            assert_eq!(event(&rules, &quiet), None, "{quiet}");
        }
    }

    /// Every text Ekos' PHD2 client logs about guiding trouble, as
    /// `appendLogText` writes it in either log format (kstars
    /// ekos/guide/externalguide/phd2.cpp, versions of 2016, 2018 and since).
    #[test]
    fn phd2_texts_are_classified() {
        let rules = Rules::builtin();
        let modern = |m: &str| {
            format!(
                r#"[2024-03-09T23:41:07.512 CET INFO ][     org.kde.kstars.ekos.guide] - "{m}""#
            )
        };
        let old = |m: &str| format!("2017-06-21T08:04:58.505 - INFO - Guide:  \"{m}\"");
        #[rustfmt::skip]
        let cases = [
            // `i18n("PHD2: Star Lost. Trying to reacquire for %1s.", Options::guideLostStarTimeout())`
            ("PHD2: Star Lost. Trying to reacquire for 15s.", "guide-star-lost", Severity::Warning, "Lost track of the guide star"),
            ("PHD2: Star Lost. Trying to reacquire.", "guide-star-lost", Severity::Warning, "Lost track of the guide star"),
            ("PHD2: Star Lost.", "guide-star-lost", Severity::Warning, "Lost track of the guide star"),
            ("PHD2: Star found, guiding is resuming...", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Star found, guiding resumed.", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Guiding started.", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Guiding Started.", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Guiding resumed.", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Settling complete, Guiding Started.", "guide-started", Severity::Info, "Guiding"),
            ("PHD2: Guiding Stopped.", "guide-stopped", Severity::Info, "Guiding stopped"),
            ("PHD2: Calibration Failed (Guide star lost).", "guide-calibration-failed", Severity::Error, "Guide calibration failed"),
            ("PHD2: Calibration turned to looping, failed.", "guide-calibration-failed", Severity::Error, "Guide calibration failed"),
            ("PHD2: Settling failed (timed-out waiting for guider to settle).", "guide-settle-failed", Severity::Warning,
                "Guide settling failed: timed-out waiting for guider to settle"),
            ("PHD2: There was no dithering response from PHD2, but continue guiding.", "dither-failed", Severity::Warning, "Dithering failed"),
            ("The host disconnected.", "guide-connection-lost", Severity::Error, "Guider connection lost"),
            ("The connection was refused by the peer. Make sure the PHD2 is running, and check that the host name and port settings are correct.",
                "guide-connection-lost", Severity::Error, "Guider connection lost"),
            ("The host was not found. Please check the host name and port settings in Guide options.",
                "guide-connection-lost", Severity::Error, "Guider connection lost"),
            ("PHD2 Error: Equipment not connected.", "guide-connection-lost", Severity::Error, "Guider connection lost"),
            // `i18n("PHD2 %1: %2", jsonEvent["Type"], jsonEvent["Msg"])`
            ("PHD2 error: Mount not connected", "phd2-alert", Severity::Error, "PHD2: Mount not connected"),
        ];
        for (msg, rule, severity, title) in cases {
            for line in [modern(msg), old(msg)] {
                let ev = event(&rules, &line).unwrap_or_else(|| panic!("{line}"));
                assert_eq!(
                    (ev.rule.as_str(), ev.severity, ev.title.as_str()),
                    (rule, severity, title),
                    "{line}"
                );
            }
        }
        // Chatter, and lines whose trouble another line reports: the
        // `Autoguiding aborted.` or `Dithering failed.` that guide.cpp logs
        // with them, or the settling failure before them.
        for quiet in [
            "PHD2: Lock Position Lost.",
            "PHD2: Lock Position Lost, continuing calibration.",
            "PHD2: Settling failed, aborted.",
            "PHD2: There was a dithering error, but continue guiding.",
            "PHD2: failing after dithering aborts.",
            "PHD2: Guiding paused.",
            "PHD2: Calibration Complete.",
            "PHD2: Version 2.6.11",
            "PHD2 info: Dark library built",
            "PHD2 warning: Star mass changed",
            "PHD2: Waiting for guiding to settle.",
            "Reconnecting to PHD2 Host: localhost, on port 4400. . .",
        ] {
            assert_eq!(event(&rules, &modern(quiet)), None, "{quiet}");
        }
    }

    #[test]
    fn builtin_titles() {
        let rules = Rules::builtin();
        let ev = event(&rules, CAPTURE).unwrap();
        assert_eq!(
            (ev.severity, ev.title.as_str(), ev.rule.as_str()),
            (Severity::Info, "Image 2/17 received", "image-received")
        );
        let crash = r#"[2023-06-16T22:01:03.123 CEST CRIT ][           org.kde.kstars.indi] - INDI driver  "indi_eqmod_telescope"  crashed!"#;
        assert_eq!(
            event(&rules, crash).unwrap().title,
            "INDI driver indi_eqmod_telescope crashed"
        );
        let eof = r#"[2023-06-16T22:01:03.123 CEST DEBG ][org.kde.kstars.indi] - INDI Server:  "2023-06-16T20:01:03: Driver indi_asi_ccd: stderr EOF""#;
        assert_eq!(
            event(&rules, eof).unwrap().title,
            "INDI driver indi_asi_ccd exited (stderr EOF)"
        );
        let bare = "Driver: Terminated after 3 restarts";
        assert_eq!(
            event(&rules, bare).unwrap().title,
            "INDI driver terminated after 3 restarts"
        );
        let job = r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.scheduler] - "Job 'M31 LRGB' is complete.""#;
        assert_eq!(event(&rules, job).unwrap().title, "Job M31 LRGB complete");
        let indi = r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.indi] - EQMod Mount :  "[ERROR] Failed to read position. Error: 4 ""#;
        assert_eq!(
            event(&rules, indi).unwrap().title,
            "EQMod Mount: Failed to read position. Error: 4"
        );
        let quoted = r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.indi] - "EQMod Mount : \"2023-06-16T20:53:01: [ERROR] Timeout \" ""#;
        assert_eq!(event(&rules, quoted).unwrap().title, "EQMod Mount: Timeout");
        let file = "ERROR\t20.000000 sec\t: Error reading temperature.";
        assert_eq!(
            event(&rules, file).unwrap().title,
            "INDI: Error reading temperature."
        );
        let dollars = r#"[2023-06-16T22:01:03.123 CEST CRIT ][org.kde.kstars] - "Cost $100 ${1}""#;
        assert_eq!(
            event(&rules, dollars).unwrap().title,
            "Critical: Cost $100 ${1}"
        );
        let long = format!(
            "[2023-06-16T22:01:03.123 CEST CRIT ][org.kde.kstars] - \"{}\"",
            "é".repeat(500)
        );
        let title = event(&rules, &long).unwrap().title;
        assert_eq!(
            title.chars().count(),
            "Critical: ".len() + MESSAGE_CHARS + 1
        );
        // Plain WARN lines are not events.
        assert_eq!(
            event(
                &rules,
                "[2023-06-16T22:01:03.123 CEST WARN ][org.kde.kstars] - \"meh\""
            ),
            None
        );
    }

    #[test]
    fn user_rules_come_first_and_replace_builtins() {
        let mut fr = spec(
            "fr",
            r"(?i)guidage automatique (?P<what>interrompu)",
            "error",
            "Guidage ${what}: ${message}",
        );
        fr.mention = Some("<@&99>".into());
        fr.module = Some("guide".into());
        let before = spec("", "Received image", "warning", "");
        let mut crash = spec("indi-driver-crashed", "", "critical", "");
        crash.mention = Some("user:5".into());
        let rules =
            Rules::with_user(&[fr, before, spec("mount-parked", "", "none", ""), crash]).unwrap();

        let line = r#"[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.guide] - "Guidage automatique interrompu. $1""#;
        let ev = event(&rules, line).unwrap();
        assert_eq!(
            ev.title,
            "Guidage interrompu: Guidage automatique interrompu. $1"
        );
        assert_eq!(
            (ev.rule.as_str(), ev.mention),
            ("fr", Some(Mention::Role(99)))
        );
        // The module restriction holds.
        assert_eq!(
            event(&rules, &line.replace("ekos.guide", "ekos.focus")),
            None
        );

        let ev = event(&rules, CAPTURE).unwrap();
        assert_eq!(
            (ev.rule.as_str(), ev.severity, ev.title.as_str()),
            ("user-2", Severity::Warning, "Received image 2 out of 17.")
        );

        assert_eq!(event(&rules, "Mount parked."), None);
        let ev = event(&rules, "INDI driver indi_x crashed").unwrap();
        assert_eq!(
            (ev.title.as_str(), ev.mention),
            ("INDI driver indi_x crashed", Some(Mention::User(5)))
        );

        let names: Vec<String> = rules.describe().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(&names[..2], ["fr", "user-2"]);
        assert!(!names.contains(&"mount-parked".to_string()));
        // A replaced built-in keeps its place before the catch-alls.
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("indi-driver-crashed") < pos("critical"));
    }

    #[test]
    fn a_replaced_level_rule_keeps_its_place() {
        let mut crit = spec("critical", "", "error", "");
        crit.mention = Some("role:1".into());
        let rules = Rules::with_user(&[crit]).unwrap();
        let line = "[2023-06-16T22:01:03.123 CEST CRIT ][org.kde.kstars.indi] - INDI driver  \"indi_x\"  crashed!";
        assert_eq!(event(&rules, line).unwrap().rule, "indi-driver-crashed");
        let ev = event(
            &rules,
            "[2023-06-16T22:01:03.123 CEST CRIT ][org.kde.kstars] - \"x\"",
        )
        .unwrap();
        assert_eq!(
            (ev.severity, ev.title.as_str(), ev.mention),
            (Severity::Error, "Critical: x", Some(Mention::Role(1)))
        );
        let fatal = Rules::with_user(&[spec("fatal", "", "error", "Boom: ${message} $1")]).unwrap();
        let ev = event(
            &fatal,
            "[2023-06-16T22:01:03.123 CEST FATL ][org.kde.kstars] - \"$2 gone\"",
        );
        assert_eq!(ev.unwrap().title, "Boom: $2 gone $1");
        let off = Rules::with_user(&[spec("indi-error", "", "ignore", "")]).unwrap();
        assert_eq!(event(&off, "ERROR\t1.0 sec\t: x"), None);
    }

    #[test]
    fn rule_errors_name_the_rule_and_value() {
        let err = |specs: &[RuleSpec]| Rules::with_user(specs).unwrap_err().to_string();
        let e = err(&[spec("a", "x", "urgent", "")]);
        assert_eq!(
            e,
            "rule \"a\": invalid severity \"urgent\": expected one of info, success, warning, error, critical, none"
        );
        let e = err(&[spec("", "(", "error", "")]);
        assert!(e.starts_with("rule \"user-1\": invalid pattern"), "{e}");
        let e = err(&[spec("mine", "", "error", "")]);
        assert!(e.starts_with("rule \"mine\": pattern is empty"), "{e}");
        let e = err(&[spec("a", "x", "error", ""), spec("a", "y", "info", "")]);
        assert!(e.contains("duplicate rule name \"a\""), "{e}");
        for e in [e, err(&[spec("a", "x", "bad", "")])] {
            assert!(
                !e.ends_with('.') && e.chars().next().unwrap().is_lowercase(),
                "{e}"
            );
        }
    }

    #[test]
    fn describe_lists_every_builtin() {
        let described = Rules::builtin().describe();
        assert_eq!(described.len(), BUILTINS.len());
        for (b, (name, pattern, severity)) in BUILTINS.iter().zip(&described) {
            assert_eq!((name.as_str(), *severity), (b.name, b.severity));
            assert!(!pattern.is_empty());
        }
    }

    #[test]
    fn trigram_prefilter_never_hides_a_builtin() {
        let trigrams = Trigrams::new(BUILTINS.iter().flat_map(|b| b.anchors.iter().copied()));
        for b in BUILTINS.iter().filter(|b| b.level.is_none()) {
            for a in b.anchors {
                assert!(
                    b.pattern.to_ascii_lowercase().contains(a),
                    "{}: {a}",
                    b.name
                );
                assert!(trigrams.maybe(&a.to_ascii_uppercase()), "{a}");
            }
        }
        // Every alternative of a pattern needs its own anchor.
        let rules = Rules::builtin();
        for text in [
            "Astrometric solver is successful",
            "Solver completed after 3 seconds",
            "Meridian flip started",
            "Starting meridian flip",
            "stdin EOF",
            "stderr EOF",
            "CCD capture aborted",
            "camera capture aborted",
        ] {
            assert!(
                trigrams.maybe(text) && event(&rules, text).is_some(),
                "{text}"
            );
        }
        assert!(!trigrams.maybe("Capture exposure 300 seconds remaining: 12"));
    }

    /// Real lines (`tests/data`), and variants of them: case flipped,
    /// spliced with other lines, cut, with random bytes and non-ASCII
    /// text; some longer than the prefilter's stack buffer. Seeded, so a
    /// failure is repeatable.
    fn prefilter_corpus() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
        let mut real: Vec<String> = Vec::new();
        for name in ["ekos-corpus.txt", "night-2024-03-09.txt"] {
            let text = std::fs::read_to_string(format!("{dir}{name}")).unwrap();
            real.extend(text.lines().map(str::to_string));
        }
        real.extend(
            BUILTINS
                .iter()
                .flat_map(|b| b.anchors.iter().map(|a| a.to_string())),
        );
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut corpus = real.clone();
        for _ in 0..20_000 {
            let mut s = real[next() as usize % real.len()].clone();
            for _ in 0..next() % 4 {
                match next() % 6 {
                    0 => {
                        s = s
                            .chars()
                            .map(|c| {
                                if next() % 2 == 0 {
                                    c.to_ascii_uppercase()
                                } else {
                                    c.to_ascii_lowercase()
                                }
                            })
                            .collect()
                    }
                    1 => {
                        let other = &real[next() as usize % real.len()];
                        let cut = (0..=other.len())
                            .filter(|&i| other.is_char_boundary(i))
                            .nth(next() as usize % (other.chars().count() + 1))
                            .unwrap_or(0);
                        s.push_str(&other[cut..]);
                    }
                    2 => {
                        let keep = (0..=s.len())
                            .filter(|&i| s.is_char_boundary(i))
                            .nth(next() as usize % (s.chars().count() + 1))
                            .unwrap_or(0);
                        s.truncate(keep);
                    }
                    3 => s.push(char::from(32 + (next() % 95) as u8)),
                    4 => s.push_str(["é", "°", "\u{200b}", "ß", "\t", "@`[{"][next() as usize % 6]),
                    _ => s = s.repeat(1 + (next() % 4) as usize),
                }
            }
            corpus.push(s);
        }
        corpus
    }

    #[test]
    fn prefilter_agrees_with_each_builtin_pattern() {
        let regexes: Vec<Regex> = BUILTINS
            .iter()
            .filter(|b| b.level.is_none())
            .map(|b| Regex::new(b.pattern).unwrap())
            .collect();
        let anchors = builtin_anchors();
        let packed = Prefilter::new(&anchors);
        let fallback = Prefilter {
            packed: None,
            ..packed.clone()
        };
        if cfg!(target_arch = "x86_64") {
            // The vectorised searcher is what is measured on this machine.
            assert!(packed.packed.is_some());
        }
        let corpus = prefilter_corpus();
        assert!(corpus.iter().any(|t| t.len() > FOLD_STACK));
        let (mut matched, mut passed) = (0, 0);
        for text in &corpus {
            for t in [text.as_str(), parse(text).message] {
                let hit = regexes.iter().any(|r| r.is_match(t));
                matched += usize::from(hit);
                passed += usize::from(packed.maybe(t));
                if hit {
                    assert!(packed.maybe(t), "{t:?}");
                    assert!(fallback.maybe(t), "{t:?}");
                }
            }
        }
        // The corpus exercises both sides: lines the rules match, and
        // lines the prefilter turns away.
        assert!(matched > 1000, "{matched}");
        assert!(passed < corpus.len() * 2, "{passed}");
        assert!(!packed.maybe("Capture exposure 300 seconds remaining: 12"));
        assert!(!packed.maybe(&"abcdefghijklmnopqrstuvwxyz0123456789 ".repeat(20)));
    }

    #[test]
    fn classification_is_the_same_with_either_prefilter() {
        let fast = Rules::builtin();
        let mut slow = Rules::builtin();
        slow.prefilter.packed = None;
        for text in prefilter_corpus() {
            let rec = parse(&text);
            assert_eq!(fast.classify(&rec), slow.classify(&rec), "{text:?}");
        }
    }

    #[test]
    fn builtin_patterns_compile_alone_and_as_one_set() {
        // What `Patterns::builtin` relies on instead of compiling them at
        // start-up; a set of some of them is within the limits too.
        let patterns: Vec<&str> = BUILTINS
            .iter()
            .filter(|b| b.level.is_none())
            .map(|b| b.pattern)
            .collect();
        for p in &patterns {
            Regex::new(p).unwrap();
        }
        RegexSet::new(&patterns).unwrap();
        let rules = Rules::builtin();
        assert_eq!(rules.builtin.regexes.len(), patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            assert_eq!(rules.builtin.regex(i).as_str(), *p);
        }
        assert_eq!(rules.builtin.set().len(), patterns.len());
    }

    #[test]
    fn dash_separator_is_the_first_spaced_dash() {
        for (b, want) in [
            (&b"2017-06-21T08:04:58.505 - DEBG - x"[..], Some(23)),
            (b"2017-06-21 - x", Some(10)),
            (b" - ", Some(0)),
            (b"- - ", Some(1)),
            (b"a -b - c", Some(4)),
            (b"2025-01-01T21:30:00.000 INFO [bench] c0 Q", None),
            (b"a -", None),
            (b"", None),
        ] {
            let windows = b.windows(3).position(|w| w == b" - ");
            assert_eq!(
                find_dash_separator(b),
                want,
                "{:?}",
                String::from_utf8_lossy(b)
            );
            assert_eq!(windows, want);
        }
    }

    #[test]
    fn filters() {
        let filter = |spec: FilterSpec| Filter::new(&spec).unwrap();
        let info = filter(FilterSpec {
            min_level: Some("info".into()),
            ..Default::default()
        });
        let debg = parse("[2023-06-16T22:01:03.123 CEST DEBG ][org.kde.kstars.ekos.guide] - \"x\"");
        let indi_err =
            parse("[2023-06-16T22:01:03.123 CEST DEBG ][org.kde.kstars.indi] - \"[ERROR] x\"");
        let indi_dbg =
            parse("[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.indi] - \"[DEBUG] x\"");
        assert!(!info.keep(&debg) && info.keep(&indi_err) && !info.keep(&indi_dbg));
        assert!(info.keep(&parse("  continuation")) && info.keep(&parse(CAPTURE)));

        // min_level never hides an event of severity warning or above.
        let crit_only = filter(FilterSpec {
            min_level: Some("CRIT".into()),
            ..Default::default()
        });
        let lost = parse(
            "[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.guide] - \"Lost track of the guide star.\"",
        );
        let rules = Rules::builtin();
        assert!(!crit_only.keep(&lost));
        assert!(crit_only.keep_with_event(&lost, rules.classify(&lost).as_ref()));
        let img = parse(CAPTURE);
        assert!(!crit_only.keep_with_event(&img, rules.classify(&img).as_ref()));

        let mods = filter(FilterSpec {
            modules: vec!["capture".into(), "ekos.guide".into()],
            drop_modules: vec!["INDI".into()],
            ..Default::default()
        });
        assert!(mods.keep(&img) && mods.keep(&debg) && !mods.keep(&indi_err));
        assert!(!mods.keep(&parse(
            "[2023-06-16T22:01:03.123 CEST INFO ][org.kde.kstars.ekos.recapture] - x"
        )));
        assert!(
            !mods.keep(&parse("ERROR\t1.0 sec\t: no device"))
                && mods.keep(&parse("  continuation"))
        );
        let drop = filter(FilterSpec {
            drop_modules: vec!["indi".into()],
            ..Default::default()
        });
        assert!(!drop.keep(&indi_err) && drop.keep(&img));

        let re = filter(FilterSpec {
            include_regex: vec!["ekos\\.".into()],
            exclude_regex: vec!["Received".into()],
            ..Default::default()
        });
        assert!(re.keep(&debg) && !re.keep(&img) && !re.keep(&indi_err));

        let err = |spec: FilterSpec| Filter::new(&spec).unwrap_err().to_string();
        assert_eq!(
            err(FilterSpec {
                min_level: Some("loud".into()),
                ..Default::default()
            }),
            "invalid min_level \"loud\": expected one of debug, info, warn, error, critical, fatal"
        );
        assert!(
            err(FilterSpec {
                exclude_regex: vec!["ok".into(), "(".into()],
                ..Default::default()
            })
            .starts_with("invalid exclude_regex entry \"(\"")
        );
        assert_eq!(
            err(FilterSpec {
                modules: vec![" ".into()],
                ..Default::default()
            }),
            "empty modules entry: expected a category such as \"capture\""
        );
    }

    fn corpus_rules() -> Rules {
        let mut fr = spec(
            "guide-aborted-fr",
            "(?i)guidage automatique interrompu",
            "error",
            "Autoguidage interrompu",
        );
        fr.module = Some("guide".into());
        Rules::with_user(&[
            fr,
            spec(
                "capture-failed-fr",
                "(?i)échec de la capture",
                "error",
                "Échec de la capture",
            ),
            spec(
                "image-recue-fr",
                r"(?i)image (\d+) sur (\d+) reçue",
                "info",
                "Image $1/$2 reçue",
            ),
            spec(
                "quiet-sql",
                "QSqlDatabasePrivate::removeDatabase",
                "none",
                "",
            ),
        ])
        .unwrap()
    }

    #[test]
    fn corpus_matches_expectations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
        let read = |name: &str| {
            std::fs::read_to_string(format!("{dir}{name}"))
                .unwrap_or_else(|e| panic!("{dir}{name}: {e}"))
        };
        let corpus = read("ekos-corpus.txt");
        let expected = read("ekos-corpus.expected");
        let (lines, wants): (Vec<&str>, Vec<&str>) =
            (corpus.lines().collect(), expected.lines().collect());
        assert!(lines.len() >= 80, "corpus too small");
        assert_eq!(lines.len(), wants.len(), "one expectation per corpus line");
        let rules = corpus_rules();
        let mut failures = Vec::new();
        for (n, (line, want)) in lines.iter().zip(&wants).enumerate() {
            let got = match rules.classify(&parse(line)) {
                Some(ev) => format!("{}\t{}", ev.severity, ev.rule),
                None => "-\t-".to_string(),
            };
            if got != *want {
                failures.push(format!(
                    "line {}: got {got:?}, want {want:?}: {line}",
                    n + 1
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        for b in BUILTINS {
            assert!(
                wants.iter().any(|w| w.ends_with(&format!("\t{}", b.name))),
                "corpus lacks {}",
                b.name
            );
        }
    }

    /// Prints parse and classify throughput; asserts nothing about time.
    /// Run with `cargo test --release throughput -- --nocapture`.
    #[test]
    fn throughput() {
        // Typical chatter of a guided capture session with verbose logging,
        // with one event line in sixteen (real sessions have far fewer).
        let chatter = [
            r#"[2023-06-16T22:01:03.123 CEST DEBG ][    org.kde.kstars.ekos.guide] - "Guide RA: 0.213\" DEC: -0.117\" RMS: 0.61\"""#,
            r#"[2023-06-16T22:01:03.456 CEST DEBG ][  org.kde.kstars.ekos.capture] - "Capture exposure 300 seconds remaining: 12 ""#,
            r#"[2023-06-16T22:01:03.789 CEST INFO ][           org.kde.kstars.indi] - EQMod Mount :  "[SCOPE] dispatch_command: \":j1\", 3 bytes written ""#,
            r#"[2023-06-16T22:01:04.012 CEST DEBG ][           org.kde.kstars.fits] - "Loading FITS file /home/astro/Pictures/M31/Light/L/M31_Light_L_120_secs_2023-06-16T22-01-04_042.fits""#,
            r#"[2023-06-16T22:01:04.345 CEST INFO ][  org.kde.kstars.ekos.capture] - "Capturing 120.000-second L image...""#,
            "DEBUG\t1234.567890 sec\t: [ZWO CCD ASI294MC Pro] Exposure in progress: Time left 2.1 seconds",
            "2017-06-21T08:04:58.505 - DEBG - Guide:  \"Pulse guiding RA 120 ms\"",
            r#"[2023-06-16T22:01:04.501 CEST DEBG ][    org.kde.kstars.ekos.guide] - "Star drift: dx 0.12 dy -0.31 SNR 41.2""#,
            r#"[2023-06-16T22:01:04.502 CEST DEBG ][    org.kde.kstars.ekos.focus] - "Focuser position 31250, HFR 2.31""#,
            r#"[2023-06-16T22:01:04.503 CEST DEBG ][org.kde.kstars.ekos.scheduler] - "Job M31 LRGB: checking altitude 54.2 degrees""#,
            "INFO\t1240.000000 sec\t: [EQMod Mount] Tracking at sidereal rate",
            r#"[2023-06-16T22:01:04.504 CEST INFO ][           org.kde.kstars.indi] - ZWO CCD ASI294MC Pro :  "[DEBUG] Temperature -10.0 C, cooler power 38% ""#,
            r#"[2023-06-16T22:01:04.505 CEST DEBG ][    org.kde.kstars.ekos.mount] - "Mount RA 00:42:44 DE +41:16:09 HA 01:12:30 pier side West""#,
            r#"[2023-06-16T22:01:04.506 CEST DEBG ][    org.kde.kstars.ekos.align] - "Solver arguments: --ra 10.68 --dec 41.27 --radius 5""#,
            "[2023-06-16T22:01:04.507 CEST DEBG ][  org.kde.kstars.ekos.capture] - \"Dithering...\"",
        ];
        let event = r#"[2023-06-16T22:01:04.678 CEST INFO ][  org.kde.kstars.ekos.capture] - "Received image 12 out of 40.""#;
        let target = if cfg!(debug_assertions) {
            5 << 20
        } else {
            50 << 20
        };
        let (mut lines, mut bytes) = (Vec::new(), 0);
        while bytes < target {
            let n = lines.len();
            let line = if n % 16 == 15 { event } else { chatter[n % 16] };
            bytes += line.len() + 1;
            lines.push(line);
        }
        let rules = Rules::builtin();
        let filter = Filter::new(&FilterSpec {
            min_level: Some("info".into()),
            ..Default::default()
        })
        .unwrap();
        let mb = bytes as f64 / 1e6;
        // Best of three, to see through other load on the machine.
        let time = |f: &dyn Fn(&str) -> usize| {
            let mut best = 0f64;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                let n: usize = lines.iter().map(|l| f(std::hint::black_box(l))).sum();
                std::hint::black_box(n);
                best = best.max(mb / start.elapsed().as_secs_f64());
            }
            best
        };
        let parse_rate = time(&|l| parse(l).message.len());
        let classify_rate = time(&|l| rules.classify(&parse(l)).map_or(0, |e| e.title.len()));
        let all_rate = time(&|l| {
            let rec = parse(l);
            let ev = rules.classify(&rec);
            usize::from(filter.keep_with_event(&rec, ev.as_ref()))
        });
        let events = lines
            .iter()
            .filter(|l| rules.classify(&parse(l)).is_some())
            .count();
        assert_eq!(events, lines.len() / 16);
        println!(
            "throughput over {mb:.0} MB, {} lines, {events} events: parse {parse_rate:.0} MB/s, parse+classify {classify_rate:.0} MB/s, parse+classify+filter {all_rate:.0} MB/s",
            lines.len()
        );
    }
}
