//! Ekos log lines in KStars' modern format, for the tests that feed the
//! night watch (one definition for tests/nightwatch.rs and tests/forum.rs).
#![allow(dead_code)]

pub fn ekos(cat: &str, msg: &str) -> String {
    format!("[2024-03-09T21:14:06.000 CET INFO ][{cat:>30}] - {msg}")
}

pub fn sched(msg: &str) -> String {
    ekos("org.kde.kstars.ekos.scheduler", msg)
}

pub fn capture(msg: &str) -> String {
    ekos("org.kde.kstars.ekos.capture", &format!("\"{msg}\""))
}

pub fn guide(msg: &str) -> String {
    ekos("org.kde.kstars.ekos.guide", &format!("\"{msg}\""))
}
