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
//!
//! With an alerts webhook (`alerts_webhook_url`), an incident of its least
//! severity and above is posted there too, with the same lifecycle (first
//! post with the rule's alert mention, edits with the count, the final
//! resolved or ended message) under the key `<incident key>@alerts/<its route>`
//! ([`alerts_copy`]): the watcher's events an incident stands for get no
//! copy of their own there (see [`crate::nightwatch::Tap::offer`]), so a
//! storm of one rule pings that channel once too. A warning storm (lines
//! of no rule) never went to the alerts webhook and does not now.

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

/// The key of the copy on the alerts route of the notice under `key` of
/// an incident on `route`.
pub fn alerts_key(key: &str, route: usize) -> String {
    format!("{key}@alerts/{route}")
}

/// The copy for the alerts route (`alerts`: its route and least severity)
/// of notice `n` of incident `i`, when the incident qualifies: its severity
/// reaches the threshold, it is of a rule (not a warning storm), and it is
/// not on the alerts route already. `alert_body`: the body to post there
/// instead of `n`'s (the first post, with the rule's alert mention).
pub fn alerts_copy(
    n: &Notice,
    i: &Incident,
    alerts: Option<(usize, Severity)>,
    alert_body: Option<serde_json::Value>,
) -> Option<Notice> {
    let (route, min) = alerts?;
    if i.severity < min || i.route == route || i.rule.starts_with(super::storms::RULE_PREFIX) {
        return None;
    }
    Some(Notice {
        route,
        // The incident's key is unique on its route only: the same rule
        // may open at the same millisecond on two routes.
        key: alerts_key(&n.key, i.route),
        body: alert_body.unwrap_or_else(|| n.body.clone()),
        files: n.files.clone(),
        policy: n.policy,
    })
}

#[derive(Debug, Clone)]
pub struct Incidents {
    window: Duration,
    /// The alerts route and its least severity ([`alerts_copy`]).
    alerts: Option<(usize, Severity)>,
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
            alerts: None,
            open: BTreeMap::new(),
            generation: 0,
        }
    }

    /// Incidents of `alerts`' least severity are posted to its route too.
    pub fn with_alerts(mut self, alerts: Option<(usize, Severity)>) -> Incidents {
        self.alerts = alerts;
        self
    }

    /// Notice `n` of incident `i`, and its copy for the alerts route.
    fn emit(
        &self,
        out: &mut Vec<Notice>,
        i: &Incident,
        n: Notice,
        alert_body: Option<serde_json::Value>,
    ) {
        let copy = alerts_copy(&n, i, self.alerts, alert_body);
        out.push(n);
        out.extend(copy);
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
                self.emit(&mut out, &i, resolved(&i, o.line, now), None);
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
                let n = Notice {
                    route: i.route,
                    key: i.key.clone(),
                    body: body(i, None),
                    files: vec![],
                    policy: Policy::Upsert {
                        min_interval: EDIT_INTERVAL,
                    },
                };
                let i = i.clone();
                self.emit(&mut out, &i, n, None);
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
                        self.emit(&mut out, &i, ended(&i), None);
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
                let n = Notice {
                    route: i.route,
                    key: i.key.clone(),
                    body: body(&i, ev.mention.as_ref()),
                    files: o.context.into_iter().collect(),
                    policy: Policy::Upsert {
                        min_interval: EDIT_INTERVAL,
                    },
                };
                // The alerts channel pings as the rule says, once.
                let alert_body = body(&i, ev.alert_mention.as_ref());
                self.emit(&mut out, &i, n, Some(alert_body));
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
        let mut out = Vec::new();
        let ended_now: Vec<Incident> = (over.iter()).filter_map(|k| self.open.remove(k)).collect();
        for i in ended_now {
            self.emit(&mut out, &i, ended(&i), None);
        }
        out
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
            covered: false,
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

    /// A storm of one error with an alerts webhook (route 9, threshold
    /// error): the alerts route gets the incident, not the lines: one
    /// first post pinging with the rule's alert mention and its context,
    /// edits that never ping, and the end; a warning incident stays off it.
    #[test]
    fn an_incident_of_the_alerts_severity_is_posted_there_too_pinging_once() {
        let mut inc =
            Incidents::new(Duration::from_secs(600)).with_alerts(Some((9, Severity::Error)));
        let e = EventPart {
            mention: None,
            alert_mention: Some(Mention::Role(8)),
            ..ev("capture-failed", Severity::Error)
        };
        let mut out = Vec::new();
        for k in 0..20 {
            out.extend(inc.event(occ(&e, "Capture failed."), T0 + k * S));
        }
        out.extend(inc.tick(T0 + 3600 * S));
        let alerts: Vec<&Notice> = out.iter().filter(|n| n.route == 9).collect();
        let main: Vec<&Notice> = out.iter().filter(|n| n.route == 0).collect();
        assert_eq!((alerts.len(), main.len()), (21, 21));
        let key = alerts_key(&main[0].key, 0);
        assert!(alerts.iter().all(|n| n.key == key));
        assert_eq!(alerts[0].body["content"], "<@&8>", "the alert mention");
        assert_eq!(main[0].body.get("content"), None, "the rule's mention");
        assert_eq!(alerts[0].files.len(), 1, "the context, on both");
        assert!(alerts[1..].iter().all(|n| n.body.get("content").is_none()));
        assert_eq!(alerts[20].policy, Policy::Final);
        assert_eq!(title(alerts[19]), "title of capture-failed (×20)");

        let lost = ev("guide-star-lost", Severity::Warning);
        let out = inc.event(occ(&lost, "lost"), T0 + 4000 * S);
        assert_eq!(out.len(), 1, "below the threshold: the logs channel only");
        // A warning storm is no rule's event: never on the alerts route.
        let mut inc =
            Incidents::new(Duration::from_secs(600)).with_alerts(Some((9, Severity::Warning)));
        let storm = ev("warning-storm:abc", Severity::Warning);
        let out = inc.event_after(occ(&storm, "x"), T0, 2, T0);
        assert_eq!(out.len(), 1);
    }

    /// Seeded: random events of several rules (resolvers among them) on
    /// two routes, random ticks, a random alerts threshold. Oracle: the
    /// notices on the alerts route are exactly those of the incidents of
    /// at least that severity, in the same order, under their keys with
    /// the suffix, with the same policy and body except that only each
    /// first post pings (with the alert mention); no incident's copy is
    /// posted after its Final, nor opened by an edit.
    #[test]
    fn the_alerts_route_gets_the_same_incidents_as_their_channel_randomized() {
        const A: usize = 9;
        let rules = [
            ("capture-failed", Severity::Error),
            ("indi-driver-crashed", Severity::Critical),
            ("guide-star-lost", Severity::Warning),
            ("image-received", Severity::Info),
            ("guide-started", Severity::Info),
            ("indi-driver-restart", Severity::Warning),
        ];
        let sev = |rule: &str| rules.iter().find(|r| r.0 == rule).unwrap().1;
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for seed in 0..60 {
            let min = [Severity::Warning, Severity::Error, Severity::Critical][seed % 3];
            let mut with = Incidents::new(Duration::from_secs(60)).with_alerts(Some((A, min)));
            let mut without = Incidents::new(Duration::from_secs(60));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut now = T0;
            for _ in 0..200 {
                now += next(40) * S;
                if next(5) == 0 {
                    a.extend(with.tick(now));
                    b.extend(without.tick(now));
                    continue;
                }
                let (rule, severity) = rules[next(rules.len() as u64) as usize];
                let e = EventPart {
                    mention: Some(Mention::Role(1)),
                    alert_mention: Some(Mention::Role(2)),
                    ..ev(rule, severity)
                };
                let mut o = occ(&e, "line");
                o.route = next(2) as usize;
                a.extend(with.event(o.clone(), now));
                b.extend(without.event(o, now));
            }
            a.extend(with.tick(now + 3600 * S));
            b.extend(without.tick(now + 3600 * S));
            let theirs: Vec<Notice> = a.iter().filter(|n| n.route != A).cloned().collect();
            assert_eq!(
                format!("{theirs:?}"),
                format!("{b:?}"),
                "seed {seed}: the logs channel as without alerts"
            );
            let copies: Vec<&Notice> = a.iter().filter(|n| n.route == A).collect();
            let want: Vec<&Notice> = b
                .iter()
                .filter(|n| {
                    let rule = n.key.split('/').nth(1).unwrap();
                    sev(rule) >= min
                })
                .collect();
            assert_eq!(copies.len(), want.len(), "seed {seed}");
            let mut opened = std::collections::HashSet::new();
            let mut closed = std::collections::HashSet::new();
            for (c, w) in copies.iter().zip(&want) {
                assert_eq!(c.key, alerts_key(&w.key, w.route));
                assert_eq!(c.policy, w.policy);
                assert_eq!(c.files.len(), w.files.len());
                assert!(!closed.contains(&c.key), "seed {seed}: after its Final");
                let first = opened.insert(c.key.clone());
                assert_eq!(
                    c.body.get("content").and_then(|v| v.as_str()),
                    first.then_some("<@&2>"),
                    "seed {seed}: only the first post pings"
                );
                assert_eq!(c.body["embeds"], w.body["embeds"]);
                if c.policy == Policy::Final {
                    closed.insert(c.key.clone());
                }
            }
            assert_eq!(opened, closed, "seed {seed}: every copy ends");
        }
    }
}
