//! The night card: one embed per night, live while the night runs and
//! turned into its summary when it ends. Pure: the caller owns the
//! [`Session`], the clock and the posting.
//!
//! A *night* runs from `night_start` (local wall clock, default 12:00) to
//! the next `night_start`, and is named by the date of its evening
//! ([`night_of`]). Its card starts with the first line that finds work in
//! progress ([`Session::work_in_progress`]). [`NightStats`] keeps what the
//! session model does not: a baseline of its counts (so a daemon that runs
//! for weeks counts each night apart), when frames arrived, the last
//! exposure, events by severity and silences (given by the silence alarm).
//! [`night_over`] says when the night is over: the scheduler's shutdown or
//! `Ekos stopped.` (KStars shutting down), the mount parked with the
//! scheduler idle, the scheduler stopped after it ran with nothing else in
//! progress, `night_end` passed, or the next night begun. A parked mount
//! while the scheduler sleeps until its next job is *not* an end.
//!
//! [`live_card`] renders the running card (target, filter, frames done of
//! planned, last exposure, guiding, events by severity);
//! [`summary_card`] the end-of-night summary (per target and filter frames
//! and exposure, autofocus, plate solves, guiding aborts and star losses,
//! meridian flips, driver crashes, silences, first and last frame). Both
//! stay within Discord's limits ([`crate::limits`]): a night with more
//! targets than fit ends its target list with a "… and N more" field.
//!
//! [`replay`] runs the whole chain over a past log, with each line's own
//! timestamp as its arrival time (silences are then gaps between
//! timestamps longer than the session explains): `--replay FILE
//! --night-card` prints its summaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::ekos::{Rules, Severity};
use crate::limits;
use crate::localtime::{DAY, Local, TimeOfDay};
use crate::session::{
    Counts, FrameTotals, GuideState, MountState, SchedulerState, Session, ShutdownState,
};

/// Colours: running (blue), summary (green), summary of a night with
/// errors (orange).
const LIVE_COLOR: u32 = 0x34_98_DB;
const DONE_COLOR: u32 = 0x2E_CC_71;
const TROUBLED_COLOR: u32 = 0xE6_7E_22;
/// The live card is edited at most this often (the summary at once).
pub const CARD_EDIT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Most silences listed one by one.
const SILENCES_LISTED: usize = 8;

/// `night_start` and `night_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightSettings {
    /// When a new night begins (default noon).
    pub start: TimeOfDay,
    /// When a night is over whatever the log says (`None`: only the log
    /// and the next `start` end it).
    pub end: Option<TimeOfDay>,
}

impl Default for NightSettings {
    fn default() -> Self {
        NightSettings {
            start: TimeOfDay(12 * 3600),
            end: None,
        }
    }
}

impl NightSettings {
    /// When night `night` (its evening's day number) is over by the clock:
    /// `night_end` after its start, else the next night's start.
    pub fn end_of(&self, night: i64) -> Local {
        let start = Local {
            day: night,
            secs: 0,
        }
        .at(self.start);
        match self.end {
            Some(e) if e > self.start => Local {
                day: night,
                secs: 0,
            }
            .at(e),
            Some(e) => Local {
                day: night + 1,
                secs: 0,
            }
            .at(e),
            None => start.plus(DAY as i64),
        }
    }
}

/// The night `now` belongs to: the day number of its evening.
pub fn night_of(now: Local, start: TimeOfDay) -> i64 {
    if now.secs >= start.0 {
        now.day
    } else {
        now.day - 1
    }
}

/// Why a night is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The scheduler's shutdown completed, or `Ekos stopped.`.
    Shutdown,
    /// Mount parked, scheduler idle.
    Parked,
    /// The scheduler stopped after running, nothing else in progress.
    SchedulerDone,
    /// `night_end` passed.
    NightEnd,
    /// The next night began (`night_start` passed).
    NextNight,
    /// A replayed log ends with the night still running.
    EndOfLog,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Shutdown => "Ekos shut down",
            EndReason::Parked => "mount parked",
            EndReason::SchedulerDone => "scheduler done",
            EndReason::NightEnd => "night_end reached",
            EndReason::NextNight => "night_start reached",
            EndReason::EndOfLog => "end of log (still running)",
        }
    }
}

/// One silence of the followed Ekos log, from the silence alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Silence {
    /// When it began (the last line before it).
    pub at: Local,
    pub duration: Duration,
}

/// What the night card needs beyond the session model. Saved across
/// restarts with the night watch's state, so a restart in mid-night goes on
/// counting (its `last_exposure_ms` is on the night watch's monotonic
/// clock, continued across a restart like the session's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NightStats {
    /// The night: day number of its evening.
    pub night: i64,
    /// When its card started.
    pub started: Local,
    pub first_frame: Option<Local>,
    pub last_frame: Option<Local>,
    /// `(seconds, filter, when it started)` of the last exposure begun.
    pub last_exposure: Option<(f64, String, Local)>,
    /// Events by severity ([`Severity::ALL`] order).
    pub events: [u32; 5],
    pub silences: Vec<Silence>,
    /// The scheduler ran during this night.
    pub scheduler_ran: bool,
    baseline: Counts,
    frames_seen: u32,
    last_exposure_ms: Option<u64>,
}

impl NightStats {
    /// A night whose card starts at `now`; what `session` counted before
    /// belongs to earlier nights.
    pub fn new(night: i64, now: Local, session: &Session) -> NightStats {
        NightStats {
            night,
            started: now,
            first_frame: None,
            last_frame: None,
            last_exposure: None,
            events: [0; 5],
            silences: Vec::new(),
            scheduler_ran: false,
            baseline: session.counts().clone(),
            frames_seen: session.counts().total_frames(),
            last_exposure_ms: None,
        }
    }

    /// Call after each line the session observed, with the wall clock.
    pub fn after_line(&mut self, session: &Session, now: Local) {
        let total = session.counts().total_frames();
        if total > self.frames_seen {
            self.first_frame.get_or_insert(now);
            self.last_frame = Some(now);
        }
        self.frames_seen = total;
        if session.scheduler() == SchedulerState::Running {
            self.scheduler_ran = true;
        }
        if let Some(e) = session.exposure() {
            if self.last_exposure_ms != Some(e.started_ms) {
                self.last_exposure_ms = Some(e.started_ms);
                self.last_exposure = Some((e.seconds, e.filter.clone(), now));
            }
        }
    }

    /// An event (a rule matched) of this severity.
    pub fn event(&mut self, severity: Severity) {
        self.events[severity as usize] += 1;
    }

    /// A silence of the Ekos log that has ended (or the longest so far of
    /// one that has not).
    pub fn silence(&mut self, s: Silence) {
        match self.silences.iter_mut().find(|x| x.at == s.at) {
            Some(x) => x.duration = x.duration.max(s.duration),
            None => self.silences.push(s),
        }
    }

    /// This night's counts: the session's, less what came before.
    pub fn counts(&self, session: &Session) -> Counts {
        diff(session.counts(), &self.baseline)
    }
}

/// `now - base`, field by field (a count that went down, after a reset of
/// the session, counts from zero).
pub fn diff(now: &Counts, base: &Counts) -> Counts {
    let d = |a: u32, b: u32| if a >= b { a - b } else { a };
    let mut frames = BTreeMap::new();
    for (k, t) in &now.frames {
        let b = base.frames.get(k).copied().unwrap_or_default();
        let (f, e) = if t.frames >= b.frames {
            (t.frames - b.frames, (t.exposure_s - b.exposure_s).max(0.0))
        } else {
            (t.frames, t.exposure_s)
        };
        if f > 0 {
            frames.insert(
                k.clone(),
                FrameTotals {
                    frames: f,
                    exposure_s: e,
                },
            );
        }
    }
    Counts {
        frames,
        autofocus_ok: d(now.autofocus_ok, base.autofocus_ok),
        autofocus_failed: d(now.autofocus_failed, base.autofocus_failed),
        plate_solves: d(now.plate_solves, base.plate_solves),
        plate_solves_failed: d(now.plate_solves_failed, base.plate_solves_failed),
        guide_aborts: d(now.guide_aborts, base.guide_aborts),
        star_losses: d(now.star_losses, base.star_losses),
        meridian_flips: d(now.meridian_flips, base.meridian_flips),
        meridian_flips_failed: d(now.meridian_flips_failed, base.meridian_flips_failed),
        driver_crashes: d(now.driver_crashes, base.driver_crashes),
        capture_failures: d(now.capture_failures, base.capture_failures),
        jobs_completed: d(now.jobs_completed, base.jobs_completed),
        jobs_aborted: d(now.jobs_aborted, base.jobs_aborted),
    }
}

/// Whether night `stats` is over at `now`, and why.
pub fn night_over(
    session: &Session,
    stats: &NightStats,
    now: Local,
    settings: &NightSettings,
) -> Option<EndReason> {
    if session.shutdown() == ShutdownState::Complete {
        return Some(EndReason::Shutdown);
    }
    let idle = !session.work_in_progress();
    if idle && session.scheduler() == SchedulerState::Idle {
        if session.mount() == MountState::Parked {
            return Some(EndReason::Parked);
        }
        if stats.scheduler_ran {
            return Some(EndReason::SchedulerDone);
        }
    }
    if night_of(now, settings.start) > stats.night {
        return Some(EndReason::NextNight);
    }
    if now >= settings.end_of(stats.night) {
        return Some(EndReason::NightEnd);
    }
    None
}

/// `1 h 40 min`, `12 min`, `1 min 50 s`, `45 s`. Under an hour the
/// seconds are kept, so that a total can be checked against the frames
/// (3 × 50 s is `2 min 30 s`, not `2 min`); from an hour on, to the
/// nearest minute.
pub fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        }
    } else {
        let m = (s + 30) / 60;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// `300 s`, `0.5 s`, `1 200 s` is written `1200 s`.
fn exposure_text(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        let t = format!("{s:.3}");
        format!("{} s", t.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn guide_text(g: GuideState) -> &'static str {
    match g {
        GuideState::Off => "off",
        GuideState::Calibrating => "calibrating",
        GuideState::Guiding => "guiding",
        GuideState::Suspended => "suspended",
        GuideState::Dithering => "dithering",
        GuideState::Lost => "guide star lost",
    }
}

fn events_text(events: &[u32; 5]) -> String {
    let parts: Vec<String> = Severity::ALL
        .iter()
        .rev()
        .filter(|s| events[**s as usize] > 0)
        .map(|s| format!("{} {}", events[*s as usize], s.as_str()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

/// A field, capped to Discord's sizes.
fn field(name: &str, value: &str, inline: bool) -> Value {
    let value = if value.trim().is_empty() {
        "—"
    } else {
        value
    };
    json!({
        "name": limits::cap(name, limits::FIELD_NAME),
        "value": limits::cap(value, limits::FIELD_VALUE),
        "inline": inline,
    })
}

/// Characters of an embed as Discord counts them towards [`limits::EMBED_TOTAL`].
fn embed_chars(e: &Value) -> usize {
    let t = |v: &Value| v.as_str().map_or(0, limits::chars);
    t(&e["title"])
        + t(&e["description"])
        + t(&e["footer"]["text"])
        + e["fields"].as_array().map_or(0, |fs| {
            fs.iter().map(|f| t(&f["name"]) + t(&f["value"])).sum()
        })
}

fn night_date(night: i64) -> String {
    Local {
        day: night,
        secs: 0,
    }
    .date_string()
}

/// The running card: a message body with one embed.
pub fn live_card(session: &Session, stats: &NightStats, now: Local) -> Value {
    let counts = stats.counts(session);
    let target = session.job().unwrap_or("—");
    let filter = session
        .exposure()
        .map(|e| e.filter.as_str())
        .or(session.filter())
        .filter(|f| !f.is_empty())
        .unwrap_or("—");
    let frames = match session.frames() {
        Some((done, planned)) => format!("{done} of {planned}"),
        None => "—".into(),
    };
    let last = match &stats.last_exposure {
        Some((s, f, at)) if f.is_empty() => {
            format!("{} at {}", exposure_text(*s), at.time_of_day())
        }
        Some((s, f, at)) => format!("{} {f} at {}", exposure_text(*s), at.time_of_day()),
        None => "—".into(),
    };
    let total_s: f64 = counts.frames.values().map(|t| t.exposure_s).sum();
    let fields = vec![
        field("Target", target, true),
        field("Filter", filter, true),
        field("Frames", &frames, true),
        field("Last exposure", &last, true),
        field("Guiding", guide_text(session.guide()), true),
        field(
            "Tonight",
            &format!(
                "{} frames, {}",
                counts.total_frames(),
                duration_text(total_s)
            ),
            true,
        ),
        field("Events", &events_text(&stats.events), false),
    ];
    let embed = json!({
        "title": format!("Night of {} — in progress", night_date(stats.night)),
        "description": limits::cap(&session.summary(), limits::DESCRIPTION),
        "color": LIVE_COLOR,
        "fields": fields,
        "footer": {"text": format!("started {} · updated {}", stats.started.time_of_day(), now.time_of_day())},
    });
    json!({"embeds": [embed], "allowed_mentions": {"parse": []}})
}

/// The key of night `night`'s card: `night:2024-03-09`.
pub fn card_key(night: i64) -> String {
    format!("night:{}", night_date(night))
}

/// The live card as a notice: edits the night's message in place, at most
/// every [`CARD_EDIT_INTERVAL`].
pub fn live_notice(
    route: usize,
    session: &Session,
    stats: &NightStats,
    now: Local,
) -> crate::notice::Notice {
    crate::notice::Notice {
        route,
        key: card_key(stats.night),
        body: live_card(session, stats, now),
        files: Vec::new(),
        policy: crate::notice::Policy::Upsert {
            min_interval: CARD_EDIT_INTERVAL,
        },
    }
}

/// The summary as a notice: replaces the live card at once and closes it.
pub fn summary_notice(
    route: usize,
    session: &Session,
    stats: &NightStats,
    end: Local,
    reason: EndReason,
) -> crate::notice::Notice {
    crate::notice::Notice {
        route,
        key: card_key(stats.night),
        body: summary_card(session, stats, end, reason),
        files: Vec::new(),
        policy: crate::notice::Policy::Final,
    }
}

/// One target's field value: a line per filter, capped with a marker.
fn target_value(filters: &[(&str, FrameTotals)]) -> String {
    let mut v = String::new();
    for (i, (f, t)) in filters.iter().enumerate() {
        let line = format!(
            "{}: {} × {} = {}\n",
            if f.is_empty() { "no filter" } else { f },
            t.frames,
            if t.frames > 0 {
                exposure_text(t.exposure_s / t.frames as f64)
            } else {
                "0 s".into()
            },
            duration_text(t.exposure_s)
        );
        let more = format!("… and {} more filters", filters.len() - i);
        if limits::chars(&v) + limits::chars(&line) + limits::chars(&more) > limits::FIELD_VALUE {
            v.push_str(&more);
            return v;
        }
        v.push_str(&line);
    }
    v.trim_end().to_string()
}

/// The end-of-night summary: a message body with one embed.
pub fn summary_card(session: &Session, stats: &NightStats, end: Local, reason: EndReason) -> Value {
    let c = stats.counts(session);
    // Targets in name order, each with its filters.
    let mut targets: BTreeMap<&str, Vec<(&str, FrameTotals)>> = BTreeMap::new();
    for ((t, f), tot) in &c.frames {
        targets
            .entry(t.as_str())
            .or_default()
            .push((f.as_str(), *tot));
    }
    let total_s: f64 = c.frames.values().map(|t| t.exposure_s).sum();
    let mut description = format!(
        "{} → {} · {} target{} · {} frames · {} of exposure · ended: {}",
        stats.started.time_of_day(),
        end.time_of_day(),
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        c.total_frames(),
        duration_text(total_s),
        reason.as_str()
    );
    if let (Some(a), Some(b)) = (stats.first_frame, stats.last_frame) {
        let _ = write!(
            description,
            "\nFirst frame {}, last frame {}",
            a.time_of_day(),
            b.time_of_day()
        );
    }
    let silences = if stats.silences.is_empty() {
        "none".to_string()
    } else {
        let total: Duration = stats.silences.iter().map(|s| s.duration).sum();
        let mut s = format!(
            "{}, {} in all: ",
            stats.silences.len(),
            duration_text(total.as_secs_f64())
        );
        let listed: Vec<String> = stats
            .silences
            .iter()
            .take(SILENCES_LISTED)
            .map(|x| {
                format!(
                    "{} at {}",
                    duration_text(x.duration.as_secs_f64()),
                    x.at.time_of_day()
                )
            })
            .collect();
        s.push_str(&listed.join(", "));
        if stats.silences.len() > SILENCES_LISTED {
            let _ = write!(s, ", … and {} more", stats.silences.len() - SILENCES_LISTED);
        }
        s
    };
    let fixed = vec![
        field(
            "Autofocus",
            &format!("{} ok, {} failed", c.autofocus_ok, c.autofocus_failed),
            true,
        ),
        field(
            "Plate solves",
            &format!("{} ok, {} failed", c.plate_solves, c.plate_solves_failed),
            true,
        ),
        field(
            "Guiding",
            &format!("{} aborts, {} star losses", c.guide_aborts, c.star_losses),
            true,
        ),
        field(
            "Meridian flips",
            &format!("{} ({} failed)", c.meridian_flips, c.meridian_flips_failed),
            true,
        ),
        field("Driver crashes", &c.driver_crashes.to_string(), true),
        field(
            "Jobs",
            &format!(
                "{} completed, {} aborted; {} capture failures",
                c.jobs_completed, c.jobs_aborted, c.capture_failures
            ),
            true,
        ),
        field("Silences", &silences, false),
        field("Events", &events_text(&stats.events), false),
    ];
    let troubled =
        stats.events[Severity::Error as usize] + stats.events[Severity::Critical as usize] > 0
            || c.driver_crashes > 0
            || !stats.silences.is_empty();
    let mut embed = json!({
        "title": format!("Night of {} — summary", night_date(stats.night)),
        "description": limits::cap(&description, limits::DESCRIPTION),
        "color": if troubled { TROUBLED_COLOR } else { DONE_COLOR },
        "fields": [],
        "footer": {"text": "ekos-log-monitor night card"},
    });
    // Target fields first, as many as fit with the fixed ones and a marker.
    let mut fields: Vec<Value> = Vec::new();
    let reserve_fields = fixed.len() + 1;
    let marker_room = 80;
    let mut used = embed_chars(&embed)
        + fixed
            .iter()
            .map(|f| {
                limits::chars(f["name"].as_str().unwrap_or(""))
                    + limits::chars(f["value"].as_str().unwrap_or(""))
            })
            .sum::<usize>();
    let target_list: Vec<(&str, Vec<(&str, FrameTotals)>)> = targets.into_iter().collect();
    let mut shown = 0;
    for (t, filters) in &target_list {
        let name = if t.is_empty() { "(no target)" } else { t };
        let f = field(name, &target_value(filters), false);
        let size = limits::chars(f["name"].as_str().unwrap_or(""))
            + limits::chars(f["value"].as_str().unwrap_or(""));
        let last = shown + 1 == target_list.len();
        let room = if last { 0 } else { marker_room };
        if fields.len() + reserve_fields >= limits::FIELDS
            || used + size + room > limits::EMBED_TOTAL
        {
            break;
        }
        used += size;
        fields.push(f);
        shown += 1;
    }
    if shown < target_list.len() {
        let rest = &target_list[shown..];
        let frames: u32 = rest
            .iter()
            .flat_map(|(_, f)| f.iter().map(|x| x.1.frames))
            .sum();
        let secs: f64 = rest
            .iter()
            .flat_map(|(_, f)| f.iter().map(|x| x.1.exposure_s))
            .sum();
        fields.push(field(
            &format!("… and {} more targets", rest.len()),
            &format!("{frames} frames, {}", duration_text(secs)),
            false,
        ));
    }
    fields.extend(fixed);
    embed["fields"] = Value::Array(fields);
    json!({"embeds": [embed], "allowed_mentions": {"parse": []}})
}

/// What [`replay`] found: one summary per night, in order.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub night: i64,
    pub card: Value,
}

/// Runs a whole log through the session model and the night card, with
/// each line's timestamp as its arrival time, and returns each night's
/// summary. Lines without a timestamp (continuations, INDI driver logs)
/// count at the last timestamp seen. Work that starts again in a night
/// already over (the scheduler restarted) resumes that night: one card per
/// night. A night still running at the end of the file is summarised as
/// it stands ([`EndReason::EndOfLog`]). Silences are gaps longer than
/// `silence` allows, as the live night watch judges them (`silence_after`).
pub fn replay<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    rules: &Rules,
    settings: &NightSettings,
    silence: crate::nightwatch::silence::Threshold,
) -> Vec<Replayed> {
    let mut session = Session::new();
    let mut night: Option<NightStats> = None;
    let mut done: Vec<(NightStats, Value)> = Vec::new();
    let mut now: Option<Local> = None;
    // The last line and how long the session said it may be quiet after it.
    let mut quiet: Option<(Local, Duration)> = None;
    for line in lines {
        let rec = crate::ekos::parse(line);
        if let Some(t) = rec.time.and_then(Local::parse_timestamp) {
            now = Some(t);
        }
        let Some(t) = now else { continue };
        if let (Some(n), Some((last, allowed))) = (night.as_mut(), quiet) {
            let gap = t.since(last).max(0) as u64;
            if gap > allowed.as_secs() {
                n.silence(Silence {
                    at: last,
                    duration: Duration::from_secs(gap),
                });
            }
        }
        // Arrival in ms on the replay's clock (wall-clock seconds).
        let ms = ((t.day * DAY as i64 + t.secs as i64).max(0) as u64) * 1000;
        session.observe(&rec, ms);
        quiet = crate::nightwatch::silence::Silence::allowed(silence, &session).map(|q| (t, q));
        if let Some(n) = night.as_mut() {
            n.after_line(&session, t);
            if let Some(ev) = rules.classify(&rec) {
                n.event(ev.severity);
            }
            if let Some(reason) = night_over(&session, n, t, settings) {
                let end = match reason {
                    EndReason::NextNight | EndReason::NightEnd => t.min(settings.end_of(n.night)),
                    _ => t,
                };
                let card = summary_card(&session, n, end, reason);
                done.push((night.take().expect("checked"), card));
            }
        } else if session.work_in_progress() {
            let day = night_of(t, settings.start);
            let mut n = match done.last() {
                Some((prev, _)) if prev.night == day => done.pop().expect("checked").0,
                _ => NightStats::new(day, t, &session),
            };
            n.after_line(&session, t);
            if let Some(ev) = rules.classify(&rec) {
                n.event(ev.severity);
            }
            night = Some(n);
        }
    }
    if let (Some(n), Some(t)) = (night, now) {
        let card = summary_card(&session, &n, t, EndReason::EndOfLog);
        done.push((n, card));
    }
    done.into_iter()
        .map(|(n, card)| Replayed {
            night: n.night,
            card,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ekos::parse;
    use crate::nightwatch::silence::Threshold;

    const NIGHT: &str = include_str!("../../tests/data/night-2024-03-09.txt");

    fn rules() -> Rules {
        Rules::with_user(&[]).unwrap()
    }

    fn fields(card: &Value) -> Vec<(String, String)> {
        card["embeds"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn value<'a>(fs: &'a [(String, String)], name: &str) -> &'a str {
        &fs.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no field {name}: {fs:?}"))
            .1
    }

    fn at(h: u32, m: u32, s: u32) -> Local {
        Local::ymd_hms(2024, 3, 9, h, m, s).unwrap()
    }

    /// The same night guided by PHD2: its client's texts (kstars
    /// ekos/guide/externalguide/phd2.cpp) count as star losses, a loss
    /// logged twice once, and the abort once (PHD2's `Guiding Stopped.` and
    /// Ekos' `Autoguiding aborted.` are one abort).
    #[test]
    fn a_phd2_night_counts_its_star_losses_and_aborts() {
        let guide = |t: &str, m: &str| {
            format!("[2024-03-09T{t} CET INFO ][      org.kde.kstars.ekos.guide] - \"{m}\"")
        };
        let mut lines = Vec::new();
        for l in NIGHT.lines() {
            if l.contains("Lost track of the guide star") {
                lines.push(guide(
                    "22:01:44.110",
                    "PHD2: Star Lost. Trying to reacquire for 15s.",
                ));
                lines.push(guide(
                    "22:01:46.000",
                    "PHD2: Star found, guiding is resuming...",
                ));
                lines.push(guide(
                    "22:01:48.000",
                    "PHD2: Star Lost. Trying to reacquire for 15s.",
                ));
                lines.push(guide(
                    "22:01:49.000",
                    "PHD2: Star Lost. Trying to reacquire for 15s.",
                ));
                lines.push(guide("22:01:58.000", "PHD2: Guiding started."));
            } else {
                if l.contains("Autoguiding aborted") {
                    lines.push(guide("22:37:11.290", "PHD2: Guiding Stopped."));
                }
                lines.push(l.to_string());
            }
        }
        let r = replay(
            lines.iter().map(String::as_str),
            &rules(),
            &NightSettings::default(),
            Threshold::Auto,
        );
        assert_eq!(r.len(), 1, "{r:?}");
        let fs = fields(&r[0].card);
        assert_eq!(value(&fs, "Guiding"), "1 aborts, 2 star losses");
    }

    #[test]
    fn the_numbers_of_a_real_night() {
        let r = replay(
            NIGHT.lines(),
            &rules(),
            &NightSettings::default(),
            Threshold::Auto,
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].night, at(0, 0, 0).day);
        let card = &r[0].card;
        limits::check(card).unwrap();
        let e = &card["embeds"][0];
        assert_eq!(e["title"], "Night of 2024-03-09 — summary");
        assert_eq!(
            e["description"],
            "21:00:05 → 22:39:07 · 2 targets · 9 frames · 46 min of exposure · ended: Ekos shut down\nFirst frame 21:09:29, last frame 22:37:09"
        );
        let fs = fields(card);
        assert_eq!(
            value(&fs, "M31"),
            "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
        );
        assert_eq!(value(&fs, "NGC 7000"), "R: 3 × 120 s = 6 min");
        assert_eq!(value(&fs, "Autofocus"), "1 ok, 1 failed");
        assert_eq!(value(&fs, "Plate solves"), "2 ok, 1 failed");
        assert_eq!(value(&fs, "Guiding"), "1 aborts, 1 star losses");
        assert_eq!(value(&fs, "Meridian flips"), "1 (0 failed)");
        assert_eq!(value(&fs, "Driver crashes"), "1");
        assert_eq!(
            value(&fs, "Jobs"),
            "2 completed, 0 aborted; 0 capture failures"
        );
        // The log stopped for 40 min in the middle of a 300 s exposure.
        assert_eq!(
            value(&fs, "Silences"),
            "1, 40 min in all: 40 min at 21:16:36"
        );
        assert!(value(&fs, "Events").contains("error"), "{fs:?}");
        assert_eq!(e["color"], TROUBLED_COLOR);
    }

    /// `--replay --night-card` judges silences as the live night watch
    /// does with the same `silence_after`: fixed, off, or what the work
    /// explains (the outside probe of issue 11 saw none in a replay where
    /// the live card, with `silence_after = 8`, said 2).
    #[test]
    fn a_replay_judges_silences_by_silence_after() {
        let silences = |t: Threshold| {
            let r = replay(NIGHT.lines(), &rules(), &NightSettings::default(), t);
            value(&fields(&r[0].card), "Silences").to_string()
        };
        assert_eq!(
            silences(Threshold::Auto),
            "1, 40 min in all: 40 min at 21:16:36"
        );
        assert_eq!(silences(Threshold::Off), "none");
        let tight = silences(Threshold::After(Duration::from_secs(60)));
        assert!(
            tight.starts_with(|c: char| c.is_ascii_digit()) && !tight.starts_with("1,"),
            "{tight}"
        );
    }

    /// Feeds lines with their timestamps into a session and night stats
    /// started at the first line.
    fn feed(lines: &[&str]) -> (Session, NightStats, Local) {
        let mut s = Session::new();
        let mut n: Option<NightStats> = None;
        let mut t = at(12, 0, 0);
        for l in lines {
            let rec = parse(l);
            t = rec.time.and_then(Local::parse_timestamp).unwrap_or(t);
            s.observe(&rec, (t.secs as u64) * 1000);
            let n =
                n.get_or_insert_with(|| NightStats::new(night_of(t, TimeOfDay(12 * 3600)), t, &s));
            n.after_line(&s, t);
        }
        (s, n.unwrap(), t)
    }

    #[test]
    fn the_live_card_shows_the_current_work() {
        let lines: Vec<&str> = NIGHT.lines().take(22).collect();
        let (s, mut n, t) = feed(&lines);
        n.event(Severity::Warning);
        n.event(Severity::Warning);
        n.event(Severity::Critical);
        let card = live_card(&s, &n, t);
        limits::check(&card).unwrap();
        let fs = fields(&card);
        assert_eq!(value(&fs, "Target"), "M31");
        assert_eq!(value(&fs, "Filter"), "L");
        assert_eq!(value(&fs, "Frames"), "1 of 4");
        assert_eq!(value(&fs, "Last exposure"), "300 s L at 21:09:30");
        assert_eq!(value(&fs, "Guiding"), "guiding");
        assert_eq!(value(&fs, "Tonight"), "1 frames, 5 min");
        assert_eq!(value(&fs, "Events"), "1 critical · 2 warning");
        assert_eq!(
            card["embeds"][0]["title"],
            "Night of 2024-03-09 — in progress"
        );
    }

    #[test]
    fn a_night_counts_only_its_own_frames() {
        // Two nights through one session: the second card starts from a
        // baseline.
        let two = format!("{NIGHT}\n{}", NIGHT.replace("2024-03-09T", "2024-03-10T"));
        let r = replay(
            two.lines(),
            &rules(),
            &NightSettings::default(),
            Threshold::Auto,
        );
        assert_eq!(r.len(), 2);
        for x in &r {
            // Each night starts with its scheduler, not with the unpark
            // after it (the first night's park is not the second's).
            let desc = x.card["embeds"][0]["description"].as_str().unwrap();
            assert!(desc.starts_with("21:00:05 → 22:39:07 ·"), "{desc}");
            let fs = fields(&x.card);
            assert_eq!(value(&fs, "NGC 7000"), "R: 3 × 120 s = 6 min");
            assert_eq!(value(&fs, "Driver crashes"), "1");
        }
        assert_eq!(r[1].night, r[0].night + 1);
    }

    #[test]
    fn end_of_night_detection() {
        let settings = NightSettings {
            start: TimeOfDay(12 * 3600),
            end: Some(TimeOfDay(6 * 3600)),
        };
        let line = |m: &str, msg: &str| {
            format!("[2024-03-09T21:00:00.000 CET INFO ][{m:>31}] - \"{msg}\"")
        };
        let sched = "org.kde.kstars.ekos.scheduler";
        let mut s = Session::new();
        let n = |s: &Session| NightStats::new(at(0, 0, 0).day, at(21, 0, 0), s);
        s.observe(&parse(&line(sched, "Scheduler started.")), 0);
        let mut stats = n(&s);
        stats.after_line(&s, at(21, 0, 0));
        assert_eq!(night_over(&s, &stats, at(23, 0, 0), &settings), None);
        // Sleeping parked until the next job is not the end.
        s.observe(&parse(&line(sched, "Mount parked.")), 1);
        s.observe(
            &parse(&line(
                sched,
                "Sleeping until observation job M42 is ready at 03:00",
            )),
            2,
        );
        assert_eq!(night_over(&s, &stats, at(23, 0, 0), &settings), None);
        // night_end: 06:00 the next morning.
        let morning = at(6, 0, 0).plus(DAY as i64);
        assert_eq!(night_over(&s, &stats, morning.plus(-1), &settings), None);
        assert_eq!(
            night_over(&s, &stats, morning, &settings),
            Some(EndReason::NightEnd)
        );
        // Without night_end, the next noon.
        let d = NightSettings::default();
        assert_eq!(night_over(&s, &stats, morning, &d), None);
        assert_eq!(
            night_over(&s, &stats, at(12, 0, 0).plus(DAY as i64), &d),
            Some(EndReason::NextNight)
        );
        // Scheduler stopped after running, mount parked: over.
        s.observe(&parse(&line(sched, "Scheduler is stopping...")), 3);
        assert_eq!(
            night_over(&s, &stats, at(23, 0, 0), &d),
            Some(EndReason::Parked)
        );
        // Stopped without parking: scheduler done.
        let mut s2 = Session::new();
        s2.observe(&parse(&line(sched, "Scheduler started.")), 0);
        let mut st2 = n(&s2);
        st2.after_line(&s2, at(21, 0, 0));
        s2.observe(&parse(&line(sched, "Scheduler is stopping...")), 1);
        assert_eq!(
            night_over(&s2, &st2, at(23, 0, 0), &d),
            Some(EndReason::SchedulerDone)
        );
        s2.observe(&parse(&line(sched, "Ekos stopped.")), 2);
        assert_eq!(
            night_over(&s2, &st2, at(23, 0, 0), &d),
            Some(EndReason::Shutdown)
        );
        // Night boundaries at noon.
        assert_eq!(
            night_of(at(11, 59, 59), TimeOfDay(12 * 3600)),
            at(0, 0, 0).day - 1
        );
        assert_eq!(
            night_of(at(12, 0, 0), TimeOfDay(12 * 3600)),
            at(0, 0, 0).day
        );
        // A night_end after night_start ends the same evening.
        let late = NightSettings {
            start: TimeOfDay(12 * 3600),
            end: Some(TimeOfDay(23 * 3600)),
        };
        assert_eq!(late.end_of(at(0, 0, 0).day), at(23, 0, 0));
    }

    #[test]
    fn many_targets_fit_with_a_marker() {
        let mut s = Session::new();
        let base = NightStats::new(at(0, 0, 0).day, at(21, 0, 0), &s);
        let mut lines = Vec::new();
        for i in 0..200 {
            let name = format!("Target number {i} with a long name to fill the embed quickly");
            lines.push(format!(
                "[2024-03-09T21:00:00.000 CET INFO ][  org.kde.kstars.ekos.scheduler] - Executing Job  \"{name}\""
            ));
            for f in ["L", "R", "G", "B", "Ha", "OIII", "SII"] {
                lines.push(format!(
                    "[2024-03-09T21:00:00.000 CET INFO ][    org.kde.kstars.ekos.capture] - \"Capturing 60.000-second {f} image...\""
                ));
                lines.push(
                    "[2024-03-09T21:00:00.000 CET INFO ][    org.kde.kstars.ekos.capture] - \"Received image 1 out of 1.\"".to_string(),
                );
            }
        }
        for (i, l) in lines.iter().enumerate() {
            s.observe(&parse(l), i as u64);
        }
        let mut stats = base;
        for i in 0..30 {
            stats.silence(Silence {
                at: at(22, i, 0),
                duration: Duration::from_secs(600),
            });
        }
        let card = summary_card(&s, &stats, at(23, 0, 0), EndReason::Parked);
        limits::check(&card).unwrap();
        let fs = fields(&card);
        let marker = fs
            .iter()
            .find(|(n, _)| n.starts_with("… and "))
            .expect("a marker");
        let shown = fs
            .iter()
            .filter(|(n, _)| n.starts_with("Target number"))
            .count();
        let total_targets = s
            .counts()
            .frames
            .keys()
            .map(|(t, _)| t)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(
            marker.0,
            format!("… and {} more targets", total_targets - shown)
        );
        assert!(shown > 0);
        // Every fixed field is still there.
        for name in ["Autofocus", "Driver crashes", "Silences", "Events"] {
            value(&fs, name);
        }
        assert!(value(&fs, "Silences").ends_with("… and 22 more"), "{fs:?}");
        // A target with more filters than a field holds.
        let many: Vec<(String, FrameTotals)> = (0..200)
            .map(|i| {
                (
                    format!("filter-{i:03}"),
                    FrameTotals {
                        frames: 1,
                        exposure_s: 60.0,
                    },
                )
            })
            .collect();
        let refs: Vec<(&str, FrameTotals)> = many.iter().map(|(f, t)| (f.as_str(), *t)).collect();
        let v = target_value(&refs);
        assert!(limits::chars(&v) <= limits::FIELD_VALUE);
        assert!(v.ends_with("more filters"), "{v}");
    }

    #[test]
    fn counts_differ_from_a_baseline() {
        let mut now = Counts::default();
        now.frames.insert(
            ("M31".into(), "L".into()),
            FrameTotals {
                frames: 5,
                exposure_s: 1500.0,
            },
        );
        now.frames.insert(
            ("M42".into(), "L".into()),
            FrameTotals {
                frames: 2,
                exposure_s: 60.0,
            },
        );
        now.autofocus_ok = 3;
        let mut base = Counts::default();
        base.frames.insert(
            ("M31".into(), "L".into()),
            FrameTotals {
                frames: 5,
                exposure_s: 1500.0,
            },
        );
        base.autofocus_ok = 1;
        let d = diff(&now, &base);
        assert_eq!(d.frames.len(), 1);
        assert_eq!(d.total_frames(), 2);
        assert_eq!(d.autofocus_ok, 2);
        assert_eq!(duration_text(59.0), "59 s");
        assert_eq!(duration_text(3600.0 + 5.0 * 60.0), "1 h 05 min");
        assert_eq!(duration_text(110.0), "1 min 50 s");
        assert_eq!(duration_text(360.0), "6 min");
        assert_eq!(duration_text(3599.6), "1 h 00 min");
        assert_eq!(duration_text(3600.0 + 5.0 * 60.0 + 29.0), "1 h 05 min");
        assert_eq!(duration_text(3600.0 + 5.0 * 60.0 + 30.0), "1 h 06 min");
        assert_eq!(duration_text(2.0 * 3600.0 - 20.0), "2 h 00 min");
        assert_eq!(exposure_text(0.5), "0.5 s");
    }
}
