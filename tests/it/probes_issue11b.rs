//! Probes of issue 11 from outside, round 2: the independent checker's
//! scenario with its likely variations (real-time pacing, default batching
//! and rate limit, storms spread over seconds), the night's boundaries by
//! the clock, forum nights, short incident windows, the alerts webhook in a
//! storm, `[[expect]]` corner cases, a hanging heartbeat monitor, a reload
//! with a changed configuration and a 100k-line burst. Each test asserts
//! what the issue (or README) promises; a failing one is a defect report
//! with its reproduction.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::daemon::{Env, Tally, append, loss_and_dups, tokens, wait_until};
use crate::support::ekos_lines::{capture, ekos, guide, sched};
use crate::support::fake_discord::{
    FakeDiscord, Received, delivered, embed_field, is_incident, lines_and_files, posts, title,
    titled,
};

const LONG: Duration = Duration::from_secs(30);

fn incidents(fake: &FakeDiscord) -> Vec<Received> {
    posts(fake).into_iter().filter(is_incident).collect()
}

fn rule_of(m: &Received) -> String {
    m.embeds
        .first()
        .map(|e| e["footer"]["text"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn titles(fake: &FakeDiscord) -> Vec<String> {
    posts(fake).iter().map(title).collect()
}

/// The message as it is now (after its edits).
fn now_of(fake: &FakeDiscord, m: &Received) -> Received {
    fake.message(&m.message_id).unwrap()
}

fn shows_count(m: &Received, n: u64) -> bool {
    let e = m.embeds[0].to_string();
    e.contains(&format!("{n} times")) || e.contains(&format!("(×{n})"))
}

fn cards(fake: &FakeDiscord) -> Vec<Received> {
    titled(fake, "Night of ")
}

fn is_summary(m: &Received) -> bool {
    title(m).starts_with("Night of ") && title(m).ends_with("— summary")
}

fn wait_delivered(fake: &FakeDiscord, marker: &[String]) -> bool {
    wait_until(LONG, || {
        loss_and_dups(marker, &delivered(&fake.messages()))
            .0
            .is_empty()
    })
}

fn night_file() -> Vec<String> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/night-2024-03-09.txt"
    ))
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

/// A tiny seeded generator for pacing (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sleeps without a fixed sleep: waits for a condition that never holds.
fn pace(d: Duration) {
    let t = Instant::now();
    wait_until(d, || t.elapsed() >= d);
}

fn local_hh_mm(ahead_min: u32) -> String {
    let out = std::process::Command::new("date")
        .args(["-d", &format!("+{ahead_min} minutes"), "+%H:%M"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn vm_rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------
// The checker's night, paced as a person's script would write it.
// ---------------------------------------------------------------------

/// The night of `tests/data`, one line at a time with 0.2–0.6 s gaps,
/// default batching and rate limit (only the webhook and paths set),
/// `SILENCE_AFTER = 4`, a stop of 9 s in mid-exposure, a storm of 30 plain
/// INDI warnings spread over 6 s, a driver crash before the stderr EOF,
/// and the clean park. Exactly one silence alert and one resumption; the
/// storm is one incident whose final state shows 30; the crash is one
/// incident with the lines before it attached; one card whose final state
/// counts the frames per filter; no plain line delivered twice.
#[test]
fn the_checkers_night_paced_in_real_time_with_defaults() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("BATCH_SIZE")
        .unset("BATCH_TIMEOUT")
        .unset("RATE_LIMIT_DELAY")
        .set("SILENCE_AFTER", "4");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let night = night_file();
    let plain = tokens("paced", 0..night.len());
    let warn = |i: usize| {
        ekos(
            "org.kde.kstars.indi",
            &format!(
                "ZWO CCD ASI294MC Pro :  \"[WARNING] Temperature read timed out after {} ms \"",
                100 + i
            ),
        )
    };
    let crash = "[2024-03-09T22:35:02.000 CET INFO ][            org.kde.kstars.indi] - INDI driver  \"indi_asi_ccd\"  crashed!";
    let mut stopped = false;
    for (i, l) in night.iter().enumerate() {
        append(&file, &[plain[i].clone()]);
        if l.contains("stderr EOF") {
            append(&file, &[crash.to_string()]);
        }
        append(&file, std::slice::from_ref(l));
        if l.contains("Lost track of the guide star") {
            for k in 0..30 {
                append(&file, &[warn(k)]);
                pace(Duration::from_millis(200));
            }
        }
        if l.contains("Capturing 300.000-second L image") && i > 25 && !stopped {
            stopped = true;
            // The stop: 9 s, more than twice SILENCE_AFTER.
            pace(Duration::from_secs(9));
        } else {
            pace(Duration::from_millis(200 + rng.below(400)));
        }
    }
    assert!(stopped);
    assert!(
        wait_until(Duration::from_secs(60), || posts(&fake)
            .iter()
            .any(|m| is_summary(&now_of(&fake, m)))),
        "no summary: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert!(wait_delivered(&fake, &plain), "{}", d.stderr());
    // The storm's final count: edits are at most every 30 s.
    let storm: Vec<Received> = incidents(&fake)
        .into_iter()
        .filter(|m| title(m).contains("Temperature read timed out"))
        .collect();
    assert_eq!(storm.len(), 1, "one storm incident: {:?}", titles(&fake));
    assert!(
        wait_until(Duration::from_secs(70), || shows_count(
            &now_of(&fake, &storm[0]),
            30
        )),
        "the storm's message never shows 30: {}",
        now_of(&fake, &storm[0]).embeds[0]
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");

    assert_eq!(
        titled(&fake, "Ekos silent for").len(),
        1,
        "{:?}",
        titles(&fake)
    );
    assert_eq!(
        titled(&fake, "Ekos is writing again").len(),
        1,
        "{:?}",
        titles(&fake)
    );
    let (lost, dups) = loss_and_dups(&plain, &delivered(&fake.messages()));
    assert!(lost.is_empty() && dups == 0, "lost {lost:?}, dups {dups}");
    let crashes: Vec<Received> = incidents(&fake)
        .into_iter()
        .filter(|m| rule_of(m).contains("indi-driver-crashed"))
        .collect();
    assert_eq!(crashes.len(), 1, "{:?}", titles(&fake));
    assert_eq!(crashes[0].attachments.len(), 1, "{:?}", crashes[0].embeds);
    let ctx = String::from_utf8_lossy(&crashes[0].attachments[0].1).to_string();
    let before = plain[night.iter().position(|l| l.contains("stderr EOF")).unwrap()].clone();
    assert!(ctx.contains(&before), "{ctx}");
    assert!(ctx.lines().last().unwrap().contains("crashed!"), "{ctx}");
    let c = cards(&fake);
    assert_eq!(c.len(), 1, "one card: {:?}", titles(&fake));
    let card = now_of(&fake, &c[0]);
    assert!(is_summary(&card), "{}", title(&card));
    let e = &card.embeds[0];
    assert_eq!(
        embed_field(e, "M31"),
        "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
    );
    assert_eq!(embed_field(e, "NGC 7000"), "R: 3 × 120 s = 6 min");
    // Every message the daemon wrote itself once: no title twice except
    // plain line batches (which carry no embed title of their own kind).
    let mut seen = std::collections::HashMap::new();
    for m in posts(&fake).iter().filter(|m| {
        let t = title(m);
        t.starts_with("Ekos ") || t.starts_with("Night of ") || is_incident(m)
    }) {
        *seen.entry(title(m)).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "posted twice: {twice:?}");
}

/// Fifty repeats of one plain warning written in one go: one incident
/// whose final state shows 50.
#[test]
fn fifty_plain_warnings_at_once_are_one_incident_ending_at_fifty() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut lines = vec![
        sched("Executing Job  \"M31\""),
        capture("Capturing 300.000-second L image..."),
    ];
    lines.extend(std::iter::repeat_n(
        "[2024-03-09T21:14:06.000 CET WARN ][     org.kde.kstars.ekos.guide] - \"Guide star SNR dropped below threshold\"".to_string(),
        50,
    ));
    let marker = tokens("fifty", 0..1);
    lines.extend(marker.clone());
    append(&file, &lines);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    assert!(wait_until(LONG, || !incidents(&fake).is_empty()));
    let inc = incidents(&fake);
    assert_eq!(inc.len(), 1, "{:?}", titles(&fake));
    assert!(
        wait_until(Duration::from_secs(70), || shows_count(
            &now_of(&fake, &inc[0]),
            50
        )),
        "{}",
        now_of(&fake, &inc[0]).embeds[0]
    );
    drop(d);
}

// ---------------------------------------------------------------------
// Incidents: windows, two storms, the alerts channel.
// ---------------------------------------------------------------------

/// Two rules storming at once, interleaved: two incidents, each ending at
/// its own count.
#[test]
fn two_rules_storming_at_once_are_two_incidents_with_their_counts() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut lines = vec![
        sched("Executing Job  \"M31\""),
        capture("Capturing 300.000-second L image..."),
    ];
    for _ in 0..10 {
        lines.push(capture(
            "Capture failed. Check INDI Control Panel for details.",
        ));
        lines.push(guide("Dithering failed."));
    }
    let marker = tokens("two", 0..1);
    lines.extend(marker.clone());
    append(&file, &lines);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    assert!(wait_until(LONG, || incidents(&fake).len() >= 2));
    let inc = incidents(&fake);
    assert_eq!(inc.len(), 2, "{:?}", titles(&fake));
    for m in &inc {
        assert!(
            wait_until(Duration::from_secs(70), || shows_count(
                &now_of(&fake, m),
                10
            )),
            "{}",
            now_of(&fake, m).embeds[0]
        );
    }
    drop(d);
}

/// `INCIDENT_WINDOW = 2`: four repeats 0.5 s apart, 5 s of quiet, four
/// more: two incidents of four each (the quiet is longer than the window).
#[test]
fn repeats_straddling_a_short_window_are_two_incidents() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO").set("INCIDENT_WINDOW", "2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 300.000-second L image..."),
        ],
    );
    let fail = || capture("Capture failed. Check INDI Control Panel for details.");
    for _ in 0..4 {
        append(&file, &[fail()]);
        pace(Duration::from_millis(500));
    }
    pace(Duration::from_secs(5));
    for _ in 0..4 {
        append(&file, &[fail()]);
        pace(Duration::from_millis(500));
    }
    let marker = tokens("straddle", 0..1);
    append(&file, &marker);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    assert!(wait_until(LONG, || incidents(&fake).len() >= 2));
    let inc = incidents(&fake);
    assert_eq!(inc.len(), 2, "{:?}", titles(&fake));
    for m in &inc {
        assert!(
            wait_until(Duration::from_secs(70), || shows_count(
                &now_of(&fake, m),
                4
            )),
            "{}",
            now_of(&fake, m).embeds[0]
        );
    }
    drop(d);
}

/// The alerts webhook during a storm of one error (20 failed captures in a
/// few seconds): the issue's point is "not to be woken nine times for one
/// problem"; the alerts channel must not get 20 pinging copies.
#[test]
fn a_storm_does_not_flood_the_alerts_channel() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO").set(
        "ALERTS_WEBHOOK_URL",
        &fake.webhook_url_for("999", "alerts-tok"),
    );
    // The README's way to ping on a built-in rule.
    env.write_config(
        "[[rule]]\nname = \"capture-failed\"\nseverity = \"error\"\nmention = \"<@&123456789012345678>\"\n",
    );
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 300.000-second L image..."),
        ],
    );
    for _ in 0..20 {
        append(
            &file,
            &[capture(
                "Capture failed. Check INDI Control Panel for details.",
            )],
        );
        pace(Duration::from_millis(150));
    }
    let marker = tokens("alerts", 0..1);
    append(&file, &marker);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    assert!(wait_until(LONG, || posts(&fake)
        .iter()
        .any(|m| m.webhook_id == "999")));
    // Let the alerts lane drain: all 20 copies, or 20 s.
    wait_until(Duration::from_secs(20), || {
        posts(&fake)
            .iter()
            .filter(|m| m.webhook_id == "999")
            .count()
            >= 20
    });
    let alerts: Vec<Received> = posts(&fake)
        .into_iter()
        .filter(|m| m.webhook_id == "999")
        .collect();
    let pinging = alerts
        .iter()
        .filter(|m| m.content.contains("<@&123456789012345678>"))
        .count();
    let main_pings = posts(&fake)
        .iter()
        .filter(|m| m.webhook_id != "999" && m.content.contains("<@&123456789012345678>"))
        .count();
    assert_eq!(main_pings, 1, "the incident pings once on the main channel");
    assert!(
        alerts.len() <= 3 && pinging <= 1,
        "{} messages on the alerts channel for one storm ({} with a mention): {:?}",
        alerts.len(),
        pinging,
        alerts.iter().map(title).collect::<Vec<_>>()
    );
    drop(d);
}

// ---------------------------------------------------------------------
// The night by the clock, and forum nights.
// ---------------------------------------------------------------------

/// `NIGHT_END` two minutes ahead in local time (no TZ: the machine's own),
/// a session still running: at that minute the card becomes its summary,
/// "night_end".
#[test]
fn night_end_ends_a_running_card() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("TZ")
        .set("MIN_LEVEL", "INFO")
        .set("SILENCE_AFTER", "0");
    let end = local_hh_mm(2);
    env.set("NIGHT_END", &end);
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
            capture("Capturing 300.000-second L image..."),
            capture("Received image 1 out of 40."),
            capture("Capturing 300.000-second L image..."),
        ],
    );
    assert!(
        wait_until(LONG, || !cards(&fake).is_empty()),
        "no card: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(200), || cards(&fake)
            .iter()
            .any(|m| is_summary(&now_of(&fake, m)))),
        "night_end {end} did not end the card: {:?}\n{}",
        cards(&fake)
            .iter()
            .map(|m| now_of(&fake, m).embeds[0].to_string())
            .collect::<Vec<_>>(),
        d.stderr()
    );
    let card = now_of(&fake, &cards(&fake)[0]);
    let desc = card.embeds[0]["description"].as_str().unwrap_or("");
    assert!(desc.contains("night_end"), "{desc}");
    assert!(desc.contains("1 frame"), "{desc}");
    // Work after night_end: no new card.
    append(
        &file,
        &[
            capture("Received image 2 out of 40."),
            capture("Capturing 300.000-second L image..."),
        ],
    );
    let marker = tokens("afterend", 0..1);
    append(&file, &marker);
    assert!(wait_delivered(&fake, &marker));
    assert!(!wait_until(Duration::from_secs(3), || cards(&fake).len() > 1));
    drop(d);
}

/// A session running across `NIGHT_START` (one minute ahead, local time):
/// the night before ends, its card becomes the summary, and the work
/// after the boundary gets the new night's card.
#[test]
fn a_session_across_night_start_closes_one_card_and_opens_the_next() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("TZ")
        .set("MIN_LEVEL", "INFO")
        .set("SILENCE_AFTER", "0");
    let start = local_hh_mm(1);
    env.set("NIGHT_START", &start);
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
            capture("Capturing 2.000-second L image..."),
            capture("Received image 1 out of 400."),
        ],
    );
    assert!(wait_until(LONG, || !cards(&fake).is_empty()));
    let t = Instant::now();
    let mut n = 2;
    // Frames every 2 s until the boundary has passed and a new card opened
    // (at most 150 s).
    while t.elapsed() < Duration::from_secs(150) && cards(&fake).len() < 2 {
        append(
            &file,
            &[
                capture("Capturing 2.000-second L image..."),
                capture(&format!("Received image {n} out of 400.")),
            ],
        );
        n += 1;
        pace(Duration::from_secs(2));
    }
    let c = cards(&fake);
    assert_eq!(
        c.len(),
        2,
        "night_start {start}: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert!(
        wait_until(LONG, || is_summary(&now_of(&fake, &c[0]))),
        "the night before was not closed: {}",
        now_of(&fake, &c[0]).embeds[0]
    );
    assert_ne!(title(&c[0]), title(&c[1]), "two nights, two names");
    drop(d);
}

/// `forum = true` with a whole short night (card, a storm, a crash, a
/// silence, the park): one thread, and every message and edit in it.
#[test]
fn a_forum_night_with_incidents_and_a_silence_is_one_thread() {
    let fake = FakeDiscord::start();
    fake.set_forum(FakeDiscord::WEBHOOK_ID, true);
    let mut env = Env::new(&fake.webhook_url());
    env.set("FORUM", "true")
        .set("TZ", "UTC")
        .set("NIGHT_START", "00:00")
        .set("MIN_LEVEL", "INFO")
        .set("SILENCE_AFTER", "2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut lines = vec![
        sched("\"Scheduler started.\""),
        sched("Executing Job  \"M31\""),
        sched("\"Job 'M31' capture is in progress...\""),
        capture("Capturing 1.000-second L image..."),
        capture("Received image 1 out of 3."),
    ];
    lines.extend(std::iter::repeat_n(guide("Dithering failed."), 6));
    lines.push(ekos(
        "org.kde.kstars.indi",
        "INDI driver  \"indi_asi_ccd\"  crashed!",
    ));
    lines.push(capture("Capturing 1.000-second L image..."));
    append(&file, &lines);
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    let end = vec![
        capture("Received image 2 out of 3."),
        sched("\"Job 'M31' is complete.\""),
        sched("\"Starting shutdown process...\""),
        sched("\"Mount parked.\""),
        sched("\"Shutdown complete.\""),
    ];
    append(&file, &end);
    assert!(
        wait_until(LONG, || cards(&fake)
            .iter()
            .any(|m| is_summary(&now_of(&fake, m)))),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert!(wait_until(LONG, || !titled(&fake, "Ekos is writing again").is_empty()));
    let threads = fake.threads();
    assert_eq!(threads.len(), 1, "{threads:?}");
    let thread = &threads[0].0;
    let stray: Vec<String> = fake
        .messages()
        .iter()
        .chain(fake.edits().iter())
        .filter(|m| &m.channel_id != thread)
        .map(title)
        .collect();
    assert!(stray.is_empty(), "outside the night's thread: {stray:?}");
    assert_eq!(incidents(&fake).len(), 2, "{:?}", titles(&fake));
    assert_eq!(cards(&fake).len(), 1, "{:?}", titles(&fake));
    drop(d);
}

// ---------------------------------------------------------------------
// [[expect]] corner cases.
// ---------------------------------------------------------------------

/// `HH:MM:SS` in UTC, `ahead` from now.
fn utc_in(ahead: Duration) -> String {
    let secs = (std::time::SystemTime::now() + ahead)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = secs % 86_400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

fn scripts_env(fake: &FakeDiscord, expects: &str) -> (Env, std::path::PathBuf) {
    let mut env = Env::new(&fake.webhook_url());
    env.set("TZ", "UTC0");
    let scripts = env.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    env.write_config(&format!(
        "[[source]]\nname = \"scripts\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n\n{expects}",
        scripts.display(),
    ));
    (env, scripts)
}

/// Two tables on one file, one met and one not: one alert, for the one
/// not met.
#[test]
fn two_expects_on_one_file_alert_only_for_the_one_not_met() {
    let fake = FakeDiscord::start();
    let by = utc_in(Duration::from_secs(8));
    let (env, scripts) = scripts_env(
        &fake,
        &format!(
            "[[expect]]\nname = \"alpha\"\nfile = \"backup.log\"\npattern = \"alpha ok\"\nby = \"{by}\"\n\n\
             [[expect]]\nname = \"beta\"\nfile = \"backup.log\"\npattern = \"beta ok\"\nby = \"{by}\"\n"
        ),
    );
    append(&scripts.join("backup.log"), &["backup started".to_string()]);
    let d = env.start(&[]);
    append(&scripts.join("backup.log"), &["alpha ok".to_string()]);
    assert!(
        wait_until(Duration::from_secs(40), || !titled(
            &fake,
            "Expected line missing"
        )
        .is_empty()),
        "no alert by {by}: {}",
        d.stderr()
    );
    let marker = tokens("twoexp", 0..1);
    pace(Duration::from_secs(3));
    append(&scripts.join("backup.log"), &marker);
    assert!(wait_delivered(&fake, &marker));
    let alerts = titled(&fake, "Expected line missing");
    assert_eq!(
        alerts.len(),
        1,
        "{:?}",
        alerts
            .iter()
            .map(|m| m.embeds[0]["description"].to_string())
            .collect::<Vec<_>>()
    );
    let desc = alerts[0].embeds[0]["description"].as_str().unwrap();
    assert!(
        desc.starts_with("beta:") || desc.contains("beta ok"),
        "{desc}"
    );
    drop(d);
}

/// The matching line written in two appends (the script flushes half a
/// line, then the rest), both before the deadline: no alert.
#[test]
fn an_expected_line_written_in_two_pieces_counts() {
    let fake = FakeDiscord::start();
    let by = utc_in(Duration::from_secs(8));
    let (env, scripts) = scripts_env(
        &fake,
        &format!(
            "[[expect]]\nfile = \"backup.log\"\npattern = \"backup completed\"\nby = \"{by}\"\n"
        ),
    );
    let log = scripts.join("backup.log");
    append(&log, &["backup started".to_string()]);
    let d = env.start(&[]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"backup comp").unwrap();
    f.flush().unwrap();
    pace(Duration::from_millis(1500));
    f.write_all(b"leted\n").unwrap();
    f.flush().unwrap();
    assert!(
        fake.wait_for(LONG, |m| delivered(m)
            .iter()
            .any(|l| l.contains("backup completed"))),
        "{}",
        d.stderr()
    );
    // Past the deadline and its judging.
    assert!(
        !wait_until(Duration::from_secs(20), || !titled(
            &fake,
            "Expected line missing"
        )
        .is_empty()),
        "an alert although 'backup completed' was written by {by}: {:?}",
        titles(&fake)
    );
    drop(d);
}

/// The file rotated (renamed, a new one created) before the deadline, the
/// matching line in the new file: no alert.
#[test]
fn an_expected_line_in_the_file_recreated_after_a_rotation_counts() {
    let fake = FakeDiscord::start();
    let by = utc_in(Duration::from_secs(10));
    let (env, scripts) = scripts_env(
        &fake,
        &format!("[[expect]]\nfile = \"backup.log\"\npattern = \"completed\"\nby = \"{by}\"\n"),
    );
    let log = scripts.join("backup.log");
    append(&log, &["backup started".to_string()]);
    let d = env.start(&[]);
    std::fs::rename(&log, scripts.join("backup.log.1")).unwrap();
    append(&log, &["backup completed".to_string()]);
    assert!(
        fake.wait_for(LONG, |m| delivered(m)
            .iter()
            .any(|l| l.contains("backup completed"))),
        "{}",
        d.stderr()
    );
    assert!(
        !wait_until(Duration::from_secs(20), || !titled(
            &fake,
            "Expected line missing"
        )
        .is_empty()),
        "an alert although 'completed' was written by {by}: {:?}",
        titles(&fake)
    );
    drop(d);
}

// ---------------------------------------------------------------------
// Heartbeat: a monitor that hangs.
// ---------------------------------------------------------------------

/// A monitor that accepts and never answers (held connections): lines are
/// still delivered promptly.
#[test]
fn a_hanging_heartbeat_monitor_does_not_delay_delivery() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set(
        "HEARTBEAT_URL",
        &format!("http://127.0.0.1:{port}/ping/hang-secret"),
    )
    .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    assert!(wait_until(LONG, || !held.lock().unwrap().is_empty()));
    for (i, t) in tokens("hang", 0..6).into_iter().enumerate() {
        let sent = Instant::now();
        append(&file, std::slice::from_ref(&t));
        assert!(
            wait_until(Duration::from_secs(4), || delivered(&fake.messages())
                .iter()
                .any(|l| l.contains(&t))),
            "line {i} not delivered within 4 s while the monitor hangs: {}",
            d.stderr()
        );
        assert!(sent.elapsed() < Duration::from_secs(4));
        pace(Duration::from_millis(700));
    }
    let (status, elapsed, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(elapsed < Duration::from_secs(10), "stop took {elapsed:?}");
    assert!(!log.contains("hang-secret"), "{log}");
}

// ---------------------------------------------------------------------
// Reload with a changed configuration in mid-night.
// ---------------------------------------------------------------------

/// `silence_after` 60 → 2 and an `[[expect]]` added by SIGHUP during a
/// night: the card goes on (one card, its frames from before and after),
/// the new silence_after applies (one alert), nothing is repeated.
#[test]
fn a_reload_with_a_changed_config_goes_on_with_the_same_card() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    env.write_config("silence_after = 60\n");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
            capture("Capturing 1.000-second L image..."),
            capture("Received image 1 out of 3."),
            capture("Capturing 1.000-second L image..."),
        ],
    );
    assert!(wait_until(LONG, || !cards(&fake).is_empty()));
    let cfg = env.config.clone().unwrap();
    std::fs::write(
        &cfg,
        "silence_after = 2\n\n[[expect]]\nfile = \"nothing.log\"\npattern = \"x\"\nby = \"04:30\"\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || d.stderr().contains("reload")),
        "{}",
        d.stderr()
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()),
        "the new silence_after = 2 did not apply: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    append(
        &file,
        &[
            capture("Received image 2 out of 3."),
            capture("Capturing 1.000-second L image..."),
            capture("Received image 3 out of 3."),
            sched("\"Job 'M31' is complete.\""),
            sched("\"Starting shutdown process...\""),
            sched("\"Mount parked.\""),
            sched("\"Shutdown complete.\""),
        ],
    );
    assert!(
        wait_until(LONG, || cards(&fake)
            .iter()
            .any(|m| is_summary(&now_of(&fake, m)))),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert_eq!(cards(&fake).len(), 1, "{:?}", titles(&fake));
    let card = now_of(&fake, &cards(&fake)[0]);
    assert_eq!(embed_field(&card.embeds[0], "M31"), "L: 3 × 1 s = 3 s");
    assert_eq!(titled(&fake, "Ekos silent for").len(), 1);
    assert!(wait_until(LONG, || !titled(&fake, "Ekos is writing again").is_empty()));
    assert_eq!(titled(&fake, "Ekos is writing again").len(), 1);
    drop(d);
}

// ---------------------------------------------------------------------
// A 100k-line burst in mid-night.
// ---------------------------------------------------------------------

/// 100,000 lines in one burst (verbose driver logging) with frames inside,
/// during a session with `SILENCE_AFTER = 5`, then the log goes on at one
/// line a second: no silence alert (the log never stopped), the daemon
/// stays up, its memory stays well under 100 MB, the lines after the burst
/// are delivered.
#[test]
fn a_hundred_thousand_line_burst_is_no_silence_and_memory_stays_bounded() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("BATCH_SIZE")
        .unset("BATCH_TIMEOUT")
        .unset("RATE_LIMIT_DELAY")
        .set("SILENCE_AFTER", "5");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
            capture("Capturing 1.000-second L image..."),
        ],
    );
    assert!(wait_until(LONG, || !cards(&fake).is_empty()));
    let mut burst = String::with_capacity(12 << 20);
    for i in 0..100_000 {
        if i % 10_000 == 5_000 {
            burst.push_str(&capture("Received image 1 out of 10."));
            burst.push('\n');
            burst.push_str(&capture("Capturing 1.000-second L image..."));
            burst.push('\n');
        }
        burst.push_str(&format!(
            "[2024-03-09T21:14:06.000 CET DEBG ][            org.kde.kstars.indi] - ZWO CCD ASI294MC Pro :  \"[DEBUG] burst line {i:06} polling temperature\"\n"
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(burst.as_bytes()).unwrap();
    drop(f);
    let mut peak = 0;
    let after = tokens("afterburst", 0..40);
    for t in &after {
        append(&file, std::slice::from_ref(t));
        peak = peak.max(vm_rss_kb(d.pid()));
        pace(Duration::from_secs(1));
    }
    // The night ends here: the wait for delivery below may outlast
    // SILENCE_AFTER on a loaded machine, and a log that stops in
    // mid-exposure is then rightly a silence.
    append(&file, &[sched("\"Mount parked.\"")]);
    // Lines in code blocks and in `.log` attachments (a flood goes as one).
    let (lost, _) =
        Tally::new(&fake, lines_and_files).wait_all_with(&after, Duration::from_secs(120), || {
            peak = peak.max(vm_rss_kb(d.pid()))
        });
    let missing = lost.len();
    assert!(
        missing == 0,
        "lines after the burst not delivered ({missing} of {} missing; {} messages, {} requests, {} 429s, VmRSS peak {peak} kB): {}",
        after.len(),
        fake.messages().len(),
        fake.requests(),
        fake.count_429(),
        d.stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        titled(&fake, "Ekos silent for").is_empty(),
        "a false silence during a burst: {:?}",
        titles(&fake)
    );
    assert!(peak > 0 && peak < 100 * 1024, "VmRSS peak {peak} kB");
    let (status, _, err) = d.stop();
    assert!(
        status.success(),
        "{}",
        err.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
