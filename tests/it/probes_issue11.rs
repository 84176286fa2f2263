//! Probes of issue 11 from outside, as an independent checker would run
//! them: the real binary, environment-only configuration, the fake
//! Discord. Each test asserts what the issue (or README) promises; a
//! failing one is a defect report with its reproduction.

use std::time::{Duration, Instant};

use crate::support::daemon::{Env, append, loss_and_dups, notice_keys, tokens, wait_until};
use crate::support::ekos_lines::{capture, ekos, guide, sched};
use crate::support::fake_discord::{
    FakeDiscord, Fault, Mode, Received, delivered, embed_field, is_incident, title, titled,
};
use crate::support::pings::PingServer;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

/// Incident messages (not edits), any title.
fn all_incidents(fake: &FakeDiscord) -> Vec<Received> {
    fake.messages()
        .into_iter()
        .filter(|m| !m.edit && is_incident(m))
        .collect()
}

fn titles(fake: &FakeDiscord) -> Vec<String> {
    fake.messages()
        .iter()
        .map(|m| format!("{}{}", if m.edit { "edit: " } else { "" }, title(m)))
        .collect()
}

/// Each night card as it is now: a card is posted once and then edited
/// in place (its summary is an edit, `PATCH`, not a new message), so its
/// current body is its last edit's.
fn night_cards_now(fake: &FakeDiscord) -> Vec<Received> {
    fake.messages()
        .into_iter()
        .filter(|m| !m.edit && title(m).starts_with("Night of "))
        .filter_map(|m| fake.message(&m.message_id))
        .collect()
}

/// Waits until every token in `marker` was delivered as a plain line.
fn wait_delivered(fake: &FakeDiscord, marker: &[String]) -> bool {
    wait_until(LONG, || {
        loss_and_dups(marker, &delivered(&fake.messages()))
            .0
            .is_empty()
    })
}

fn replay(env: &Env, path: &std::path::Path) -> (bool, Vec<Value>, String) {
    let (status, out, err) = env.run_to_end(&["--replay", path.to_str().unwrap(), "--night-card"]);
    let cards = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    (status.success(), cards, err)
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

// ---------------------------------------------------------------------
// Incidents: a storm of "a warning" as an astronomer would pick one.
// ---------------------------------------------------------------------

/// Ekos with PHD2 (the most common guider) logs a star loss as
/// `PHD2: Star Lost. Trying to reacquire for 15s.` (kstars
/// ekos/guide/externalguide/phd2.cpp). A storm of them is a storm of one
/// warning: one incident, edited with its count.
#[test]
fn a_storm_of_phd2_star_losses_is_one_incident() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut lines = vec![
        sched("Executing Job  \"M31\""),
        capture("Capturing 300.000-second L image..."),
    ];
    for _ in 0..10 {
        lines.push(guide("PHD2: Star Lost. Trying to reacquire for 15s."));
    }
    let marker = tokens("phd2", 0..1);
    lines.extend(marker.clone());
    append(&file, &lines);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    let inc = all_incidents(&fake);
    assert_eq!(
        inc.len(),
        1,
        "one incident for ten PHD2 star losses: {:?}",
        titles(&fake)
    );
    drop(d);
}

/// The PHD2 star loss counts in the card's "star losses" (replay).
#[test]
fn replay_counts_a_phd2_star_loss() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let f = env.dir.path().join("phd2.txt");
    append(
        &f,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
            capture("Capturing 10.000-second L image..."),
            guide("PHD2: Star Lost. Trying to reacquire for 15s."),
            capture("Received image 1 out of 1."),
            sched("\"Job 'M31' is complete.\""),
            sched("\"Mount parked.\""),
            sched("\"Scheduler is stopping...\""),
        ],
    );
    let (ok, cards, err) = replay(&env, &f);
    assert!(ok, "{err}");
    assert_eq!(cards.len(), 1, "{err}");
    let guiding = embed_field(&cards[0]["embeds"][0], "Guiding");
    assert!(guiding.contains("1 star losses"), "{guiding}");
}

/// An INDI driver's `[WARNING]` repeated (KStars logs driver messages as
/// `<device> :  "[WARNING] ..."`): a storm of one warning, which the
/// astronomer sees as one incident with a count, not as nothing.
#[test]
fn a_storm_of_one_indi_warning_is_one_incident() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let warn = ekos(
        "org.kde.kstars.indi",
        "ZWO CCD ASI294MC Pro :  \"[WARNING] Exposure failed to start, retrying... \"",
    );
    let mut lines = vec![
        sched("Executing Job  \"M31\""),
        capture("Capturing 300.000-second L image..."),
    ];
    lines.extend(std::iter::repeat_n(warn, 10));
    let marker = tokens("indiwarn", 0..1);
    lines.extend(marker.clone());
    append(&file, &lines);
    assert!(wait_delivered(&fake, &marker), "{}", d.stderr());
    assert_eq!(
        all_incidents(&fake).len(),
        1,
        "one incident for ten INDI warnings: {:?}",
        titles(&fake)
    );
    drop(d);
}

/// `Dithering failed.` ten times: one incident (warning), pinging at most
/// once, its count edited in (within the 30 s edit interval).
#[test]
fn a_storm_of_dither_failures_is_one_incident_with_its_count() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 60.000-second L image..."),
            guide("Dithering failed."),
        ],
    );
    assert!(
        wait_until(LONG, || !all_incidents(&fake).is_empty()),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    append(
        &file,
        &std::iter::repeat_n(guide("Dithering failed."), 9).collect::<Vec<_>>(),
    );
    let id = all_incidents(&fake)[0].message_id.clone();
    assert!(
        fake.wait_for_edits(Duration::from_secs(45), |e| e
            .iter()
            .any(|m| m.message_id == id && m.embeds[0].to_string().contains("10 times"))),
        "{:?}",
        fake.edits()
            .iter()
            .map(|m| m.embeds[0].to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(all_incidents(&fake).len(), 1, "{:?}", titles(&fake));
    drop(d);
}

// ---------------------------------------------------------------------
// Driver endings: every form indiserver and KStars write.
// ---------------------------------------------------------------------

/// Each way an INDI driver ends, as KStars logs indiserver's output and
/// its own crash line: each one an incident (error or critical) with the
/// lines before it attached as a `.log`.
#[test]
fn every_form_of_a_driver_ending_is_an_incident_with_its_context() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO").set("CONTEXT_LINES", "3");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let server = |m: &str| {
        ekos(
            "org.kde.kstars.indi",
            &format!("INDI Server:  \"2024-03-09T22:31:02: Driver {m}\""),
        )
    };
    let forms = [
        ekos(
            "org.kde.kstars.indi",
            "INDI driver  \"indi_a_ccd\"  crashed!",
        ),
        server("indi_b_ccd: stderr EOF"),
        server("indi_c_focus: Terminated after #10 restarts."),
        server("indi_d_wheel: process 4242 exited with status 1"),
        server("indi_e_mount: process 4243 killed with signal 11 - Segmentation fault"),
    ];
    let mut lines = vec![sched("Executing Job  \"M31\"")];
    for (i, f) in forms.iter().enumerate() {
        lines.extend(tokens(&format!("ctx{i}"), 0..2));
        lines.push(f.clone());
    }
    append(&file, &lines);
    assert!(
        wait_until(LONG, || all_incidents(&fake).len() >= forms.len()),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    let inc = all_incidents(&fake);
    for (i, f) in forms.iter().enumerate() {
        let driver = [
            "indi_a_ccd",
            "indi_b_ccd",
            "indi_c_focus",
            "indi_d_wheel",
            "indi_e_mount",
        ][i];
        let m = inc
            .iter()
            .find(|m| title(m).contains(driver))
            .unwrap_or_else(|| panic!("no incident for {f}: {:?}", titles(&fake)));
        assert_eq!(m.attachments.len(), 1, "{driver}: {:?}", m.embeds);
        let text = String::from_utf8_lossy(&m.attachments[0].1).to_string();
        assert!(text.contains(&format!("ctx{i}-000001")), "{driver}: {text}");
    }
    drop(d);
}

// ---------------------------------------------------------------------
// The silence alarm.
// ---------------------------------------------------------------------

/// A stop during a slew (work in progress, no exposure) with a short
/// `SILENCE_AFTER`: one alert; and the CRLF line endings of a log written
/// on Windows (or copied through it) change nothing in the alert's text.
#[test]
fn a_silence_during_a_slew_in_a_crlf_log_alarms_once_with_a_clean_target() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let crlf = |l: String| format!("{l}\r");
    append(
        &file,
        &[
            crlf(sched("\"Scheduler started.\"")),
            crlf(sched("Executing Job  \"M31\"")),
            crlf(sched("\"Job 'M31' is slewing to target.\"")),
        ],
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()),
        "no alert: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    let t = title(&titled(&fake, "Ekos silent for")[0]);
    assert!(t.ends_with("M31"), "{t:?}");
    assert!(!t.contains('\r') && !t.contains('"'), "{t:?}");
    drop(d);
}

/// `SILENCE_AFTER` unset (auto): a 5 s exposure and the log stops. The
/// README: exposure + 60 s download + a tenth of it, at least 60 s, so no
/// alert within the first minute, one well within three.
#[test]
fn auto_silence_after_a_five_second_exposure_waits_for_the_download_and_margin() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 5.000-second L image..."),
        ],
    );
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(180), || !titled(
            &fake,
            "Ekos silent for"
        )
        .is_empty()),
        "no alert within 3 min: {}",
        d.stderr()
    );
    let after = t0.elapsed();
    assert!(after >= Duration::from_secs(65), "too early: {after:?}");
    assert!(after <= Duration::from_secs(150), "too late: {after:?}");
    let t = title(&titled(&fake, "Ekos silent for")[0]);
    assert!(t.contains("during a 5 s exposure of M31"), "{t}");
    drop(d);
}

/// kill -9 while the silence alert is out: after the restart no second
/// alert for the same silence, and one "writing again" once lines come.
#[test]
fn a_crash_in_mid_silence_neither_repeats_the_alert_nor_loses_the_resumption() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let state = env.dir.path().join("state");
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 300.000-second L image..."),
        ],
    );
    assert!(wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()));
    // The alert is out; wait for the state's save (an alert is saved just
    // after it is handed to the sender, so a crash between the post and
    // the save may repeat it: at least once). The state always has a
    // "silence" key; what matters is the reported one.
    assert!(wait_until(LONG, || std::fs::read_to_string(
        state.join("nightwatch.json")
    )
    .is_ok_and(
        |s| s.contains("\"silence_new_after\":") && !s.contains("\"silence_new_after\":null")
    )));
    // And the sender's record that Discord accepted it (until then a crash
    // sends it again: at least once).
    assert!(wait_until(LONG, || !notice_keys(&state)
        .1
        .iter()
        .any(|k| k.starts_with("silence/"))));
    d.kill9();
    let d = env.start(&[]);
    // Quiet for longer than SILENCE_AFTER after the restart.
    let t = Instant::now();
    assert!(!wait_until(Duration::from_secs(5), || titled(
        &fake,
        "Ekos silent for"
    )
    .len()
        > 1));
    assert!(t.elapsed() >= Duration::from_secs(5));
    append(
        &file,
        &[
            capture("Received image 1 out of 5."),
            sched("\"Mount parked.\""),
        ],
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos is writing again").is_empty()),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(
        titled(&fake, "Ekos silent for").len(),
        1,
        "{:?}",
        titles(&fake)
    );
    assert_eq!(titled(&fake, "Ekos is writing again").len(), 1);
}

/// SIGHUP (reload) in mid-silence and mid-incident: no second silence
/// alert, and a repeat after the reload edits the open incident.
#[test]
fn a_reload_in_mid_silence_and_mid_incident_repeats_nothing() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 300.000-second L image..."),
            capture("Capture failed. Check INDI Control Panel for details."),
        ],
    );
    assert!(wait_until(LONG, || !titled(&fake, "Ekos silent for")
        .is_empty()
        && !all_incidents(&fake).is_empty()));
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || d.stderr().contains("reload")),
        "{}",
        d.stderr()
    );
    // Still silent, well past SILENCE_AFTER again.
    assert!(!wait_until(Duration::from_secs(5), || titled(
        &fake,
        "Ekos silent for"
    )
    .len()
        > 1));
    append(
        &file,
        &[capture(
            "Capture failed. Check INDI Control Panel for details.",
        )],
    );
    let id = all_incidents(&fake)[0].message_id.clone();
    assert!(
        fake.wait_for_edits(Duration::from_secs(45), |e| e
            .iter()
            .any(|m| m.message_id == id && title(m).contains("(×2)"))),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    assert_eq!(
        titled(&fake, "Ekos silent for").len(),
        1,
        "{:?}",
        titles(&fake)
    );
    assert_eq!(all_incidents(&fake).len(), 1, "{:?}", titles(&fake));
    assert_eq!(titled(&fake, "Ekos is writing again").len(), 1);
    drop(d);
}

// ---------------------------------------------------------------------
// The checker's night, with variations: several targets, old format.
// ---------------------------------------------------------------------

/// The night of `tests/data` in KStars' pre-3.0 format
/// (`2017-06-21T08:04:58.505 - DEBG - Capture:  "..."`): the same card.
#[test]
fn replay_of_the_old_format_gives_the_same_card() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let re = regex::Regex::new(r"^\[(\S+) CET (\w+) ?\]\[\s*org\.kde\.kstars\.?(\S*)\] - (.*)$")
        .unwrap();
    let old: Vec<String> = night_file()
        .iter()
        .map(|l| {
            let c = re.captures(l).unwrap();
            let module = match &c[3] {
                "ekos.scheduler" => "Scheduler",
                "ekos.capture" => "Capture",
                "ekos.guide" => "Guide",
                "ekos.focus" => "Focus",
                "ekos.align" => "Align",
                "ekos.mount" => "Mount",
                "indi" => "INDI",
                _ => "KStars",
            };
            format!("{} - {} - {module}:  {}", &c[1], &c[2], &c[4])
        })
        .collect();
    let f = env.dir.path().join("old.txt");
    append(&f, &old);
    let (ok, cards, err) = replay(&env, &f);
    assert!(ok, "{err}");
    assert_eq!(cards.len(), 1);
    let e = &cards[0]["embeds"][0];
    assert_eq!(
        embed_field(e, "M31"),
        "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
    );
    assert_eq!(embed_field(e, "NGC 7000"), "R: 3 × 120 s = 6 min");
    assert_eq!(embed_field(e, "Driver crashes"), "1");
}

/// CRLF, non-UTF-8 bytes and a 1 MB line in the file: the same card.
#[test]
fn replay_of_a_crlf_file_with_garbage_gives_the_same_card() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let mut bytes = Vec::new();
    for (i, l) in night_file().iter().enumerate() {
        bytes.extend_from_slice(l.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        if i == 10 {
            bytes.extend_from_slice(b"\xff\xfe garbage \xc3\x28\r\n");
            bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
            bytes.extend_from_slice(b"\r\n");
        }
    }
    let f = env.dir.path().join("crlf.txt");
    std::fs::write(&f, bytes).unwrap();
    let (ok, cards, err) = replay(&env, &f);
    assert!(ok, "{err}");
    assert_eq!(cards.len(), 1);
    let e = &cards[0]["embeds"][0];
    assert_eq!(
        embed_field(e, "M31"),
        "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
    );
    assert!(
        e["description"]
            .as_str()
            .unwrap()
            .contains("2 targets · 9 frames · 46 min of exposure"),
        "{e}"
    );
}

/// Empty file, a file with no session: success, no card. Two nights in
/// one file (the same night a day later): two cards, each starting at
/// its own scheduler start (21:00:05).
#[test]
fn replay_of_odd_files() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let empty = env.dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, cards, err) = replay(&env, &empty);
    assert!(ok && cards.is_empty(), "{err}");
    let none = env.dir.path().join("none.txt");
    append(
        &none,
        &["hello".to_string(), capture("Received image 1 out of 3.")],
    );
    let (ok, cards, err) = replay(&env, &none);
    assert!(ok, "{err}");
    assert!(cards.len() <= 1, "{cards:?}");

    let night = night_file();
    let mut two = night.clone();
    two.extend(night.iter().map(|l| l.replace("2024-03-09", "2024-03-10")));
    let f = env.dir.path().join("two.txt");
    append(&f, &two);
    let (ok, cards, err) = replay(&env, &f);
    assert!(ok, "{err}");
    assert_eq!(cards.len(), 2, "{cards:?}");
    for (i, c) in cards.iter().enumerate() {
        let desc = c["embeds"][0]["description"].as_str().unwrap();
        assert!(
            desc.contains("2 targets · 9 frames · 46 min of exposure"),
            "{desc}"
        );
        assert!(
            desc.starts_with("21:00:05 →"),
            "night {i} starts with its scheduler: {desc}"
        );
    }
}

/// A night crossing midnight (the same night 3 h later) is one card,
/// named by its evening.
#[test]
fn replay_of_a_night_across_midnight_is_one_card() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let re = regex::Regex::new(r"^\[2024-03-09T(\d\d):").unwrap();
    let shifted: Vec<String> = night_file()
        .iter()
        .map(|l| {
            let h: u32 = re.captures(l).unwrap()[1].parse().unwrap();
            let (d, h) = if h + 3 >= 24 {
                ("2024-03-10", h + 3 - 24)
            } else {
                ("2024-03-09", h + 3)
            };
            re.replace(l, format!("[{d}T{h:02}:").as_str()).into_owned()
        })
        .collect();
    let f = env.dir.path().join("mid.txt");
    append(&f, &shifted);
    let (ok, cards, err) = replay(&env, &f);
    assert!(ok, "{err}");
    assert_eq!(cards.len(), 1, "{cards:?}");
    assert_eq!(
        cards[0]["embeds"][0]["title"],
        "Night of 2024-03-09 — summary"
    );
}

/// The live night in the old format: the card's counts match the log.
#[test]
fn a_live_night_in_the_old_format_is_counted() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2017-06-21/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let l = |module: &str, msg: &str| format!("2017-06-21T21:00:00.000 - INFO - {module}:  {msg}");
    let mut lines = vec![
        l("Scheduler", "\"Scheduler started.\""),
        l("Scheduler", "Executing Job  \"M31\""),
        l("Scheduler", "\"Job 'M31' capture is in progress...\""),
    ];
    for i in 1..=3 {
        lines.push(l("Capture", "\"Capturing 2.000-second L image...\""));
        lines.push(l("Capture", &format!("\"Received image {i} out of 3.\"")));
    }
    lines.extend([
        l("Scheduler", "\"Job 'M31' is complete.\""),
        l("Scheduler", "\"Mount parked.\""),
        l("Scheduler", "\"Scheduler is stopping...\""),
    ]);
    append(&file, &lines);
    // The card as it is now: posted as the summary when the night ended
    // in the chunk that opened it, or posted in progress and edited into
    // the summary when the lines were read in two chunks.
    let summary =
        |m: &Received| title(m).starts_with("Night of ") && title(m).ends_with("— summary");
    assert!(
        wait_until(LONG, || night_cards_now(&fake).iter().any(summary)),
        "no summary: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    let last = night_cards_now(&fake).into_iter().rfind(summary).unwrap();
    assert_eq!(embed_field(&last.embeds[0], "M31"), "L: 3 × 2 s = 6 s");
    drop(d);
}

// ---------------------------------------------------------------------
// [[expect]]
// ---------------------------------------------------------------------

fn expect_config(env: &mut Env, scripts: &std::path::Path, expect: &str) {
    env.write_config(&format!(
        "[[source]]\nname = \"scripts\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n\n\
         [[expect]]\nfile = \"backup.log\"\npattern = \"completed\"\n{expect}\n",
        scripts.display(),
    ));
}

/// Invalid `[[expect]]` values: the daemon refuses to start, with one line
/// naming the key and the value.
#[test]
fn invalid_expect_values_refuse_the_start_naming_key_and_value() {
    for (bad, names) in [
        ("by = \"25:00\"", "25:00"),
        ("by = \"04:61\"", "04:61"),
        ("by = \"half past four\"", "half past four"),
        ("by = \"04:30\"\nweekdays = [\"funday\"]", "funday"),
        ("by = \"04:30\"\ncolour = \"red\"", "colour"),
        ("by = \"04:30\"\npattern2 = \"(\"", "pattern2"),
    ] {
        let mut env = Env::new("https://discord.com/api/webhooks/1/unused");
        let scripts = env.dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        expect_config(&mut env, &scripts, bad);
        let (status, _, err) = env.run_to_end(&[]);
        assert!(!status.success(), "{bad}: started");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{bad}: {err}");
        assert!(lines[0].contains(names), "{bad}: {err}");
        assert!(lines[0].contains("expect"), "{bad}: {err}");
    }
    let mut env = Env::new("https://discord.com/api/webhooks/1/unused");
    env.write_config("[[expect]]\nfile = \"b.log\"\npattern = \"(completed\"\nby = \"04:30\"\n");
    let (status, _, err) = env.run_to_end(&[]);
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("pattern") && err.contains("(completed"),
        "{err}"
    );
}

/// `HH:MM:SS` in UTC, `ahead` from now.
fn utc_time_of_day_in(ahead: Duration) -> (String, u64) {
    let secs = (std::time::SystemTime::now() + ahead)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = secs % 86_400;
    (
        format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60),
        secs / 86_400,
    )
}

const DAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];

/// `weekdays` without today: no alert; with today: one alert.
#[test]
fn expect_weekdays_decide_whether_today_is_judged() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("TZ", "UTC0");
    let scripts = env.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let (by, day) = utc_time_of_day_in(Duration::from_secs(6));
    let today = DAYS[(day % 7) as usize];
    let others: Vec<String> = DAYS
        .iter()
        .filter(|d| **d != today)
        .map(|d| format!("\"{d}\""))
        .collect();
    env.write_config(&format!(
        "[[source]]\nname = \"scripts\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n\n\
         [[expect]]\nname = \"not-today\"\nfile = \"backup.log\"\npattern = \"completed\"\nby = \"{by}\"\nweekdays = [{}]\n\n\
         [[expect]]\nname = \"today\"\nfile = \"rsync.log\"\npattern = \"done\"\nby = \"{by}\"\nweekdays = [\"{today}\"]\n",
        scripts.display(),
        others.join(", "),
    ));
    append(&scripts.join("backup.log"), &["backup started".to_string()]);
    append(&scripts.join("rsync.log"), &["rsync started".to_string()]);
    let d = env.start(&[]);
    assert!(
        wait_until(Duration::from_secs(30), || !titled(
            &fake,
            "Expected line missing"
        )
        .is_empty()),
        "no alert by {by} ({today}): {}",
        d.stderr()
    );
    // One more plain line delivered after anything the night watch sends.
    let marker = tokens("wd", 0..1);
    std::thread::sleep(Duration::from_secs(2)); // pacing: past the deadline's judging
    append(&scripts.join("rsync.log"), &marker);
    assert!(wait_delivered(&fake, &marker));
    let alerts = titled(&fake, "Expected line missing");
    assert_eq!(alerts.len(), 1, "{:?}", titles(&fake));
    assert!(
        alerts[0].embeds[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("today: no 'done' line by"),
        "{}",
        alerts[0].embeds[0]
    );
    drop(d);
}

/// The checker's way: `by = "HH:MM"` (no seconds) one to two minutes ahead
/// in the machine's own local time (no TZ set), the line never written:
/// exactly one alert soon after that minute.
#[test]
fn expect_by_hh_mm_in_the_machines_local_time_alerts_once() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("TZ");
    let scripts = env.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    // Local time as the system sees it (`date`), two minutes ahead, whole
    // minutes.
    let out = std::process::Command::new("date")
        .args(["-d", "+2 minutes", "+%H:%M"])
        .output()
        .unwrap();
    let by = String::from_utf8(out.stdout).unwrap().trim().to_string();
    expect_config(&mut env, &scripts, &format!("by = \"{by}\""));
    append(&scripts.join("backup.log"), &["backup started".to_string()]);
    let d = env.start(&[]);
    assert!(
        wait_until(Duration::from_secs(200), || !titled(
            &fake,
            "Expected line missing"
        )
        .is_empty()),
        "no alert by {by}: {}",
        d.stderr()
    );
    let alert = &titled(&fake, "Expected line missing")[0];
    assert_eq!(
        alert.embeds[0]["description"],
        format!("backup.log: no 'completed' line by {by}")
    );
    let marker = tokens("hhmm", 0..1);
    append(&scripts.join("backup.log"), &marker);
    assert!(wait_delivered(&fake, &marker));
    assert_eq!(titled(&fake, "Expected line missing").len(), 1);
    drop(d);
}

// ---------------------------------------------------------------------
// Heartbeat.
// ---------------------------------------------------------------------

const PING: &str = "/ping/5b7c-probe-monitor-secret";
const FAIL: &str = "/ping/5b7c-probe-monitor-secret/fail";

/// Rate-limited (429 with retry_after to every post, lines pending) for
/// many intervals: healthy, pings go on, never `/fail`.
#[test]
fn a_rate_limited_webhook_with_lines_pending_is_healthy() {
    let fake = FakeDiscord::start();
    let monitor = PingServer::start();
    let url = fake.webhook_url();
    let id = url.rsplit('/').nth(1).unwrap().to_string();
    let mut env = Env::new(&url);
    env.set("HEARTBEAT_URL", &monitor.url(PING))
        .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    assert!(wait_until(LONG, || monitor.count(PING) >= 1));
    fake.set_hook_fault(&id, Some(Fault::RateLimited(0.5)));
    let lines = tokens("rl", 0..5);
    append(&file, &lines);
    let t = Instant::now();
    let before = monitor.count(PING);
    assert!(!wait_until(Duration::from_secs(6), || monitor.count(FAIL) > 0));
    assert!(t.elapsed() >= Duration::from_secs(6));
    assert!(
        monitor.count(PING) >= before + 3,
        "pings go on while rate-limited: {:?}",
        monitor.gets()
    );
    fake.set_hook_fault(&id, None);
    assert!(wait_delivered(&fake, &lines));
    assert_eq!(monitor.count(FAIL), 0, "{:?}", monitor.gets());
    drop(d);
}

/// Discord stopped (connection refused) in mid-run with lines pending:
/// `/fail`; the monitor's secret never in the log nor in `check`.
#[test]
fn discord_refusing_in_mid_run_is_a_fail_and_the_secret_is_never_shown() {
    let fake = FakeDiscord::start();
    let monitor = PingServer::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("HEARTBEAT_URL", &monitor.url(PING))
        .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22/log_21-00-00.txt");
    append(&file, &[]);
    let (status, out, err) = env.run_to_end(&["check"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("HEARTBEAT_URL = http://127.0.0.1"), "{out}");
    assert!(out.contains("HEARTBEAT_INTERVAL = 1"), "{out}");
    assert!(!out.contains("probe-monitor-secret") && !err.contains("probe-monitor-secret"));
    let d = env.start(&[]);
    assert!(wait_until(LONG, || monitor.count(PING) >= 1));
    fake.set_mode(Mode::Refuse);
    append(&file, &tokens("refused", 0..3));
    assert!(
        wait_until(LONG, || monitor.count(FAIL) >= 1),
        "{:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    fake.set_mode(Mode::Normal);
    assert!(wait_delivered(&fake, &tokens("refused", 0..3)));
    let (_, _, log) = d.stop();
    assert!(!log.contains("probe-monitor-secret"), "{log}");
}

// ---------------------------------------------------------------------
// check and STATUS= show the session.
// ---------------------------------------------------------------------

/// `check` shows the new keys and, for a log in mid-session, its state.
#[test]
fn check_shows_the_night_watch_keys_and_the_session() {
    let mut env = Env::new("https://discord.com/api/webhooks/1/unused");
    env.set("SILENCE_AFTER", "120")
        .set("INCIDENT_WINDOW", "300")
        .set("CONTEXT_LINES", "12")
        .set("NIGHT_START", "13:00")
        .set("NIGHT_END", "08:00");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 300.000-second Ha image..."),
        ],
    );
    let (status, out, err) = env.run_to_end(&["check"]);
    assert!(status.success(), "{err}");
    for k in [
        "SILENCE_AFTER = 120",
        "INCIDENT_WINDOW = 300",
        "CONTEXT_LINES = 12",
        "NIGHT_START = 13:00",
        "NIGHT_END = 08:00",
        "NIGHT_CARD = on",
        "FORUM = false",
        // Unset, but shown (as every other key is), so the user sees
        // the dead-man's switch is off.
        "HEARTBEAT_URL = ",
        "HEARTBEAT_INTERVAL = 300",
    ] {
        assert!(out.contains(k), "{k}: {out}");
    }
    let session = out
        .lines()
        .find(|l| l.contains("Ekos session"))
        .unwrap_or_else(|| panic!("no session in check: {out}"));
    assert!(
        session.contains("M31") && session.contains("Ha") && session.contains("300"),
        "{session}"
    );
}

/// `STATUS=` carries the session: target, filter, exposure. Ten targets
/// in turn, each written as a job start and its first exposure (the
/// lines are posted at the same moment the night watch updates the
/// session): each must show up in `STATUS=` within 5 s.
#[test]
fn status_shows_the_session() {
    use crate::support::notify::NotifySocket;
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let notify = NotifySocket::bind(env.dir.path());
    env.set("NOTIFY_SOCKET", notify.path().to_str().unwrap());
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let mut missed = Vec::new();
    for i in 0..10 {
        let target = format!("NGC {}", 7000 + i);
        append(
            &file,
            &[
                sched(&format!("Executing Job  \"{target}\"")),
                capture("Capturing 120.000-second OIII image..."),
            ],
        );
        if !notify.wait_for(Duration::from_secs(5), |m| {
            m.contains("STATUS=") && m.contains(&target) && m.contains("OIII")
        }) {
            missed.push(target);
        }
    }
    assert!(
        missed.is_empty(),
        "STATUS= never showed {missed:?}: {:?}",
        notify.messages().iter().rev().take(3).collect::<Vec<_>>()
    );
    drop(d);
}

/// The control for `status_shows_the_session`: the same lines, then
/// (paced: a second later, past STATUS='s 200 ms rate limit) one more
/// plain line posted; the status then carries the session.
#[test]
fn status_shows_the_session_once_another_line_is_posted() {
    use crate::support::notify::NotifySocket;
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let notify = NotifySocket::bind(env.dir.path());
    env.set("NOTIFY_SOCKET", notify.path().to_str().unwrap());
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"NGC 7000\""),
            capture("Capturing 120.000-second OIII image..."),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    append(&file, &tokens("status", 0..1));
    assert!(
        notify.wait_for(LONG, |m| m.contains("STATUS=")
            && m.contains("NGC 7000")
            && m.contains("OIII")),
        "{:?}",
        notify.messages()
    );
    drop(d);
}

/// A clean shutdown (`Shutdown complete.`) and then quiet: no silence
/// alert, whatever SILENCE_AFTER; the card is the summary, ended by the
/// shutdown.
#[test]
fn quiet_after_a_clean_shutdown_is_no_silence() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "1").set("MIN_LEVEL", "INFO");
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
            capture("Received image 1 out of 1."),
            sched("\"Job 'M31' is complete.\""),
            sched("\"Starting shutdown process...\""),
            sched("\"Parking mount in progress...\""),
            sched("\"Mount parked.\""),
            sched("\"Shutdown complete.\""),
        ],
    );
    let summary =
        |m: &Received| title(m).starts_with("Night of ") && title(m).ends_with("— summary");
    // The card as it is now (see `a_live_night_in_the_old_format_is_counted`).
    assert!(
        wait_until(Duration::from_secs(60), || night_cards_now(&fake)
            .iter()
            .any(summary)),
        "{:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    // Quiet for 4 × SILENCE_AFTER.
    assert!(!wait_until(Duration::from_secs(4), || !titled(
        &fake,
        "Ekos silent for"
    )
    .is_empty()));
    drop(d);
}

/// A capture sequence run by hand (no scheduler): work in progress, so a
/// stop in mid-exposure alarms once; the mount parked by hand (INDI's
/// `[INFO] Mount is parked.`) ends the night and the quiet after it is no
/// silence.
#[test]
fn a_manual_sequence_alarms_on_a_stop_and_a_manual_park_ends_it() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            capture("Capturing 1.000-second Ha image..."),
            capture("Received image 1 out of 3."),
            capture("Capturing 1.000-second Ha image..."),
        ],
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()),
        "no alert: {:?}\n{}",
        titles(&fake),
        d.stderr()
    );
    append(
        &file,
        &[
            capture("Received image 2 out of 3."),
            capture("CCD capture aborted"),
            ekos(
                "org.kde.kstars.indi",
                "EQMod Mount :  \"[INFO] Mount is parked. \"",
            ),
        ],
    );
    assert!(wait_until(LONG, || !titled(&fake, "Ekos is writing again").is_empty()));
    let summary =
        |m: &Received| title(m).starts_with("Night of ") && title(m).ends_with("— summary");
    assert!(
        wait_until(LONG, || night_cards_now(&fake).iter().any(summary)),
        "the park ends the night: {:?}",
        titles(&fake)
    );
    assert!(!wait_until(Duration::from_secs(5), || titled(
        &fake,
        "Ekos silent for"
    )
    .len()
        > 1));
    let card = night_cards_now(&fake).into_iter().rfind(summary).unwrap();
    let fields = card.embeds[0]["fields"].to_string();
    assert!(fields.contains("Ha: 2 × 1 s = 2 s"), "{fields}");
    drop(d);
}

/// The same manual sequence and park without a silence before it: the
/// park ends the night (the card becomes its summary at once).
#[test]
fn a_manual_park_ends_the_night_card() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            capture("Capturing 1.000-second Ha image..."),
            capture("Received image 1 out of 3."),
        ],
    );
    assert!(
        wait_until(LONG, || fake
            .messages()
            .iter()
            .any(|m| title(m).starts_with("Night of "))),
        "no card: {:?}",
        titles(&fake)
    );
    append(
        &file,
        &[
            capture("Capturing 1.000-second Ha image..."),
            capture("Received image 2 out of 3."),
            capture("CCD capture aborted"),
            ekos("org.kde.kstars.ekos.mount", "\"Mount parked.\""),
            "after-the-park".to_string(),
        ],
    );
    let summary =
        |m: &Received| title(m).starts_with("Night of ") && title(m).ends_with("— summary");
    assert!(
        wait_until(LONG, || night_cards_now(&fake).iter().any(summary)),
        "the park ends the night: {:?}\n{:?}\n{}",
        titles(&fake),
        night_cards_now(&fake)
            .iter()
            .map(|m| m.embeds[0]["description"].to_string())
            .collect::<Vec<_>>(),
        d.stderr()
    );
    let card = night_cards_now(&fake).into_iter().rfind(summary).unwrap();
    let desc = card.embeds[0]["description"].as_str().unwrap_or("");
    assert!(
        desc.contains("2 frames") && desc.contains("ended: mount parked"),
        "{desc}"
    );
    drop(d);
}
