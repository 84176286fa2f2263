//! The notice lane across a reload (SIGHUP) and a crash (`kill -9`),
//! through the real binary: a silence alert that waits in the lane because
//! Discord answers 503 (or 429) is in the notice state (saved before it
//! was first sent), and arrives exactly once after Discord recovers.

use std::time::Duration;

use crate::support::daemon::{Env, append, tokens, wait_until};
use crate::support::ekos_lines::{capture, sched};
use crate::support::fake_discord::{FakeDiscord, Fault, Mode, Received};

const LONG: Duration = Duration::from_secs(20);

fn silence_alerts(fake: &FakeDiscord) -> Vec<Received> {
    fake.messages()
        .into_iter()
        .filter(|m| {
            !m.edit
                && m.embeds
                    .first()
                    .and_then(|e| e["title"].as_str())
                    .is_some_and(|t| t.starts_with("Ekos silent for"))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Interrupt {
    Reload,
    Kill9,
}

/// The log stops in mid-exposure while Discord refuses everything with
/// `refuse`; the daemon is reloaded (or killed and started again) while
/// the alert waits; Discord recovers through `recover`.
fn a_waiting_silence_alert_survives(
    how: Interrupt,
    refuse: impl Fn(&FakeDiscord),
    recover: impl Fn(&FakeDiscord),
) {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let mut d = env.start(&[]);
    let plain = tokens("reload", 0..2);
    append(
        &file,
        &[
            plain[0].clone(),
            sched("Executing Job  \"M31\""),
            capture("Capturing 1.000-second L image..."),
            plain[1].clone(),
        ],
    );
    assert!(
        wait_until(LONG, || {
            let got = crate::support::fake_discord::delivered(&fake.messages());
            plain.iter().all(|p| got.contains(p))
        }),
        "lines not delivered: {}",
        d.stderr()
    );
    refuse(&fake);
    let before = fake.requests();
    // The silence alert is due after about 2 s; it is refused at least
    // twice (it waits in the lane, retried).
    assert!(
        wait_until(LONG, || fake.requests() >= before + 2),
        "nothing was tried: {}",
        d.stderr()
    );
    assert!(silence_alerts(&fake).is_empty());
    match how {
        Interrupt::Reload => {
            d.signal(libc::SIGHUP);
            assert!(
                wait_until(LONG, || d.stderr().contains("configuration reloaded")),
                "no reload: {}",
                d.stderr()
            );
            assert!(
                d.stderr().contains("notices not sent yet are saved"),
                "{}",
                d.stderr()
            );
        }
        Interrupt::Kill9 => {
            d.kill9();
            d = env.start(&[]);
            assert!(
                wait_until(LONG, || d
                    .stderr()
                    .contains("saved by the last run are sent again")),
                "{}",
                d.stderr()
            );
        }
    }
    recover(&fake);
    assert!(
        wait_until(LONG, || !silence_alerts(&fake).is_empty()),
        "the alert was lost in the reload: {}",
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(silence_alerts(&fake).len(), 1, "exactly once: {err}");
}

#[test]
fn a_silence_alert_refused_with_503_survives_a_reload_and_arrives_once() {
    a_waiting_silence_alert_survives(
        Interrupt::Reload,
        |f| f.set_mode(Mode::Down),
        |f| f.set_mode(Mode::Normal),
    );
}

#[test]
fn a_silence_alert_held_by_429_survives_a_reload_and_arrives_once() {
    a_waiting_silence_alert_survives(
        Interrupt::Reload,
        |f| f.set_hook_fault(FakeDiscord::WEBHOOK_ID, Some(Fault::RateLimited(0.3))),
        |f| f.set_hook_fault(FakeDiscord::WEBHOOK_ID, None),
    );
}

#[test]
fn a_silence_alert_refused_with_503_survives_a_kill_9_and_arrives_once() {
    a_waiting_silence_alert_survives(
        Interrupt::Kill9,
        |f| f.set_mode(Mode::Down),
        |f| f.set_mode(Mode::Normal),
    );
}

/// A notice state that cannot be written (here `notices.json` is a
/// directory, as a full or read-only disk would refuse it too): the
/// notices still go, and the trouble is logged once, not at every notice.
#[test]
fn a_notice_state_that_cannot_be_written_is_logged_once_and_the_notices_still_go() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "1").set("MIN_LEVEL", "INFO");
    let blocker = env.dir.path().join("state").join("notices.json");
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), "").unwrap();
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    // Three silences, each alert and resumption a notice to save.
    for round in 0..3 {
        append(
            &file,
            &[
                sched("Executing Job  \"M31\""),
                capture("Capturing 1.000-second L image..."),
            ],
        );
        assert!(
            wait_until(LONG, || silence_alerts(&fake).len() > round),
            "alert {round}: {}",
            d.stderr()
        );
    }
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let complaints = err
        .lines()
        .filter(|l| l.contains("cannot write") && l.contains("notices"))
        .count();
    assert_eq!(complaints, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
