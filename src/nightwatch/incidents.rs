//! Incidents: repeats of one rule folded into one message, as a pure state
//! machine over wall-clock milliseconds.
//!
//! The first event of a rule (severity warning and above) on a route opens
//! an incident: one message with the embed and the rule's ping (and, from
//! severity error, the context lines as a `.log` attachment). Repeats
//! within `incident_window` of the previous one edit that message in place
//! with the count and the time span (`Policy::Upsert`, at most one edit per
//! [`EDIT_INTERVAL`]; the newest count wins). A resolving event (see
//! [`resolves`]: guiding resumed after a star loss, a driver restarted
//! after it ended) turns it green, "resolved after 6 min"; a window without
//! repeats ends it. Both are `Policy::Final`, which closes the message's
//! key. Keys are `incident/<rule>/<opened ms>`, unique per incident, and
//! the open incidents are saved ([`Incidents::saved`]) so a restart goes
//! on editing the same message.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::discord::NewFile;
use crate::ekos::{Mention, Severity};
use crate::format::EventPart;
use crate::notice::{Alert, Notice, Policy, RESOLVED_COLOR, human, quoted_line};

/// Least time between two edits of one incident (Discord's edits share the
/// webhook's bucket with the log lines).
pub const EDIT_INTERVAL: Duration = Duration::from_secs(30);
/// Incidents open at once beyond which the oldest is ended (a log that
/// invents rule names through user rules must not grow memory).
const MAX_OPEN: usize = 256;

/// Which open incidents (by rule name) an event of rule `rule` resolves.
pub fn resolves(rule: &str) -> &'static [&'static str] {
    match rule {
        "guide-started" => &[
            "guide-star-lost",
            "guide-aborted",
            "guide-suspended",
            "dither-failed",
            "guide-settle-failed",
            "guide-connection-lost",
        ],
        "guide-calibration-complete" => &["guide-calibration-failed"],
        "indi-driver-restart" => &[
            "indi-driver-crashed",
            "indi-driver-exited",
            "indi-driver-killed",
            "indi-driver-eof",
            "indi-driver-pipe-error",
            "indi-driver-died",
        ],
        "image-received" => &["capture-failed", "capture-aborted", "capture-suspended"],
        "solver-success" => &["solver-failed"],
        "autofocus-complete" => &["autofocus-failed"],
        "meridian-flip-completed" => &["meridian-flip-failed"],
        "mount-parked" | "mount-unparked" => &["mount-park-failed"],
        "dome-parked" | "dome-unparked" => &["dome-park-failed"],
        _ => &[],
    }
}

/// One open incident; saved across restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    pub route: usize,
    pub rule: String,
    pub key: String,
    pub severity: Severity,
    pub title: String,
    /// The file the events came from (its name, for the embed).
    pub file: String,
    pub last_line: String,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// What an event brings along for an incident.
#[derive(Debug, Clone)]
pub struct Occurrence<'a> {
    pub route: usize,
    pub event: &'a EventPart,
    pub line: &'a str,
    pub file: &'a str,
    /// The context attachment, for an error and above (first post only).
    pub context: Option<NewFile>,
}

#[derive(Debug, Clone)]
pub struct Incidents {
    window: Duration,
    open: BTreeMap<(usize, String), Incident>,
    /// Moves at every opening and ending (the set to save changed).
    generation: u64,
}

/// `HH:MM:SS` UTC of wall-clock milliseconds (the journal and Discord's
/// own timestamps say the local time; a log's time is shown as written).
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", s / 3600 % 24, s / 60 % 60, s % 60)
}

impl Incidents {
    /// `window` zero turns incidents off.
    pub fn new(window: Duration) -> Incidents {
        Incidents {
            window,
            open: BTreeMap::new(),
            generation: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Restores the open incidents saved by a previous run.
    pub fn restore(&mut self, saved: Vec<Incident>) {
        for i in saved {
            self.open.insert((i.route, i.rule.clone()), i);
        }
    }

    pub fn saved(&self) -> Vec<Incident> {
        self.open.values().cloned().collect()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Changes at every opening and ending of an incident.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// An event: resolves what it resolves, then opens or grows the
    /// incident of its rule (warning and above). `now` is wall-clock ms.
    pub fn event(&mut self, o: Occurrence, now: u64) -> Vec<Notice> {
        self.event_after(o, now, 0, now)
    }

    /// An event that stands for `earlier` ones before it too, the first at
    /// `first_ms` (a warning storm, see [`super::storms`], is recognised at
    /// its third repeat: its incident opens with a count of three).
    pub fn event_after(
        &mut self,
        o: Occurrence,
        now: u64,
        earlier: u64,
        first_ms: u64,
    ) -> Vec<Notice> {
        let mut out = self.tick(now);
        if !self.enabled() {
            return out;
        }
        let ev = o.event;
        for rule in resolves(&ev.rule) {
            if let Some(i) = self.open.remove(&(o.route, rule.to_string())) {
                self.generation += 1;
                out.push(resolved(&i, o.line, now));
            }
        }
        if ev.severity < Severity::Warning {
            return out;
        }
        let k = (o.route, ev.rule.clone());
        match self.open.get_mut(&k) {
            Some(i) => {
                i.count += 1 + earlier;
                i.last_ms = now;
                i.last_line = o.line.to_string();
                i.file = o.file.to_string();
                out.push(Notice {
                    route: i.route,
                    key: i.key.clone(),
                    body: body(i, None),
                    files: vec![],
                    policy: Policy::Upsert {
                        min_interval: EDIT_INTERVAL,
                    },
                });
            }
            None => {
                if self.open.len() >= MAX_OPEN {
                    if let Some(oldest) = self
                        .open
                        .iter()
                        .min_by_key(|(_, i)| i.last_ms)
                        .map(|(k, _)| k.clone())
                    {
                        let i = self.open.remove(&oldest).expect("just found");
                        out.push(ended(&i));
                    }
                }
                let i = Incident {
                    route: o.route,
                    rule: ev.rule.clone(),
                    key: format!("incident/{}/{now}", ev.rule),
                    severity: ev.severity,
                    title: ev.title.clone(),
                    file: o.file.to_string(),
                    last_line: o.line.to_string(),
                    count: 1 + earlier,
                    first_ms: first_ms.min(now),
                    last_ms: now,
                };
                out.push(Notice {
                    route: i.route,
                    key: i.key.clone(),
                    body: body(&i, ev.mention.as_ref()),
                    files: o.context.into_iter().collect(),
                    policy: Policy::Upsert {
                        min_interval: EDIT_INTERVAL,
                    },
                });
                self.open.insert(k, i);
                self.generation += 1;
            }
        }
        out
    }

    /// Ends the incidents without a repeat for a whole window.
    pub fn tick(&mut self, now: u64) -> Vec<Notice> {
        let window = self.window.as_millis() as u64;
        let over: Vec<(usize, String)> = self
            .open
            .iter()
            .filter(|(_, i)| now.saturating_sub(i.last_ms) > window)
            .map(|(k, _)| k.clone())
            .collect();
        self.generation += over.len() as u64;
        over.into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|i| ended(&i))
            .collect()
    }

    /// When the next incident ends if nothing happens (wall-clock ms).
    pub fn wake_at(&self) -> Option<u64> {
        let window = self.window.as_millis() as u64;
        self.open.values().map(|i| i.last_ms + window + 1).min()
    }
}

fn span(i: &Incident) -> String {
    if i.count == 1 {
        format!("once, at {}", clock(i.first_ms))
    } else {
        format!(
            "{} times between {} and {} ({})",
            i.count,
            clock(i.first_ms),
            clock(i.last_ms),
            human(Duration::from_millis(i.last_ms.saturating_sub(i.first_ms)))
        )
    }
}

/// The message of an open incident; a mention only on the first post.
fn body(i: &Incident, mention: Option<&Mention>) -> serde_json::Value {
    let title = if i.count > 1 {
        format!("{} (×{})", i.title, i.count)
    } else {
        i.title.clone()
    };
    Alert {
        title,
        description: quoted_line(&i.last_line, 1500),
        color: i.severity.color(),
        fields: vec![("Seen".into(), span(i)), ("File".into(), i.file.clone())],
        footer: Some(format!("{} · {} · incident", i.severity, i.rule)),
        mention: mention.cloned(),
    }
    .body()
}

fn resolved(i: &Incident, by: &str, now: u64) -> Notice {
    let after = human(Duration::from_millis(now.saturating_sub(i.first_ms)));
    Notice {
        route: i.route,
        key: i.key.clone(),
        body: Alert {
            title: format!("Resolved after {after}: {}", i.title),
            description: format!(
                "{}\nResolved by:\n{}",
                quoted_line(&i.last_line, 1500),
                quoted_line(by, 1500)
            ),
            color: RESOLVED_COLOR,
            fields: vec![("Seen".into(), span(i)), ("File".into(), i.file.clone())],
            footer: Some(format!("{} · {} · resolved", i.severity, i.rule)),
            mention: None,
        }
        .body(),
        files: vec![],
        policy: Policy::Final,
    }
}

fn ended(i: &Incident) -> Notice {
    let mut body = body(i, None);
    body["embeds"][0]["footer"]["text"] = format!(
        "{} · {} · no repeat since {}",
        i.severity,
        i.rule,
        clock(i.last_ms)
    )
    .into();
    Notice {
        route: i.route,
        key: i.key.clone(),
        body,
        files: vec![],
        policy: Policy::Final,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const T0: u64 = 1_700_000_000_000;

    fn ev(rule: &str, sev: Severity) -> EventPart {
        EventPart {
            severity: sev,
            title: format!("title of {rule}"),
            footer: None,
            mention: Some(Mention::Role(7)),
            alert_mention: Some(Mention::Role(7)),
            rule: rule.into(),
            more: 0,
        }
    }

    fn occ<'a>(e: &'a EventPart, line: &'a str) -> Occurrence<'a> {
        Occurrence {
            route: 0,
            event: e,
            line,
            file: "log_1.txt",
            context: Some(crate::notice::context_file("log_1.txt", ["before", line])),
        }
    }

    fn title(n: &Notice) -> String {
        n.body["embeds"][0]["title"].as_str().unwrap().to_string()
    }

    #[test]
    fn repeats_within_the_window_fold_into_one_message_pinging_once() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let lost = ev("guide-star-lost", Severity::Warning);
        let first = inc.event(occ(&lost, "Lost track of the guide star"), T0);
        assert_eq!(first.len(), 1);
        let key = first[0].key.clone();
        assert_eq!(first[0].body["content"], "<@&7>", "the first pings");
        assert_eq!(first[0].files.len(), 1, "with its context");
        assert!(
            matches!(first[0].policy, Policy::Upsert { min_interval } if min_interval == EDIT_INTERVAL)
        );
        for n in 2..=9 {
            let out = inc.event(occ(&lost, "Lost track of the guide star"), T0 + n * 60 * S);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].key, key, "same message");
            assert!(out[0].body.get("content").is_none(), "edits never ping");
            assert!(out[0].files.is_empty());
            assert_eq!(title(&out[0]), format!("title of guide-star-lost (×{n})"));
        }
        let seen = inc.saved()[0].clone();
        assert_eq!(seen.count, 9);
        assert_eq!(seen.last_ms - seen.first_ms, 9 * 60 * S);
    }

    #[test]
    fn a_resolving_event_turns_the_incident_green_and_closes_it() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let lost = ev("guide-star-lost", Severity::Warning);
        let key = inc.event(occ(&lost, "lost"), T0)[0].key.clone();
        inc.event(occ(&lost, "lost"), T0 + 60 * S);
        let guiding = ev("guide-started", Severity::Info);
        let out = inc.event(occ(&guiding, "Autoguiding started."), T0 + 6 * 60 * S);
        assert_eq!(out.len(), 1, "info events open nothing");
        assert_eq!(out[0].key, key);
        assert_eq!(out[0].policy, Policy::Final);
        assert_eq!(out[0].body["embeds"][0]["color"], RESOLVED_COLOR);
        assert!(
            title(&out[0]).starts_with("Resolved after 6 min"),
            "{}",
            title(&out[0])
        );
        assert_eq!(inc.open_count(), 0);
        // The next loss is a new incident, a new message.
        let again = inc.event(occ(&lost, "lost"), T0 + 7 * 60 * S);
        assert_ne!(again[0].key, key);
    }

    #[test]
    fn a_driver_restart_resolves_the_driver_ending() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let crash = ev("indi-driver-eof", Severity::Error);
        inc.event(occ(&crash, "Driver indi_eqmod_telescope: stderr EOF"), T0);
        let restart = ev("indi-driver-restart", Severity::Warning);
        let out = inc.event(
            occ(&restart, "Driver indi_eqmod_telescope: restart #1"),
            T0 + 5 * S,
        );
        assert_eq!(out[0].policy, Policy::Final);
        assert_eq!(out[0].body["embeds"][0]["color"], RESOLVED_COLOR);
        assert_eq!(
            out.len(),
            2,
            "the restart, a warning, is an incident of its own"
        );
    }

    #[test]
    fn a_window_without_repeats_ends_the_incident_and_the_next_one_is_new() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let e = ev("capture-failed", Severity::Error);
        let key = inc.event(occ(&e, "Capture failed."), T0)[0].key.clone();
        assert_eq!(inc.wake_at(), Some(T0 + 600 * S + 1));
        assert!(inc.tick(T0 + 600 * S).is_empty());
        let out = inc.tick(T0 + 600 * S + 1);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].key.as_str(), out[0].policy),
            (key.as_str(), Policy::Final)
        );
        let next = inc.event(occ(&e, "Capture failed."), T0 + 700 * S);
        assert_ne!(next[0].key, key);
        assert_eq!(next[0].body["content"], "<@&7>");
    }

    #[test]
    fn info_events_and_a_zero_window_open_nothing() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        assert!(
            inc.event(occ(&ev("image-received", Severity::Info), "x"), T0)
                .is_empty()
        );
        let mut off = Incidents::new(Duration::ZERO);
        assert!(!off.enabled());
        assert!(
            off.event(occ(&ev("capture-failed", Severity::Error), "x"), T0)
                .is_empty()
        );
    }

    #[test]
    fn a_restored_incident_goes_on_under_its_key_with_its_count() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let e = ev("guide-star-lost", Severity::Warning);
        inc.event(occ(&e, "lost"), T0);
        inc.event(occ(&e, "lost"), T0 + S);
        let saved = serde_json::to_string(&inc.saved()).unwrap();
        let mut after = Incidents::new(Duration::from_secs(600));
        after.restore(serde_json::from_str(&saved).unwrap());
        let out = after.event(occ(&e, "lost"), T0 + 60 * S);
        assert_eq!(out[0].key, inc.saved()[0].key);
        assert_eq!(title(&out[0]), "title of guide-star-lost (×3)");
        // Restored after its window: it ends at the first look.
        let mut late = Incidents::new(Duration::from_secs(600));
        late.restore(serde_json::from_str(&saved).unwrap());
        assert_eq!(late.tick(T0 + 3600 * S)[0].policy, Policy::Final);
    }

    #[test]
    fn every_body_is_within_discords_limits() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let long = "é".repeat(10_000);
        let e = EventPart {
            title: long.clone(),
            ..ev("capture-failed", Severity::Critical)
        };
        for n in inc
            .event(occ(&e, &long), T0)
            .into_iter()
            .chain(inc.event(occ(&e, &long), T0 + S))
            .chain(inc.tick(T0 + 3600 * S))
        {
            crate::limits::check(&n.body).unwrap();
        }
    }

    /// An event standing for earlier ones (a warning storm) opens with
    /// their count and the first one's time, and adds them to an incident
    /// already open (one restored after a restart).
    #[test]
    fn an_event_after_earlier_ones_counts_them() {
        let mut inc = Incidents::new(Duration::from_secs(600));
        let e = ev("warning-storm:1", Severity::Warning);
        let out = inc.event_after(occ(&e, "x"), T0 + 10 * S, 2, T0);
        assert_eq!(title(&out[0]), "title of warning-storm:1 (×3)");
        let i = inc.saved().remove(0);
        assert_eq!((i.count, i.first_ms, i.last_ms), (3, T0, T0 + 10 * S));
        inc.event(occ(&e, "x"), T0 + 11 * S);
        let out = inc.event_after(occ(&e, "x"), T0 + 12 * S, 2, T0 + 5 * S);
        assert_eq!(title(&out[0]), "title of warning-storm:1 (×7)");
        assert_eq!(inc.saved()[0].first_ms, T0, "the incident's start stays");
    }
}
