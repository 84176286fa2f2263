//! `--replay FILE --night-card`: the real binary prints the summary card of
//! a night assembled from real KStars lines, with the right numbers.

mod support;

use serde_json::Value;
use support::daemon::Env;
use support::fake_discord::embed_field;

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
