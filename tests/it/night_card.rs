//! `--replay FILE --night-card`: the real binary prints the summary card of
//! a night assembled from real KStars lines, with the right numbers.

use crate::support::daemon::Env;
use crate::support::fake_discord::embed_field;
use serde_json::Value;

#[test]
fn replay_prints_the_night_summary() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let log = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/night-2024-03-09.txt"
    );
    let (status, out, err) = env.run_to_end(&["--replay", log, "--night-card"]);
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let card: Value = serde_json::from_str(lines[0]).unwrap();
    let e = &card["embeds"][0];
    assert_eq!(e["title"], "Night of 2024-03-09 — summary");
    let desc = e["description"].as_str().unwrap();
    assert!(
        desc.contains("2 targets · 9 frames · 46 min of exposure · ended: Ekos shut down"),
        "{desc}"
    );
    let field = |name: &str| embed_field(e, name);
    assert_eq!(
        field("M31"),
        "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
    );
    assert_eq!(field("NGC 7000"), "R: 3 × 120 s = 6 min");
    assert_eq!(field("Driver crashes"), "1");
    // A night boundary moved past the night's start splits nothing here,
    // but night_start is honoured: starting the night at 22:00 puts the
    // evening's first hour in the previous night.
    let mut env2 = Env::new("https://discord.com/api/webhooks/1/unused");
    env2.set("NIGHT_START", "22:00");
    let (status, out, err) = env2.run_to_end(&["--replay", log, "--night-card"]);
    assert!(status.success(), "{err}");
    let titles: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["embeds"][0]["title"].to_string())
        .collect();
    assert_eq!(
        titles,
        [
            "\"Night of 2024-03-08 — summary\"",
            "\"Night of 2024-03-09 — summary\""
        ],
        "{out}"
    );
}

#[test]
fn night_card_needs_replay() {
    let env = Env::new("https://discord.com/api/webhooks/1/unused");
    let (status, _, err) = env.run_to_end(&["--night-card"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--replay"), "{err}");
}

/// The check the issue describes, in one run of the real binary: the real
/// night of `tests/data` written in real time with its exposures compressed,
/// plus a stop in mid-exposure, a storm of one warning and an INDI driver
/// crash, ended by a clean park. The oracle for the card is the binary's
/// own `--replay --night-card` over the very file it followed: the live
/// summary's frames and exposure per target and filter must be the same.
#[test]
fn a_whole_night_in_compressed_time_tells_each_thing_once_and_counts_right() {
    use crate::support::daemon::{append, loss_and_dups, tokens, wait_until};
    use crate::support::fake_discord::{FakeDiscord, Received, delivered, is_incident, title};
    use std::time::Duration;
    const LONG: Duration = Duration::from_secs(30);
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    // Not 2 s: the writer's own pauses (30 ms) must stay far below it even
    // when the machine stalls a writer (dirty-page throttling under heavy
    // I/O), or a true silence is reported that the oracle does not expect.
    env.set("SILENCE_AFTER", "5")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);

    let night = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/night-2024-03-09.txt"
    ))
    .unwrap();
    let night: Vec<String> = night.lines().map(str::to_string).collect();
    let plain = tokens("night", 0..night.len());
    let lost = "[2024-03-09T22:01:44.110 CET INFO ][      org.kde.kstars.ekos.guide] - \"Lost track of the guide star. Searching for guide stars...\"";
    let crash = "[2024-03-09T22:35:02.000 CET INFO ][            org.kde.kstars.indi] - INDI driver  \"indi_asi_ccd\"  crashed!";
    let mut storm_seen = false;
    for (i, l) in night.iter().enumerate() {
        let mut batch = vec![plain[i].clone()];
        if l.contains("Lost track of the guide star") {
            // A storm: the star lost 12 times in a row.
            batch.extend(std::iter::repeat_n(lost.to_string(), 12));
            storm_seen = true;
        } else if l.contains("stderr EOF") {
            batch.push(crash.to_string());
        }
        batch.push(l.clone());
        append(&file, &batch);
        if l.contains("Capturing 300.000-second L image") && i > 25 {
            // The last L frame: the log stops in mid-exposure.
            assert!(
                wait_until(LONG, || fake
                    .messages()
                    .iter()
                    .any(|m| title(m).starts_with("Ekos silent for"))),
                "no silence alert: {}",
                d.stderr()
            );
        } else {
            // Compressed exposures: well within SILENCE_AFTER.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    assert!(storm_seen);
    let summary = |m: &Received| m.edit && title(m).ends_with("— summary");
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(summary)),
        "no summary: {:?}\n{}",
        fake.messages().iter().map(title).collect::<Vec<_>>(),
        d.stderr()
    );
    assert!(wait_until(LONG, || loss_and_dups(
        &plain,
        &delivered(&fake.messages())
    )
    .0
    .is_empty()));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");

    let posts: Vec<Received> = fake.messages().into_iter().filter(|m| !m.edit).collect();
    let titled =
        |p: &str| -> Vec<&Received> { posts.iter().filter(|m| title(m).starts_with(p)).collect() };
    assert_eq!(
        titled("Ekos silent for").len(),
        1,
        "one silence alert: {:?}",
        posts.iter().map(title).collect::<Vec<_>>()
    );
    assert!(
        title(titled("Ekos silent for")[0]).contains("during a 300 s exposure of M31"),
        "{}",
        title(titled("Ekos silent for")[0])
    );
    assert_eq!(titled("Ekos is writing again").len(), 1, "one resumption");
    // The storm: one message, posted with the first loss (and its ping),
    // then edited in place with the count and, once guiding resumed,
    // resolved — even when all of it came before the first post went.
    let star: Vec<&Received> = posts
        .iter()
        .filter(|m| is_incident(m) && title(m).starts_with("Lost track of the guide star"))
        .collect();
    assert_eq!(star.len(), 1, "one incident for the storm");
    assert!(
        title(star[0]).starts_with("Lost track"),
        "posted open: {}",
        title(star[0])
    );
    let last = fake.message(&star[0].message_id).unwrap();
    assert!(
        title(&last).starts_with("Resolved after"),
        "{}",
        title(&last)
    );
    assert!(
        last.embeds[0]["fields"].to_string().contains("13 times"),
        "the count is edited in: {}",
        last.embeds[0]
    );
    assert!(
        fake.count_edits(&star[0].message_id) >= 1,
        "edited in place"
    );
    let crashes: Vec<&Received> = posts
        .iter()
        .filter(|m| {
            m.embeds
                .first()
                .is_some_and(|e| e["footer"].to_string().contains("indi-driver-crashed"))
        })
        .collect();
    assert_eq!(crashes.len(), 1, "one crash incident");
    let (name, data) = &crashes[0].attachments[0];
    assert!(name.ends_with(".log"), "{name}");
    let ctx = String::from_utf8_lossy(data);
    assert!(ctx.lines().last().unwrap().contains("crashed!"), "{ctx}");
    assert_eq!(ctx.lines().count(), 30, "context_lines defaults to 30");

    let cards: Vec<&Received> = posts
        .iter()
        .filter(|m| title(m).starts_with("Night of "))
        .collect();
    assert_eq!(cards.len(), 1, "one card");
    let card = fake.message(&cards[0].message_id).unwrap();
    assert!(summary(&card), "the card became the summary");
    // The oracle: the replay of the file the daemon followed.
    let (status, out, err) = env.run_to_end(&["--replay", file.to_str().unwrap(), "--night-card"]);
    assert!(status.success(), "{err}");
    let replayed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let (live, replayed) = (&card.embeds[0], &replayed["embeds"][0]);
    for target in ["M31", "NGC 7000"] {
        assert_eq!(embed_field(live, target), embed_field(replayed, target));
    }
    assert_eq!(
        embed_field(live, "M31"),
        "Ha: 2 × 600 s = 20 min\nL: 4 × 300 s = 20 min"
    );
    assert_eq!(embed_field(live, "NGC 7000"), "R: 3 × 120 s = 6 min");
    let desc = live["description"].as_str().unwrap();
    assert!(
        desc.contains("2 targets · 9 frames · 46 min of exposure"),
        "{desc}"
    );
}
