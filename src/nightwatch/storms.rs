//! Warning storms: one warning repeated over and over becomes an incident.
//!
//! Plain `WARN` lines (Qt `WARN`, an INDI `[WARNING]` tag inside a KStars
//! INFO line, a `WARNING` line of an INDI driver log) are deliberately not
//! events (see [`crate::ekos`]): Ekos warns about many conditions that
//! correct themselves. But a driver writing `[WARNING] Failed to read
//! temperature` every second all night is not transient, and posted line
//! by line it is a flood with no alert at all. [`Storms`] is fed the lines
//! that are not events, per source, and counts those of level warning
//! (error and worse are events unless a rule said they are not); it
//! normalises each message (the parsed record's message, so no timestamp
//! or level prefix; the INDI tag and quotes taken out; every run of digits
//! made `#`, so "timeout after 3 s" and "timeout after 4 s" are one
//! warning; blanks collapsed) and counts the repeats of each within the
//! incident window. At the [`THRESHOLD`]th repeat it returns a [`Storm`]:
//! a synthetic event ("Repeated warning: …", rule `warning-storm:<hash>`,
//! so that each distinct warning is its own incident, without a mention)
//! standing for the earlier repeats too, so the incident opens with the
//! count of all of them; every later repeat within the window is one more
//! event of the same incident. A gap longer than the window starts the
//! count again, as the incident ends after a window without repeats.
//! The night watch feeds it only lines its source posts (a line a filter
//! drops is no storm) of sources whose `events` are not off, and only while
//! incidents are on. A `WARN` line matched by a rule of severity `none`
//! looks like any other plain line here: to keep one warning's storms
//! quiet, drop its lines with `exclude_regex`.
//! Memory is bounded: at most [`MAX_TRACKED`] messages are tracked (the one
//! seen least recently is forgotten) of at most [`MAX_MESSAGE`] bytes each.
//! Pure: the caller passes the time (the wall-clock milliseconds its
//! incidents use).

use std::collections::HashMap;
use std::time::Duration;

use crate::ekos::{Level, Record, Severity};
use crate::format::EventPart;

/// Repeats of one warning within the window that make it a storm: two may
/// be a coincidence (a retry that worked), the third is a pattern.
pub const THRESHOLD: u64 = 3;
/// Distinct warnings tracked at once: a verbose log full of ever-different
/// warnings (with names, addresses) must not grow memory.
pub const MAX_TRACKED: usize = 256;
/// Bytes of a normalised message kept (and compared): longer warnings that
/// differ only past this are one warning.
pub const MAX_MESSAGE: usize = 512;
/// Code points of the message in the incident's title: with the prefix and
/// the count the incident appends, it stays within Discord's 256.
const TITLE_MESSAGE: usize = 200;
/// How the rule name of a storm's synthetic event begins.
pub const RULE_PREFIX: &str = "warning-storm:";

/// A warning repeated often enough: the event to feed to the incidents.
#[derive(Debug, Clone, PartialEq)]
pub struct Storm {
    pub event: EventPart,
    /// Repeats before this one that the incident must count too
    /// (`THRESHOLD - 1` when the storm begins, then 0).
    pub earlier: u64,
    /// When the first of them was seen (wall-clock ms).
    pub first_ms: u64,
}

#[derive(Debug, Clone)]
struct Track {
    count: u64,
    first_ms: u64,
    last_ms: u64,
    /// Order of last use, for forgetting the least recently seen.
    stamp: u64,
}

/// Counts repeats of each warning, per source.
#[derive(Debug, Clone)]
pub struct Storms {
    window_ms: u64,
    tracked: HashMap<(usize, String), Track>,
    stamp: u64,
}

impl Storms {
    /// `window`: the incident window (repeats further apart are separate).
    pub fn new(window: Duration) -> Storms {
        Storms {
            window_ms: window.as_millis() as u64,
            tracked: HashMap::new(),
            stamp: 0,
        }
    }

    /// Messages tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// A line of `source` (parsed) that is not an event, seen at `now_ms`: a
    /// [`Storm`] when it is a warning repeated [`THRESHOLD`]
    /// times or more, each within the window of the previous one.
    pub fn line(&mut self, source: usize, rec: &Record, now_ms: u64) -> Option<Storm> {
        // Error and above are events (`indi-error`, `critical`, `fatal`)
        // unless a rule of severity `none` says otherwise: those are left
        // alone.
        if rec.level != Some(Level::Warn) {
            return None;
        }
        let message = normalise(rec.message);
        if message.is_empty() {
            return None;
        }
        self.stamp += 1;
        let key = (source, message);
        if !self.tracked.contains_key(&key) && self.tracked.len() >= MAX_TRACKED {
            if let Some(old) = (self.tracked.iter())
                .min_by_key(|(_, t)| t.stamp)
                .map(|(k, _)| k.clone())
            {
                self.tracked.remove(&old);
            }
        }
        let t = self.tracked.entry(key.clone()).or_insert(Track {
            count: 0,
            first_ms: now_ms,
            last_ms: now_ms,
            stamp: 0,
        });
        if now_ms.saturating_sub(t.last_ms) > self.window_ms {
            // The previous storm's incident ended with its window.
            t.count = 0;
            t.first_ms = now_ms;
        }
        t.count += 1;
        t.last_ms = now_ms;
        t.stamp = self.stamp;
        let (earlier, first_ms) = match t.count {
            c if c < THRESHOLD => return None,
            c if c == THRESHOLD => (THRESHOLD - 1, t.first_ms),
            _ => (0, now_ms),
        };
        Some(Storm {
            event: event(&key.1),
            earlier,
            first_ms,
        })
    }
}

/// The synthetic event of a storm of `message` (normalised).
fn event(message: &str) -> EventPart {
    let shown = crate::limits::cap(message, TITLE_MESSAGE);
    EventPart {
        severity: Severity::Warning,
        title: crate::limits::cap(&format!("Repeated warning: {shown}"), crate::limits::TITLE)
            .into_owned(),
        footer: None,
        // Nobody asked to be woken for a warning.
        mention: None,
        alert_mention: None,
        covered: false,
        rule: format!("{RULE_PREFIX}{:012x}", fnv1a(message) >> 16),
        more: 0,
    }
}

/// FNV-1a: stable across runs and versions (the rule name is part of the
/// incident's key, saved across restarts), unlike `DefaultHasher`.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The message that identifies a warning: the INDI tag and quotes taken
/// out, digit runs made `#`, blanks collapsed, at most [`MAX_MESSAGE`]
/// bytes.
pub fn normalise(message: &str) -> String {
    let message = match message.find("[WARNING]") {
        Some(at) if at < 128 => {
            // Taken out where it is: `ZWO CCD : "[WARNING] x"`.
            let mut m = message.to_string();
            m.replace_range(at..at + "[WARNING]".len(), "");
            std::borrow::Cow::Owned(m)
        }
        _ => std::borrow::Cow::Borrowed(message),
    };
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE));
    let mut prev = ' ';
    for c in message.chars() {
        let c = match c {
            '0'..='9' => '#',
            '"' => continue,
            c if c.is_whitespace() => ' ',
            c => c,
        };
        if (c == '#' || c == ' ') && prev == c {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_MESSAGE {
            break;
        }
        out.push(c);
        prev = c;
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const T0: u64 = 1_700_000_000_000;
    const WINDOW: Duration = Duration::from_secs(600);

    fn at(s: &mut Storms, source: usize, line: &str, now: u64) -> Option<Storm> {
        s.line(source, &crate::ekos::parse(line), now)
    }

    fn qt_warn(msg: &str) -> String {
        format!("[2024-03-09T21:14:06.000 CET WARN ][  org.kde.kstars.indi] - {msg}")
    }

    fn indi_in_kstars(msg: &str) -> String {
        format!(
            "[2024-03-09T21:14:06.000 CET INFO ][           org.kde.kstars.indi] - ZWO CCD ASI294MC Pro :  \"[WARNING] {msg} \""
        )
    }

    fn driver_log(secs: &str, msg: &str) -> String {
        format!("WARNING\t{secs} sec\t: [ZWO CCD] {msg}")
    }

    /// Feeds `lines` one second apart from `t`; returns the storms.
    fn feed(s: &mut Storms, source: usize, lines: &[String], t: u64) -> Vec<Option<Storm>> {
        (lines.iter().enumerate())
            .map(|(i, l)| at(s, source, l, t + i as u64 * S))
            .collect()
    }

    #[test]
    fn the_third_repeat_opens_with_the_two_before_counted() {
        for make in [qt_warn as fn(&str) -> String, indi_in_kstars, |m: &str| {
            driver_log("1.000001", m)
        }] {
            let mut s = Storms::new(WINDOW);
            let lines: Vec<String> = (0..5).map(|_| make("Failed to read temperature")).collect();
            let got = feed(&mut s, 0, &lines, T0);
            assert_eq!(got[0], None);
            assert_eq!(got[1], None);
            let third = got[2].clone().expect("the third repeat is a storm");
            assert_eq!((third.earlier, third.first_ms), (2, T0));
            assert_eq!(third.event.severity, Severity::Warning);
            assert_eq!(third.event.mention, None);
            assert_eq!(third.event.alert_mention, None);
            assert!(
                third.event.title.starts_with("Repeated warning: "),
                "{}",
                third.event.title
            );
            assert!(third.event.title.ends_with("Failed to read temperature"));
            assert!(!third.event.title.contains("[WARNING]"));
            assert!(!third.event.title.contains("2024"), "no timestamp");
            assert!(third.event.rule.starts_with("warning-storm:"));
            for later in &got[3..] {
                let later = later.clone().expect("later repeats feed the incident");
                assert_eq!(later.earlier, 0);
                assert_eq!(later.event.rule, third.event.rule);
            }
        }
    }

    #[test]
    fn digits_are_one_warning_and_distinct_messages_are_separate() {
        let mut s = Storms::new(WINDOW);
        let a: Vec<String> = (0..3)
            .map(|i| qt_warn(&format!("\"Timeout after {} s, retry {i}\"", 3 + i * 7)))
            .collect();
        let b: Vec<String> = (0..3)
            .map(|i| driver_log(&format!("{}.{:06}", i * 11, i * 997), "Cooler power low"))
            .collect();
        // Interleaved: a, b, a, b, a, b.
        let mut got = Vec::new();
        for i in 0..3 {
            got.push(at(&mut s, 0, &a[i], T0 + 2 * i as u64 * S));
            got.push(at(&mut s, 0, &b[i], T0 + (2 * i as u64 + 1) * S));
        }
        assert!(got[..4].iter().all(Option::is_none), "{got:?}");
        let (sa, sb) = (got[4].clone().unwrap(), got[5].clone().unwrap());
        assert_ne!(
            sa.event.rule, sb.event.rule,
            "each warning its own incident"
        );
        assert_eq!(
            sa.event.title,
            "Repeated warning: Timeout after # s, retry #"
        );
        assert_eq!(sb.event.title, "Repeated warning: Cooler power low");
        // The same text from another source counts apart.
        assert_eq!(at(&mut s, 1, &a[0], T0 + 10 * S), None);
        // Stable across runs: the rule is part of saved incident keys.
        assert_eq!(
            sa.event.rule,
            event(&normalise("Timeout after 1 s, retry 2")).rule
        );
        assert_eq!(normalise("  a   1234  b\t\t5 \"x\" "), "a # b # x");
    }

    #[test]
    fn lines_below_warning_are_never_counted() {
        let mut s = Storms::new(WINDOW);
        for l in [
            "[2024-03-09T21:14:06.000 CET INFO ][ org.kde.kstars.ekos.capture] - \"Capturing\"",
            "DEBUG\t1.0 sec\t: [ZWO CCD] polling",
            "INFO\t1.0 sec\t: [ZWO CCD] Cooler on",
            "a script line",
            "",
        ] {
            for i in 0..10 {
                assert_eq!(at(&mut s, 0, l, T0 + i * S), None, "{l}");
            }
        }
        assert_eq!(s.tracked(), 0);
    }

    /// Error lines and worse are events unless a rule of severity `none`
    /// made them not: a storm of them is left to the rules.
    #[test]
    fn lines_above_warning_are_left_to_their_rules() {
        let mut s = Storms::new(WINDOW);
        for l in [
            "[2024-03-09T21:14:06.000 CET CRIT ][ org.kde.kstars] - \"bad\"",
            "ERROR\t1.0 sec\t: [ZWO CCD] Exposure failed",
            "[2024-03-09T21:14:06.000 CET INFO ][ org.kde.kstars.indi] - ZWO CCD :  \"[ERROR] x\"",
        ] {
            assert!(
                feed(&mut s, 0, &vec![l.to_string(); 5], T0)
                    .iter()
                    .all(Option::is_none)
            );
        }
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn a_gap_longer_than_the_window_starts_the_count_again() {
        let mut s = Storms::new(WINDOW);
        let l = qt_warn("\"Dust cap is not parked.\"");
        let w = WINDOW.as_millis() as u64;
        assert_eq!(at(&mut s, 0, &l, T0), None);
        assert_eq!(
            at(&mut s, 0, &l, T0 + w),
            None,
            "exactly the window: still one"
        );
        // A gap of one window and a millisecond: the count starts again.
        let t = T0 + 2 * w + 1;
        assert_eq!(at(&mut s, 0, &l, t), None);
        assert_eq!(at(&mut s, 0, &l, t + S), None);
        let st = at(&mut s, 0, &l, t + 2 * S).expect("third of the new run");
        assert_eq!((st.earlier, st.first_ms), (2, t));
        // Repeats spaced just inside the window go on feeding it.
        let mut when = t + 2 * S;
        for _ in 0..5 {
            when += w;
            assert_eq!(at(&mut s, 0, &l, when).map(|s| s.earlier), Some(0));
        }
    }

    /// Seeded random warnings, 10k per seed, mostly all different: memory
    /// stays bounded, and the storms found are those of an exact oracle
    /// (unbounded counts, which knows a warning is forgotten once
    /// [`MAX_TRACKED`] other warnings came after its last repeat).
    #[test]
    fn memory_is_bounded_and_storms_match_an_exact_oracle() {
        let w = WINDOW.as_millis() as u64;
        let mut forgotten = 0;
        let mut storms = 0;
        for seed in 1..=6u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            // How often one of the recurring warnings comes: often (a
            // storm), or rarely enough that the noise pushes it out.
            let every = [4, 150, 400][seed as usize % 3];
            let mut s = Storms::new(WINDOW);
            // Recurring warning -> (count, last time, index in `order`).
            let mut oracle: HashMap<String, (u64, u64, usize)> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut t = T0;
            for i in 0..10_000 {
                t += next(400);
                let recurring = next(every) == 0;
                let msg = if recurring {
                    format!("recurring {}", ["a", "b", "c"][next(3) as usize])
                } else {
                    let w: String = (0..12).map(|_| (b'a' + next(26) as u8) as char).collect();
                    format!("noise {w} {}", "x".repeat(next(2000) as usize))
                };
                let line = qt_warn(&format!("\"{msg}\" id {}", next(1 << 40)));
                let got = at(&mut s, 0, &line, t);
                assert!(s.tracked() <= MAX_TRACKED, "seed {seed}");
                let key = normalise(crate::ekos::parse(&line).message);
                assert!(key.len() <= MAX_MESSAGE);
                if recurring {
                    let e = oracle.entry(key.clone()).or_insert((0, t, usize::MAX));
                    let others = match order.get(e.2..) {
                        Some(after) => (after.iter())
                            .filter(|k| **k != key)
                            .collect::<std::collections::HashSet<_>>()
                            .len(),
                        None => usize::MAX,
                    };
                    if e.0 > 0 && others >= MAX_TRACKED {
                        forgotten += 1;
                        e.0 = 0;
                    }
                    if t - e.1 > w {
                        e.0 = 0;
                    }
                    e.0 += 1;
                    e.1 = t;
                    e.2 = order.len();
                    let want = (e.0 >= THRESHOLD).then_some(if e.0 == THRESHOLD { 2 } else { 0 });
                    assert_eq!(
                        got.as_ref().map(|s| s.earlier),
                        want,
                        "seed {seed} line {i}: {key}"
                    );
                    storms += got.is_some() as u32;
                } else {
                    assert_eq!(got, None, "noise never repeats");
                }
                order.push(key);
                if order.len() > 4 * MAX_TRACKED {
                    // Keep the oracle's bookkeeping small: what is cut is
                    // hundreds of distinct warnings back, forgotten anyway.
                    let cut = order.len() - 2 * MAX_TRACKED;
                    order.drain(..cut);
                    for e in oracle.values_mut() {
                        e.2 = e.2.checked_sub(cut).unwrap_or(usize::MAX);
                    }
                }
            }
        }
        assert!(forgotten > 20 && storms > 1000, "{forgotten} {storms}");
    }
}
