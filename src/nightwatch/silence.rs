//! The silence alarm, as a pure state machine over arrival times.
//!
//! A log that simply stops is the failure no line reports: KStars hung, the
//! USB hub died, the disk filled. While the [`Session`] says work is in
//! progress, the Ekos log may be quiet for as long as the work explains
//! ([`Session::expected_quiet`]: the exposure plus download plus a margin),
//! or for a fixed `silence_after` when configured; longer, [`Silence::check`]
//! raises one alert. The next line ends the silence and
//! [`Silence::line`] says so once. Nothing fires while parked, idle or
//! after a clean shutdown (the session then expects no work), and nothing
//! fires twice for one silence. Times are arrival times in milliseconds of
//! the caller's monotonic clock, never the times the lines carry.

use std::time::Duration;

use crate::session::Session;

/// How long the log may be quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// What the session's work explains ([`Session::expected_quiet`]).
    Auto,
    /// A fixed time, while work is in progress.
    After(Duration),
    /// No silence alarm.
    Off,
}

/// A silence that was reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reported {
    /// Arrival time of the last line before it.
    pub since_ms: u64,
}

/// What [`Silence::check`] found: the log has been quiet for `quiet`,
/// longer than `allowed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub quiet: Duration,
    pub allowed: Duration,
    /// The last line seen before the silence.
    pub last_line: String,
}

/// Saved across restarts with the night watch's state (its times are the
/// night watch's monotonic clock, continued across a restart).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Silence {
    last_ms: Option<u64>,
    last_line: String,
    reported: Option<Reported>,
}

impl Silence {
    /// How long the log may be quiet now, if a silence would be alarming.
    pub fn allowed(threshold: Threshold, session: &Session) -> Option<Duration> {
        match threshold {
            Threshold::Off => None,
            Threshold::Auto => session.expected_quiet(),
            Threshold::After(d) => session.work_in_progress().then_some(d),
        }
    }

    /// A line of the followed Ekos log arrived. Returns how long the log
    /// had been silent if that silence was reported (say it writes again).
    pub fn line(&mut self, arrived_ms: u64, text: &str) -> Option<Duration> {
        let back = self
            .reported
            .take()
            .map(|r| Duration::from_millis(arrived_ms.saturating_sub(r.since_ms)));
        self.last_ms = Some(self.last_ms.map_or(arrived_ms, |l| l.max(arrived_ms)));
        self.last_line.clear();
        self.last_line.push_str(text);
        back
    }

    /// Whether the log has now been quiet too long: `Some` once per silence.
    pub fn check(&mut self, now_ms: u64, allowed: Option<Duration>) -> Option<Alarm> {
        let allowed = allowed?;
        let last = self.last_ms?;
        if self.reported.is_some() {
            return None;
        }
        let quiet = Duration::from_millis(now_ms.saturating_sub(last));
        if quiet <= allowed {
            return None;
        }
        self.reported = Some(Reported { since_ms: last });
        Some(Alarm {
            quiet,
            allowed,
            last_line: self.last_line.clone(),
        })
    }

    /// When [`Silence::check`] should look next, if a silence is possible.
    pub fn wake_at(&self, allowed: Option<Duration>) -> Option<u64> {
        if self.reported.is_some() {
            return None;
        }
        let allowed = allowed?;
        Some(self.last_ms? + allowed.as_millis() as u64 + 1)
    }

    /// The daemon (re)started at `now_ms` with this saved state: it was
    /// down, not Ekos, so the quiet is counted from the restart. A silence
    /// already reported stays reported: the next line says it ended (once),
    /// and no second alert is sent for it.
    pub fn restarted(&mut self, now_ms: u64) {
        if self.reported.is_none() && self.last_ms.is_some() {
            self.last_ms = self.last_ms.map(|l| l.max(now_ms));
        }
    }

    pub fn reported(&self) -> Option<&Reported> {
        self.reported.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ekos::parse;

    const MIN: u64 = 60_000;

    fn feed(s: &mut Session, sil: &mut Silence, at: u64, line: &str) -> Option<Duration> {
        s.observe(&parse(line), at);
        sil.line(at, line)
    }

    fn exposing(s: &mut Session, sil: &mut Silence, at: u64) {
        feed(
            s,
            sil,
            at,
            r#"[2024-01-01T22:00:00.000 UTC INFO ][ org.kde.kstars.ekos.scheduler] - Executing Job  "M31""#,
        );
        feed(
            s,
            sil,
            at,
            "[2024-01-01T22:00:00.000 UTC INFO ][ org.kde.kstars.ekos.capture] - \"Capturing 300.000-second L image...\"",
        );
    }

    #[test]
    fn a_silence_in_mid_exposure_alarms_once_then_writing_again_is_said_once() {
        let (mut s, mut sil) = (Session::new(), Silence::default());
        exposing(&mut s, &mut sil, 0);
        let allowed = Silence::allowed(Threshold::Auto, &s).unwrap();
        // 300 s + 60 s download + 60 s margin.
        assert_eq!(allowed, Duration::from_secs(420));
        assert_eq!(sil.wake_at(Some(allowed)), Some(420_001));
        assert_eq!(
            sil.check(7 * MIN, Some(allowed)),
            None,
            "the exposure explains it"
        );
        let a = sil.check(8 * MIN, Some(allowed)).expect("silent too long");
        assert_eq!(a.quiet, Duration::from_secs(480));
        assert!(a.last_line.contains("Capturing 300.000-second"));
        assert_eq!(sil.check(9 * MIN, Some(allowed)), None, "never twice");
        assert_eq!(sil.wake_at(Some(allowed)), None);
        let back = feed(
            &mut s,
            &mut sil,
            14 * MIN,
            "[2024-01-01T22:14:00.000 UTC INFO ][ org.kde.kstars.ekos.capture] - \"Received image 1 out of 20.\"",
        );
        assert_eq!(back, Some(Duration::from_secs(14 * 60)));
        let again = sil.line(14 * MIN + 1, "another line");
        assert_eq!(again, None, "said once");
    }

    #[test]
    fn lines_keep_the_alarm_away() {
        let (mut s, mut sil) = (Session::new(), Silence::default());
        exposing(&mut s, &mut sil, 0);
        let t = Threshold::After(Duration::from_secs(120));
        for i in 1..=10 {
            feed(&mut s, &mut sil, i * MIN, "any line at all");
            assert_eq!(sil.check(i * MIN + MIN, Silence::allowed(t, &s)), None);
        }
        assert!(sil.check(13 * MIN, Silence::allowed(t, &s)).is_some());
    }

    #[test]
    fn parked_idle_or_shut_down_is_never_a_silence() {
        for end in [
            "[2024-01-01T23:00:00.000 UTC INFO ][ org.kde.kstars.ekos.scheduler] - \"Mount parked.\"",
            "[2024-01-01T23:00:00.000 UTC INFO ][ org.kde.kstars.ekos.scheduler] - \"Shutdown complete.\"",
        ] {
            let (mut s, mut sil) = (Session::new(), Silence::default());
            exposing(&mut s, &mut sil, 0);
            feed(&mut s, &mut sil, MIN, end);
            for t in [Threshold::Auto, Threshold::After(Duration::from_secs(1))] {
                let allowed = Silence::allowed(t, &s);
                assert_eq!(allowed, None, "{end}");
                assert_eq!(sil.check(600 * MIN, allowed), None);
                assert_eq!(sil.wake_at(allowed), None);
            }
        }
        // Idle from the start: nothing, whatever the time.
        let (s, mut sil) = (Session::new(), Silence::default());
        sil.line(0, "KStars started");
        assert_eq!(
            sil.check(600 * MIN, Silence::allowed(Threshold::Auto, &s)),
            None
        );
    }

    #[test]
    fn off_is_off_and_nothing_is_alarming_before_the_first_line() {
        let (mut s, mut sil) = (Session::new(), Silence::default());
        assert_eq!(sil.check(600 * MIN, Some(Duration::from_secs(1))), None);
        exposing(&mut s, &mut sil, 0);
        assert_eq!(Silence::allowed(Threshold::Off, &s), None);
    }

    #[test]
    fn a_restart_counts_the_quiet_from_the_restart_and_keeps_a_reported_silence() {
        let (mut s, mut sil) = (Session::new(), Silence::default());
        exposing(&mut s, &mut sil, 0);
        let allowed = Silence::allowed(Threshold::Auto, &s);
        // Down from 1 to 30 min: the restart is no silence of Ekos.
        sil.restarted(30 * MIN);
        assert_eq!(sil.check(30 * MIN + 1, allowed), None);
        assert_eq!(sil.wake_at(allowed), Some(30 * MIN + 420_001));
        assert!(
            sil.check(38 * MIN, allowed).is_some(),
            "quiet since the restart"
        );
        // Reported before the restart: not again, and its end is said once.
        let mut again = sil.clone();
        again.restarted(50 * MIN);
        assert_eq!(again.check(90 * MIN, allowed), None);
        assert_eq!(
            again.line(91 * MIN, "x"),
            Some(Duration::from_secs(61 * 60))
        );
        // Nothing seen yet: nothing to count from.
        let mut fresh = Silence::default();
        fresh.restarted(5 * MIN);
        assert_eq!(fresh.check(600 * MIN, allowed), None);
    }

    #[test]
    fn arrival_going_backwards_does_not_shorten_a_silence() {
        let (mut s, mut sil) = (Session::new(), Silence::default());
        exposing(&mut s, &mut sil, 10 * MIN);
        sil.line(5 * MIN, "late stamp");
        let allowed = Some(Duration::from_secs(120));
        assert_eq!(sil.check(11 * MIN, allowed), None);
        assert!(sil.check(13 * MIN, allowed).is_some());
    }
}
