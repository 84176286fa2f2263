//! Forum routes through the real binary against the fake Discord in forum
//! mode (which refuses any message outside a thread with 220001): the
//! night's post is opened with the night's date, every line, notice and
//! edit goes into it, a deleted post makes the daemon open a new one
//! (named with the night's target) without losing or repeating a line,
//! and a restart keeps posting into it. A forum webhook without
//! `forum = true` stops its route and says why; so does `forum = true` on
//! a text channel's webhook.

use std::time::Duration;

use crate::support::daemon::{Env, append, loss_and_dups, tokens, wait_until};
use crate::support::ekos_lines::{capture, sched};
use crate::support::fake_discord::{FakeDiscord, Received, delivered, posts};

const LONG: Duration = Duration::from_secs(20);

/// Today's UTC date (the daemon runs with TZ=UTC and night_start 00:00,
/// so it is the night's date).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, d) = ekos_log_monitor::localtime::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn forum_env(fake: &FakeDiscord) -> Env {
    fake.set_forum(FakeDiscord::WEBHOOK_ID, true);
    let mut env = Env::new(&fake.webhook_url());
    env.set("FORUM", "true")
        .set("TZ", "UTC")
        .set("NIGHT_START", "00:00")
        .set("MIN_LEVEL", "INFO");
    env
}

fn all_delivered(fake: &FakeDiscord, lines: &[String]) -> bool {
    let got = delivered(&posts(fake));
    lines
        .iter()
        .all(|l| got.iter().any(|g| g.contains(l.as_str())))
}

#[test]
fn a_forum_night_goes_into_one_post_kept_across_a_restart_and_reopened_when_deleted() {
    let fake = FakeDiscord::start();
    let env = forum_env(&fake);
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let date = today();

    // Lines, and a session whose night card is a notice edited in place.
    let plain = tokens("forum", 0..12);
    let mut first = vec![
        plain[0].clone(),
        sched("\"Scheduler started.\""),
        sched("Executing Job  \"M31\""),
        sched("\"Job 'M31' capture is in progress...\""),
        capture("Capturing 1.000-second L image..."),
        capture("Received image 1 out of 3."),
        plain[1].clone(),
        plain[2].clone(),
    ];
    append(&file, &first);
    assert!(
        wait_until(LONG, || all_delivered(&fake, &plain[..3])),
        "lines not delivered: {}",
        d.stderr()
    );
    first = vec![
        capture("Capturing 1.000-second L image..."),
        capture("Received image 2 out of 3."),
        sched("\"Job 'M31' is complete.\""),
        sched("\"Parking mount in progress...\""),
        sched("\"Mount parked.\""),
        sched("\"Scheduler is stopping...\""),
        plain[3].clone(),
    ];
    append(&file, &first);
    // The card's summary is an edit: it must find the card in the thread.
    let summary = |m: &Received| {
        m.edit
            && m.embeds.iter().any(|e| {
                e["title"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("— summary"))
            })
    };
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(summary)),
        "no summary edit: {}",
        d.stderr()
    );
    assert!(wait_until(LONG, || all_delivered(&fake, &plain[..4])));

    let threads = fake.threads();
    assert_eq!(threads.len(), 1, "one post for the night: {threads:?}");
    let (thread, name) = threads[0].clone();
    assert!(
        name == format!("Night of {date}") || name == format!("Night of {date} — M31"),
        "{name}"
    );
    assert!(
        fake.messages().iter().all(|m| m.channel_id == thread),
        "every message and edit is in the night's post"
    );
    assert!(
        fake.messages().iter().any(|m| !m.edit
            && m.embeds.iter().any(|e| e["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Night of ")))),
        "the night card was posted into the thread"
    );

    // Someone deletes the post: the next message opens a new one, named
    // after the target worked on tonight.
    assert!(fake.delete_thread(&thread));
    append(&file, &plain[4..8]);
    assert!(
        wait_until(LONG, || all_delivered(&fake, &plain[4..8])),
        "lines after the post was deleted: {}",
        d.stderr()
    );
    let threads = fake.threads();
    assert_eq!(
        threads.len(),
        1,
        "the deleted post is gone, one new: {threads:?}"
    );
    let (second, name) = threads[0].clone();
    assert_ne!(second, thread);
    assert_eq!(name, format!("Night of {date} — M31"));
    let in_second = |from: usize, to: usize| {
        let msgs: Vec<Received> = posts(&fake)
            .into_iter()
            .filter(|m| {
                delivered(std::slice::from_ref(m))
                    .iter()
                    .any(|l| plain[from..to].iter().any(|t| l.contains(t.as_str())))
            })
            .collect();
        !msgs.is_empty() && msgs.iter().all(|m| m.channel_id == second)
    };
    assert!(in_second(4, 8));

    // A restart finds the night's post in the state directory.
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let d = env.start(&[]);
    append(&file, &plain[8..12]);
    assert!(
        wait_until(LONG, || all_delivered(&fake, &plain[8..12])),
        "lines after the restart: {}",
        d.stderr()
    );
    assert_eq!(fake.threads().len(), 1, "the restart used the same post");
    assert!(in_second(8, 12));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    // Nothing lost, nothing repeated, in order.
    let got: Vec<String> = delivered(&posts(&fake))
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("forum-"))
        .map(str::to_string)
        .collect();
    let (lost, dups) = loss_and_dups(&plain, &got);
    assert!(lost.is_empty(), "lost {lost:?}");
    assert_eq!(dups, 0, "repeated lines: {got:?}");
    assert_eq!(got, plain, "in order");
}

#[test]
fn a_forum_webhook_without_forum_true_stops_and_says_to_set_it() {
    let fake = FakeDiscord::start();
    let mut env = forum_env(&fake);
    env.unset("FORUM");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(&file, &tokens("plain", 0..2));
    assert!(
        wait_until(LONG, || d.stderr().contains("set forum = true")),
        "{}",
        d.stderr()
    );
    assert!(posts(&fake).is_empty(), "the fake refused everything");
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn forum_true_on_a_text_channels_webhook_stops_and_says_to_remove_it() {
    let fake = FakeDiscord::start();
    let env = forum_env(&fake);
    fake.set_forum(FakeDiscord::WEBHOOK_ID, false);
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(&file, &tokens("plain", 0..2));
    assert!(
        wait_until(LONG, || d.stderr().contains("remove forum = true")),
        "{}",
        d.stderr()
    );
    assert!(posts(&fake).is_empty(), "no post opened in a text channel");
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
}
