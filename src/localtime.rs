//! Local wall-clock time, as plain values: a calendar day and the seconds
//! since its midnight.
//!
//! `[[expect]]` deadlines (`by = "04:30"`) and night boundaries (`night_start
//! = "12:00"`) are times on the wall clock of the machine, which jumps at
//! daylight-saving changes. Code that decides against them takes a [`Local`]
//! value, never the clock, so it is tested in simulated time, jumps
//! included; [`Local::now`] asks libc's `localtime_r` (which reads the
//! system's time zone) and is only called by the threads. Days are counted
//! in the proleptic Gregorian calendar from 1970-01-01 with Howard
//! Hinnant's `days_from_civil` algorithms, so no date crate is needed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is not a time of day as \"HH:MM\" (00:00 to 23:59)")]
    TimeOfDay(String),
    #[error("{0:?} is not a day of the week (mon, tue, wed, thu, fri, sat, sun)")]
    Weekday(String),
}

/// Seconds in a day.
pub const DAY: u32 = 86_400;

/// A moment on the local wall clock. Ordered by day, then time of day.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Local {
    /// Days since 1970-01-01 in the local calendar.
    pub day: i64,
    /// Seconds since local midnight, `0..DAY`.
    pub secs: u32,
}

impl Local {
    /// The wall clock now, in the system's time zone.
    pub fn now() -> Local {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Local::from_unix(t)
    }

    /// A Unix time on the local wall clock (UTC if libc cannot tell).
    pub fn from_unix(t: i64) -> Local {
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let tt: libc::time_t = t as libc::time_t;
        // localtime_r, unlike localtime, is thread-safe; tzset is implied
        // on glibc's first call.
        let ok = !unsafe { libc::localtime_r(&tt, &mut tm) }.is_null();
        if !ok {
            return Local {
                day: t.div_euclid(DAY as i64),
                secs: t.rem_euclid(DAY as i64) as u32,
            };
        }
        Local {
            day: days_from_civil(
                tm.tm_year as i64 + 1900,
                tm.tm_mon as u32 + 1,
                tm.tm_mday as u32,
            ),
            // A leap second (60) is folded into the last second.
            secs: ((tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec.min(59)) as u32).min(DAY - 1),
        }
    }

    /// A civil date and time (for tests and parsed log timestamps);
    /// `None` for an impossible one.
    pub fn ymd_hms(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> Option<Local> {
        if !(1..=12).contains(&m)
            || d == 0
            || d > days_in_month(y, m)
            || hh > 23
            || mm > 59
            || ss > 60
        {
            return None;
        }
        Some(Local {
            day: days_from_civil(y, m, d),
            secs: (hh * 3600 + mm * 60 + ss.min(59)).min(DAY - 1),
        })
    }

    /// The wall-clock time in a log line's timestamp, such as Ekos'
    /// `2023-06-16T22:01:45.885 CEST` (the zone is ignored: it is the
    /// rig's own) or `2023-06-16 22:01:45`.
    pub fn parse_timestamp(s: &str) -> Option<Local> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
            return None;
        }
        let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        Local::ymd_hms(
            n(0..4)? as i64,
            n(5..7)?,
            n(8..10)?,
            n(11..13)?,
            n(14..16)?,
            n(17..19)?,
        )
    }

    /// At time of day `t` on the same day.
    pub fn at(self, t: TimeOfDay) -> Local {
        Local {
            day: self.day,
            secs: t.0,
        }
    }

    /// `secs` seconds later on the wall clock (days carry over).
    pub fn plus(self, secs: i64) -> Local {
        let total = self.secs as i64 + secs;
        Local {
            day: self.day + total.div_euclid(DAY as i64),
            secs: total.rem_euclid(DAY as i64) as u32,
        }
    }

    /// Wall-clock seconds from `earlier` to `self` (negative if before).
    pub fn since(self, earlier: Local) -> i64 {
        (self.day - earlier.day) * DAY as i64 + self.secs as i64 - earlier.secs as i64
    }

    pub fn weekday(self) -> Weekday {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        Weekday::ALL[(self.day + 3).rem_euclid(7) as usize]
    }

    pub fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.day)
    }

    pub fn time_of_day(self) -> TimeOfDay {
        TimeOfDay(self.secs)
    }

    /// `2026-11-22`.
    pub fn date_string(self) -> String {
        let (y, m, d) = self.ymd();
        format!("{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Display for Local {
    /// `2026-11-22 04:30`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.date_string(), self.time_of_day())
    }
}

/// A time of day on the wall clock, in seconds since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(pub u32);

impl TimeOfDay {
    /// `"04:30"` (also `"4:30"` and `"04:30:15"`).
    pub fn parse(s: &str) -> Result<TimeOfDay, TimeError> {
        let bad = || TimeError::TimeOfDay(s.to_string());
        let parts: Vec<&str> = s.trim().split(':').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|p| p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
        let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
        if h > 23 || m > 59 || sec > 59 {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 3600 + m * 60 + sec))
    }
}

impl fmt::Display for TimeOfDay {
    /// `04:30`, or `04:30:15` when the seconds are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 / 60 % 60, self.0 % 60);
        if s == 0 {
            write!(f, "{h:02}:{m:02}")
        } else {
            write!(f, "{h:02}:{m:02}:{s:02}")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// `mon` or `monday`, any case.
    pub fn parse(s: &str) -> Result<Weekday, TimeError> {
        let l = s.trim().to_ascii_lowercase();
        const FULL: [&str; 7] = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        FULL.iter()
            .position(|f| l.len() >= 3 && (*f == l || (l.len() == 3 && f.starts_with(&l))))
            .map(|i| Weekday::ALL[i])
            .ok_or_else(|| TimeError::Weekday(s.to_string()))
    }

    pub fn as_str(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips_and_weekdays() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        let t = Local::ymd_hms(2026, 11, 29, 4, 30, 0).unwrap();
        assert_eq!(t.weekday(), Weekday::Sun);
        assert_eq!(t.to_string(), "2026-11-29 04:30");
        assert_eq!(
            Local::ymd_hms(2024, 2, 29, 0, 0, 0).unwrap().weekday(),
            Weekday::Thu
        );
        assert!(Local::ymd_hms(2023, 2, 29, 0, 0, 0).is_none());
        assert!(Local::ymd_hms(2023, 1, 1, 24, 0, 0).is_none());
    }

    #[test]
    fn arithmetic_carries_days() {
        let t = Local::ymd_hms(2026, 12, 31, 23, 0, 0).unwrap();
        assert_eq!(t.plus(7200).to_string(), "2027-01-01 01:00");
        assert_eq!(t.plus(-86_400 - 3600).to_string(), "2026-12-30 22:00");
        assert_eq!(t.plus(7200).since(t), 7200);
    }

    #[test]
    fn time_of_day_and_weekday_parsing() {
        assert_eq!(TimeOfDay::parse("04:30"), Ok(TimeOfDay(4 * 3600 + 1800)));
        assert_eq!(TimeOfDay::parse(" 4:30 "), Ok(TimeOfDay(4 * 3600 + 1800)));
        assert_eq!(
            TimeOfDay::parse("23:59:59").unwrap().to_string(),
            "23:59:59"
        );
        for bad in [
            "24:00", "4", "04:60", "04:30:", "a:b", "", "004:30", "-1:00",
        ] {
            assert!(TimeOfDay::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Weekday::parse("Mon"), Ok(Weekday::Mon));
        assert_eq!(Weekday::parse("sunday"), Ok(Weekday::Sun));
        for bad in ["mo", "mond", "x", ""] {
            assert!(Weekday::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_timestamps() {
        let t = Local::parse_timestamp("2023-06-16T22:01:45.885 CEST").unwrap();
        assert_eq!(t.to_string(), "2023-06-16 22:01:45");
        assert!(Local::parse_timestamp("12.345678").is_none());
        assert!(Local::parse_timestamp("2023-13-16T22:01:45").is_none());
    }

    #[test]
    fn from_unix_agrees_with_the_calendar_in_utc() {
        // The test process may run in any zone; the date must be within a
        // day of UTC's and the seconds consistent.
        let t = Local::from_unix(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert!((t.day - days_from_civil(2023, 11, 14)).abs() <= 1);
        assert!(t.secs < DAY);
    }
}
