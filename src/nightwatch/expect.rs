//! `[[expect]]` tables: a line a script log must show every day by a
//! deadline, such as a backup's `completed` by 04:30.
//!
//! Silence is the failure a log shipper cannot see: a cron job that never
//! ran writes nothing. Each expectation names the followed file(s) (`file`,
//! a glob: without `/` it matches the file name in any source, with `/` the
//! whole path, relative to the configuration file's directory), a regex
//! `pattern`, a daily deadline `by` on the local wall clock and optionally
//! the `weekdays` it applies to. A matching line counts for the next
//! deadline: written after the previous deadline and at or before this one.
//!
//! When a deadline passes without one, [`Expectations::due`] returns one
//! [`Alert`] ("backup.log: no 'completed' line by 04:30"). A matching line
//! within [`LATE_WINDOW`] after a missed deadline is reported once as late
//! (and does not count for the next deadline); later lines count for the
//! next one. Everything is judged on [`Local`] values the caller passes, so
//! time is simulated in tests; deadlines are compared as (day, time of day)
//! on the wall clock, so a jump forward (a daylight-saving change, the
//! clock set after a boot, a suspend) reports the latest passed deadline
//! once, not each one skipped, and a jump back never reports a deadline
//! twice. Deadlines that passed before the daemon started (or before the
//! first call) are not judged: their lines may have been written unseen.
//!
//! Across a restart the state is saved ([`Expectations::saved`], restored by
//! [`Expectations::restore`]): a deadline already judged is not judged
//! again (no second alert), a line seen before the restart still counts,
//! and a deadline that passed while the daemon was down is judged once,
//! after a grace period ([`Expectations::restore`]'s `hold_until`) in which
//! the lines the watcher reads back from its checkpoint (written while the
//! daemon was down, at unknown times) count as on time: a line that may
//! have been in time is given the benefit of the doubt, rather than a false
//! alert. An expectation without saved state (new in the configuration)
//! starts fresh, as at a first start.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use crate::localtime::{Local, TimeError, TimeOfDay, Weekday};

/// How long after a missed deadline a matching line is "late" rather than
/// the next day's.
pub const LATE_WINDOW: i64 = 12 * 3600;
/// Longest shown pattern in an alert.
const SHOWN_PATTERN: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("{key} = {value:?}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
}

/// One `[[expect]]` table as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: Option<String>,
    pub file: String,
    pub pattern: String,
    pub by: String,
    #[serde(default)]
    pub weekdays: Option<Vec<String>>,
}

/// Keys of an `[[expect]]` table, for messages.
pub const KEYS: &[&str] = &["name", "file", "pattern", "by", "weekdays"];

/// A validated expectation.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub name: String,
    file: glob::Pattern,
    /// The pattern is a whole path (it has a `/`).
    whole_path: bool,
    pattern: Regex,
    pub by: TimeOfDay,
    /// Monday first; all true without `weekdays`.
    days: [bool; 7],
}

impl Expectation {
    /// Validates table number `n` (1-based, for messages); a relative
    /// `file` with a `/` is resolved against `base`.
    pub fn new(spec: &Spec, n: usize, base: &Path) -> Result<Expectation, ExpectError> {
        let key = |k: &str| format!("expect[{n}].{k}");
        let invalid = |k: &str, v: &str, e: &str| ExpectError::Invalid {
            key: key(k),
            value: crate::webhook::redact_secrets(v),
            expected: e.to_string(),
        };
        let by = TimeOfDay::parse(&spec.by).map_err(|_| {
            invalid(
                "by",
                &spec.by,
                "a local time of day as \"HH:MM\", e.g. \"04:30\"",
            )
        })?;
        let pattern = Regex::new(&spec.pattern).map_err(|e| {
            invalid(
                "pattern",
                &spec.pattern,
                &format!("a regular expression ({})", first_line(&e.to_string())),
            )
        })?;
        let raw = spec.file.trim();
        if raw.is_empty() {
            return Err(invalid(
                "file",
                raw,
                "a file name or path, or a glob pattern",
            ));
        }
        let whole_path = raw.contains('/');
        let resolved = if whole_path && !Path::new(raw).is_absolute() {
            base.join(raw).display().to_string()
        } else {
            raw.to_string()
        };
        let file = glob::Pattern::new(&resolved)
            .map_err(|e| invalid("file", raw, &format!("a glob pattern ({})", e.msg)))?;
        let mut days = [true; 7];
        if let Some(list) = &spec.weekdays {
            let parsed: Result<Vec<Weekday>, TimeError> =
                list.iter().map(|d| Weekday::parse(d)).collect();
            let parsed = parsed.map_err(|e| {
                let (TimeError::Weekday(v) | TimeError::TimeOfDay(v)) = e;
                invalid(
                    "weekdays",
                    &v,
                    "days of the week: mon, tue, wed, thu, fri, sat, sun",
                )
            })?;
            if parsed.is_empty() {
                return Err(invalid(
                    "weekdays",
                    "[]",
                    "at least one day of the week (or no weekdays key: every day)",
                ));
            }
            days = [false; 7];
            for d in parsed {
                days[d as usize] = true;
            }
        }
        let name = match &spec.name {
            Some(n) if !n.trim().is_empty() => n.trim().to_string(),
            _ => Path::new(raw)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| raw.to_string()),
        };
        Ok(Expectation {
            name,
            file,
            whole_path,
            pattern,
            by,
            days,
        })
    }

    /// Whether `path` (absolute, as followed) is one of this expectation's files.
    pub fn watches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        if self.whole_path {
            self.file.matches_path_with(path, opts)
        } else {
            path.file_name()
                .is_some_and(|n| self.file.matches_path_with(Path::new(n), opts))
        }
    }

    /// Whether this expectation's file can be one of `source`'s files,
    /// judged from the configuration alone (a literal name or path is
    /// tested against the source's patterns; a glob rarely is one): where
    /// its alerts go before a line of the file was seen.
    pub fn may_be_of(&self, source: &crate::config::Source) -> bool {
        let p = Path::new(self.file.as_str());
        if self.whole_path {
            p.strip_prefix(&source.root)
                .is_ok_and(|rel| source.matches(rel))
        } else {
            source.matches(p)
        }
    }

    /// The latest deadline strictly before `now`, if any within a week.
    fn last_deadline_before(&self, now: Local) -> Option<Local> {
        (0..=7)
            .map(|back| {
                Local {
                    day: now.day - back,
                    secs: 0,
                }
                .at(self.by)
            })
            .find(|d| *d < now && self.days[d.weekday() as usize])
    }

    /// The next deadline at or after `now`.
    fn next_deadline(&self, now: Local) -> Option<Local> {
        (0..=7)
            .map(|ahead| {
                Local {
                    day: now.day + ahead,
                    secs: 0,
                }
                .at(self.by)
            })
            .find(|d| *d >= now && self.days[d.weekday() as usize])
    }

    /// Its identity in saved state.
    fn id(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.name,
            self.file.as_str(),
            self.pattern.as_str(),
            self.by
        )
    }

    fn shown_pattern(&self) -> String {
        crate::limits::cap(self.pattern.as_str(), SHOWN_PATTERN).into_owned()
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// What an alert says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertKind {
    /// No matching line by the deadline.
    Missing,
    /// The matching line came at `at`, after the deadline.
    Late { at: Local },
}

/// One report, for the night-watch actor to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Which expectation (its position in the configuration).
    pub index: usize,
    /// The expectation's name (`name`, else the file name).
    pub name: String,
    pub kind: AlertKind,
    /// The deadline concerned.
    pub deadline: Local,
    /// One line: `backup.log: no 'completed' line by 04:30`.
    pub text: String,
}

impl Alert {
    /// A Discord embed for it: red for a missing line, orange for a late one.
    pub fn embed(&self) -> serde_json::Value {
        let (title, color) = match self.kind {
            AlertKind::Missing => ("Expected line missing", 0xE7_4C_3C),
            AlertKind::Late { .. } => ("Expected line late", 0xE6_7E_22),
        };
        serde_json::json!({
            "title": title,
            "description": crate::limits::cap(&self.text, crate::limits::DESCRIPTION),
            "color": color,
            "footer": {"text": format!("[[expect]] {} · {}", crate::limits::cap(&self.name, 100), self.deadline.date_string())},
        })
    }

    /// The notice to post to route `route`: a new message each time.
    pub fn notice(&self, route: usize) -> crate::notice::Notice {
        crate::notice::Notice {
            route,
            key: self.key(),
            body: serde_json::json!({"embeds": [self.embed()], "allowed_mentions": {"parse": []}}),
            files: Vec::new(),
            policy: crate::notice::Policy::New,
        }
    }

    /// The key under which it is posted (one message per alert).
    pub fn key(&self) -> String {
        let kind = match self.kind {
            AlertKind::Missing => "missing",
            AlertKind::Late { .. } => "late",
        };
        format!("expect:{}:{}:{kind}", self.name, self.deadline)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct State {
    /// The last deadline judged (or passed before the first call).
    judged: Option<Local>,
    /// A matching line came since `judged`.
    seen: bool,
    /// A deadline reported missing whose late line may still come.
    missed: Option<Local>,
}

/// One expectation's state, saved across restarts under its identity
/// (name, file, pattern and deadline: a changed table starts fresh).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub id: String,
    #[serde(flatten)]
    state: State,
}

/// Every expectation and its state.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    items: Vec<(Expectation, State)>,
    /// After a restart with saved state: deadlines at or before `.0` (the
    /// start) are not judged before `.1` (lines read back come first).
    hold: Option<(Local, Local)>,
    /// Moves whenever a state changes (to be saved).
    generation: u64,
}

impl Expectations {
    pub fn new(specs: Vec<Expectation>) -> Expectations {
        Expectations {
            items: specs.into_iter().map(|e| (e, State::default())).collect(),
            hold: None,
            generation: 0,
        }
    }

    /// Changes whenever a state to save changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The identity of expectation `i` in saved state.
    pub fn id(&self, i: usize) -> Option<String> {
        self.items.get(i).map(|(e, _)| e.id())
    }

    /// The state of every expectation that has one, for saving.
    pub fn saved(&self) -> Vec<Saved> {
        self.items
            .iter()
            .filter(|(_, st)| *st != State::default())
            .map(|(e, st)| Saved {
                id: e.id(),
                state: st.clone(),
            })
            .collect()
    }

    /// Restores saved states (those of expectations no longer configured
    /// are dropped) at a restart at `start`; deadlines passed by then are
    /// judged from `hold_until` on. Returns how many were restored.
    pub fn restore(&mut self, saved: Vec<Saved>, start: Local, hold_until: Local) -> usize {
        let mut n = 0;
        for s in saved {
            if let Some((_, st)) = self.items.iter_mut().find(|(e, _)| e.id() == s.id) {
                *st = s.state;
                n += 1;
            }
        }
        if n > 0 {
            self.hold = Some((start, hold_until));
        }
        n
    }

    /// When the hold after a restart ends, if one is on.
    pub fn hold_until(&self) -> Option<Local> {
        self.hold.map(|(_, until)| until)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The positions of the expectations that watch `path`.
    pub fn watching<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = usize> + 'a {
        self.items
            .iter()
            .enumerate()
            .filter(move |(_, (e, _))| e.watches(path))
            .map(|(i, _)| i)
    }

    /// Whether any expectation watches `path` (lines of other files need
    /// not be passed to [`Expectations::observe`]).
    pub fn watches(&self, path: &Path) -> bool {
        self.items.iter().any(|(e, _)| e.watches(path))
    }

    /// One line of `path` arrived at `now`. Judges deadlines passed first
    /// (so a line just after a deadline cannot hide its miss), then returns
    /// those alerts and a late report if this line is one.
    pub fn observe(&mut self, path: &Path, line: &str, now: Local) -> Vec<Alert> {
        let mut out = self.due(now);
        for (index, (e, st)) in self.items.iter_mut().enumerate() {
            if !e.watches(path) || !e.pattern.is_match(line) {
                continue;
            }
            match st.missed.take() {
                Some(m) if now.since(m) <= LATE_WINDOW => {
                    self.generation += 1;
                    let after = now.since(m).max(0);
                    out.push(Alert {
                        index,
                        name: e.name.clone(),
                        kind: AlertKind::Late { at: now },
                        deadline: m,
                        text: format!(
                            "{}: '{}' line at {}, {} after the {} deadline",
                            e.name,
                            e.shown_pattern(),
                            now.time_of_day(),
                            human(after),
                            e.by
                        ),
                    });
                }
                missed => {
                    if !st.seen || missed.is_some() {
                        self.generation += 1;
                    }
                    st.seen = true;
                }
            }
        }
        out
    }

    /// Judges every deadline passed by `now`: one alert per deadline with
    /// no matching line.
    pub fn due(&mut self, now: Local) -> Vec<Alert> {
        let mut out = Vec::new();
        let held = match self.hold {
            Some((start, until)) if now < until => Some(start),
            Some(_) => {
                self.hold = None;
                None
            }
            None => None,
        };
        for (index, (e, st)) in self.items.iter_mut().enumerate() {
            let Some(last) = e.last_deadline_before(now) else {
                continue;
            };
            let Some(judged) = st.judged else {
                // First call: earlier deadlines were not watched.
                st.judged = Some(last);
                self.generation += 1;
                continue;
            };
            if st.missed.is_some_and(|m| now.since(m) > LATE_WINDOW) {
                st.missed = None;
                self.generation += 1;
            }
            if last <= judged || held.is_some_and(|start| last <= start) {
                continue;
            }
            self.generation += 1;
            st.judged = Some(last);
            if std::mem::take(&mut st.seen) {
                st.missed = None;
                continue;
            }
            st.missed = Some(last);
            out.push(Alert {
                index,
                name: e.name.clone(),
                kind: AlertKind::Missing,
                deadline: last,
                text: format!("{}: no '{}' line by {}", e.name, e.shown_pattern(), e.by),
            });
        }
        out
    }

    /// The next deadline of any expectation after `now` (or the end of
    /// the hold after a restart), for the caller's timer (call
    /// [`Expectations::due`] just after it).
    pub fn next_deadline(&self, now: Local) -> Option<Local> {
        self.items
            .iter()
            .filter_map(|(e, _)| e.next_deadline(now))
            .chain(self.hold_until())
            .min()
    }
}

/// `42 min`, `2 h 05 min`, `30 s`.
fn human(secs: i64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs / 60)
    } else {
        format!("{} h {:02} min", secs / 3600, secs / 60 % 60)
    }
}

/// Validates the `[[expect]]` tables of the configuration.
pub fn from_specs(specs: &[Spec], base: &Path) -> Result<Vec<Expectation>, ExpectError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| Expectation::new(s, i + 1, base))
        .collect()
}

/// For `check`: `backup.log: 'completed' in backup.log by 04:30 (mon, tue)`.
pub fn describe(e: &Expectation) -> String {
    let days: Vec<&str> = Weekday::ALL
        .iter()
        .filter(|d| e.days[**d as usize])
        .map(|d| d.as_str())
        .collect();
    let days = if days.len() == 7 {
        "daily".to_string()
    } else {
        days.join(", ")
    };
    format!(
        "{}: '{}' in {} by {} ({days})",
        e.name,
        e.shown_pattern(),
        e.file.as_str(),
        e.by
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(file: &str, pattern: &str, by: &str, weekdays: Option<&[&str]>) -> Spec {
        Spec {
            name: None,
            file: file.into(),
            pattern: pattern.into(),
            by: by.into(),
            weekdays: weekdays.map(|w| w.iter().map(|d| d.to_string()).collect()),
        }
    }

    fn backup() -> Expectations {
        Expectations::new(vec![
            Expectation::new(
                &spec("backup.log", "completed", "04:30", None),
                1,
                Path::new("/etc"),
            )
            .unwrap(),
        ])
    }

    /// 2026-11-23 (a Monday) plus days, at hh:mm.
    fn t(days: i64, hh: u32, mm: u32) -> Local {
        let mut l = Local::ymd_hms(2026, 11, 23, hh, mm, 0).unwrap();
        l.day += days;
        l
    }

    const LOG: &str = "/srv/service/event/backup/backup.log";

    #[test]
    fn a_missed_deadline_is_reported_once() {
        let mut x = backup();
        assert!(
            x.due(t(0, 12, 0)).is_empty(),
            "start: earlier deadlines are not judged"
        );
        assert!(
            x.due(t(1, 4, 30)).is_empty(),
            "at the deadline it is not passed yet"
        );
        let a = x.due(t(1, 4, 31));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].text, "backup.log: no 'completed' line by 04:30");
        assert_eq!(a[0].kind, AlertKind::Missing);
        assert_eq!(a[0].deadline, t(1, 4, 30));
        for m in [32, 40, 59] {
            assert!(x.due(t(1, 4, m)).is_empty());
        }
        assert!(x.due(t(1, 23, 0)).is_empty());
        // The next day misses again: one more alert.
        assert_eq!(x.due(t(2, 5, 0)).len(), 1);
    }

    #[test]
    fn a_line_before_the_deadline_satisfies_it() {
        let mut x = backup();
        x.due(t(0, 12, 0));
        // The previous evening counts (after the previous deadline).
        assert!(
            x.observe(Path::new(LOG), "backup completed in 12 min", t(0, 23, 50))
                .is_empty()
        );
        assert!(x.due(t(1, 4, 31)).is_empty());
        // Only that day: the next one needs its own line.
        assert_eq!(x.due(t(2, 4, 31)).len(), 1);
        // Another file or another line does not count.
        let mut x = backup();
        x.due(t(0, 12, 0));
        x.observe(Path::new("/srv/other.log"), "completed", t(1, 3, 0));
        x.observe(Path::new(LOG), "started", t(1, 3, 0));
        assert_eq!(x.due(t(1, 4, 31)).len(), 1);
    }

    #[test]
    fn a_late_line_is_reported_once_and_does_not_count_for_the_next_day() {
        let mut x = backup();
        x.due(t(0, 12, 0));
        // The line comes at 05:12 without due() having run since 04:00:
        // the miss is judged first, then the late report.
        x.due(t(1, 4, 0));
        let a = x.observe(Path::new(LOG), "completed", t(1, 5, 12));
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0].kind, AlertKind::Missing);
        assert_eq!(a[1].kind, AlertKind::Late { at: t(1, 5, 12) });
        assert_eq!(
            a[1].text,
            "backup.log: 'completed' line at 05:12, 42 min after the 04:30 deadline"
        );
        // A second matching line is not late again; it counts for tomorrow.
        assert!(
            x.observe(Path::new(LOG), "completed", t(1, 5, 20))
                .is_empty()
        );
        assert!(x.due(t(2, 4, 31)).is_empty());
    }

    #[test]
    fn a_line_long_after_a_miss_counts_for_the_next_deadline() {
        let mut x = backup();
        x.due(t(0, 12, 0));
        assert_eq!(x.due(t(1, 4, 31)).len(), 1);
        // Yesterday's job never came; today's runs at 03:00: on time.
        assert!(
            x.observe(Path::new(LOG), "completed", t(2, 3, 0))
                .is_empty()
        );
        assert!(x.due(t(2, 4, 31)).is_empty());
    }

    #[test]
    fn weekdays_limit_the_deadlines() {
        let mut x = Expectations::new(vec![
            Expectation::new(
                &spec(
                    "backup.log",
                    "completed",
                    "04:30",
                    Some(&["mon", "Thursday"]),
                ),
                1,
                Path::new("/"),
            )
            .unwrap(),
        ]);
        // 2026-11-23 is a Monday.
        x.due(t(-1, 12, 0));
        assert_eq!(x.due(t(0, 5, 0)).len(), 1, "monday");
        assert!(x.due(t(1, 5, 0)).is_empty(), "tuesday");
        assert!(x.due(t(2, 5, 0)).is_empty(), "wednesday");
        assert_eq!(x.due(t(3, 5, 0)).len(), 1, "thursday");
        assert_eq!(
            x.next_deadline(t(3, 5, 0)),
            Some(t(7, 4, 30)),
            "next monday"
        );
    }

    #[test]
    fn clock_jumps_report_each_deadline_at_most_once() {
        let mut x = backup();
        x.due(t(0, 12, 0));
        // Forward by three days (a suspended machine): one alert, for the
        // latest deadline passed.
        let a = x.due(t(3, 9, 0));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].deadline, t(3, 4, 30));
        // Back by a day (a clock corrected), then forward again: the
        // deadlines already judged stay judged.
        assert!(x.due(t(2, 9, 0)).is_empty());
        assert!(x.due(t(3, 9, 0)).is_empty());
        // Daylight saving, fall back: 04:31 → 03:31 → 04:31 again on the
        // same date gives no second alert.
        assert!(x.due(t(4, 3, 31)).is_empty());
        assert_eq!(x.due(t(4, 4, 31)).len(), 1);
        assert!(x.due(t(4, 3, 31)).is_empty());
        assert!(x.due(t(4, 4, 31)).is_empty());
        // Spring forward over the deadline itself (02:00 → 03:00 with a
        // deadline at 02:30, a wall time that never happens): still judged.
        let mut y = Expectations::new(vec![
            Expectation::new(
                &spec("backup.log", "completed", "02:30", None),
                1,
                Path::new("/"),
            )
            .unwrap(),
        ]);
        y.due(t(0, 12, 0));
        assert!(y.due(t(1, 1, 59)).is_empty());
        assert_eq!(y.due(t(1, 3, 0)).len(), 1);
    }

    /// A restart at `at`: the state goes through JSON into a fresh
    /// instance of the same configuration, held for 30 s.
    fn restarted(x: &Expectations, at: Local) -> Expectations {
        let json = serde_json::to_string(&x.saved()).unwrap();
        let mut y = backup();
        let n = y.restore(serde_json::from_str(&json).unwrap(), at, at.plus(30));
        assert_eq!(n, x.saved().len());
        y
    }

    #[test]
    fn across_a_restart_a_line_seen_before_counts_and_an_alert_is_not_repeated() {
        // Down from 04:00 to 05:00 (deadline 04:30), the line seen at 04:10.
        let mut x = backup();
        x.due(t(0, 12, 0));
        assert!(
            x.observe(Path::new(LOG), "completed", t(1, 4, 10))
                .is_empty()
        );
        let mut y = restarted(&x, t(1, 5, 0));
        for m in [0, 1, 2, 30] {
            assert!(y.due(t(1, 5, m)).is_empty(), "met before the crash");
        }
        assert_eq!(y.due(t(2, 4, 31)).len(), 1, "the next day is judged");
        // Reported before the restart: not again, and a late line is late.
        let mut x = backup();
        x.due(t(0, 12, 0));
        assert_eq!(x.due(t(1, 4, 31)).len(), 1);
        let mut y = restarted(&x, t(1, 5, 0));
        assert!(y.due(t(1, 5, 1)).is_empty());
        let late = y.observe(Path::new(LOG), "completed", t(1, 6, 0));
        assert_eq!(late.len(), 1);
        assert!(matches!(late[0].kind, AlertKind::Late { .. }));
    }

    #[test]
    fn a_deadline_passed_while_down_is_judged_once_after_the_grace() {
        // Down from 04:00 to 05:00, no line: one alert after the grace.
        let mut x = backup();
        x.due(t(0, 12, 0));
        x.due(t(1, 4, 0));
        let mut y = restarted(&x, t(1, 5, 0));
        assert!(y.due(t(1, 5, 0)).is_empty(), "lines read back come first");
        assert_eq!(y.next_deadline(t(1, 5, 0)), Some(t(1, 5, 0).plus(30)));
        let a = y.due(t(1, 5, 1));
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].kind.clone(), a[0].deadline),
            (AlertKind::Missing, t(1, 4, 30))
        );
        assert!(y.due(t(1, 5, 2)).is_empty(), "once");
        assert_eq!(y.next_deadline(t(1, 5, 2)), Some(t(2, 4, 30)));
        // A line read back within the grace (written while down, at an
        // unknown time) is given the benefit of the doubt.
        let mut y = restarted(&x, t(1, 5, 0));
        assert!(
            y.observe(Path::new(LOG), "completed", t(1, 5, 0).plus(2))
                .is_empty()
        );
        assert!(y.due(t(1, 5, 1)).is_empty());
        // A fresh start (nothing saved) still judges nothing passed before.
        let mut z = backup();
        assert_eq!(z.restore(Vec::new(), t(1, 5, 0), t(1, 5, 0).plus(30)), 0);
        assert!(z.due(t(1, 5, 0)).is_empty());
        assert!(z.due(t(1, 6, 0)).is_empty());
        // A changed table starts fresh too.
        let mut other = Expectations::new(vec![
            Expectation::new(
                &spec("backup.log", "completed", "04:45", None),
                1,
                Path::new("/etc"),
            )
            .unwrap(),
        ]);
        assert_eq!(other.restore(x.saved(), t(1, 5, 0), t(1, 5, 0).plus(30)), 0);
        assert!(other.due(t(1, 6, 0)).is_empty());
    }

    /// Every state change moves the generation (so it is saved at once).
    #[test]
    fn state_changes_move_the_generation() {
        let mut x = backup();
        let mut g = x.generation();
        let mut moved = |x: &Expectations| {
            let m = x.generation() != g;
            g = x.generation();
            m
        };
        x.due(t(0, 12, 0));
        assert!(moved(&x), "first look");
        x.due(t(0, 13, 0));
        assert!(!moved(&x));
        x.observe(Path::new(LOG), "completed", t(0, 23, 0));
        assert!(moved(&x), "met");
        x.observe(Path::new(LOG), "completed", t(0, 23, 5));
        assert!(!moved(&x), "met again changes nothing");
        x.due(t(1, 4, 31));
        assert!(moved(&x), "judged");
        x.due(t(2, 4, 31));
        assert!(moved(&x), "missed");
        x.observe(Path::new(LOG), "completed", t(2, 5, 0));
        assert!(moved(&x), "late");
    }

    #[test]
    fn files_match_by_name_or_whole_path() {
        let e = |f: &str| {
            Expectation::new(&spec(f, "x", "04:30", None), 1, Path::new("/etc/elm")).unwrap()
        };
        assert!(e("backup.log").watches(Path::new(LOG)));
        assert!(e("*.log").watches(Path::new(LOG)));
        assert!(!e("backup.log").watches(Path::new("/srv/backup.log.1")));
        assert!(e("/srv/service/event/*/backup.log").watches(Path::new(LOG)));
        assert!(!e("/srv/service/*/backup.log").watches(Path::new(LOG)));
        assert!(e("logs/b.log").watches(Path::new("/etc/elm/logs/b.log")));
    }

    #[test]
    fn bad_tables_name_the_key_and_value() {
        let err = |s: Spec| {
            Expectation::new(&s, 2, Path::new("/"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(spec("b.log", "x", "4h30", None)),
            "expect[2].by = \"4h30\": expected a local time of day as \"HH:MM\", e.g. \"04:30\""
        );
        let e = err(spec("b.log", "(unclosed", "04:30", None));
        assert!(
            e.starts_with("expect[2].pattern = \"(unclosed\": expected a regular expression ("),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            err(spec("b.log", "x", "04:30", Some(&["mon", "funday"]))),
            "expect[2].weekdays = \"funday\": expected days of the week: mon, tue, wed, thu, fri, sat, sun"
        );
        assert!(
            err(spec("b.log", "x", "04:30", Some(&[]))).starts_with("expect[2].weekdays = \"[]\"")
        );
        assert!(
            err(spec("[b.log", "x", "04:30", None))
                .starts_with("expect[2].file = \"[b.log\": expected a glob")
        );
        assert!(err(spec(" ", "x", "04:30", None)).starts_with("expect[2].file = \"\""));
    }

    #[test]
    fn alerts_fit_discord_and_describe() {
        let mut x = backup();
        x.due(t(0, 12, 0));
        let a = &x.due(t(1, 5, 0))[0];
        let n = a.notice(1);
        crate::limits::check(&n.body).unwrap();
        assert_eq!((n.route, n.policy), (1, crate::notice::Policy::New));
        assert_eq!(a.key(), "expect:backup.log:2026-11-24 04:30:missing");
        let e = Expectation::new(
            &spec("backup.log", "completed", "04:30", Some(&["sat", "sun"])),
            1,
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            describe(&e),
            "backup.log: 'completed' in backup.log by 04:30 (sat, sun)"
        );
    }
}
