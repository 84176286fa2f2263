//! Issue 11 through the real binary, in real time with short thresholds:
//! the silence alarm (one alert, one "writing again"), incidents (one
//! message edited with its count instead of a storm, resolved in green,
//! pinging once), the crash alert with its context attached, and no log
//! line lost or repeated meanwhile.

use std::time::Duration;

use crate::support::daemon::{Env, append, loss_and_dups, notice_keys, tokens, wait_until};
use crate::support::ekos_lines::{capture, ekos, guide, sched};
use crate::support::fake_discord::{
    FakeDiscord, Mode, Received, code_block_lines, delivered, embed_field, is_incident, title,
    titled,
};

const LONG: Duration = Duration::from_secs(20);

/// Incident messages (not the line embeds, whose titles are the same).
fn incidents(fake: &FakeDiscord, prefix: &str) -> Vec<Received> {
    titled(fake, prefix)
        .into_iter()
        .filter(is_incident)
        .collect()
}

fn check_lines(fake: &FakeDiscord, expected: &[String]) {
    let msgs: Vec<Received> = fake.messages().into_iter().filter(|m| !m.edit).collect();
    let (lost, dups) = loss_and_dups(expected, &delivered(&msgs));
    assert!(lost.is_empty(), "lost {lost:?}");
    assert_eq!(dups, 0, "duplicated lines");
}

#[test]
fn a_silence_in_mid_exposure_alarms_once_and_the_resumption_is_said_once() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let plain = tokens("silence", 0..6);
    append(
        &file,
        &[
            plain[0].clone(),
            sched("Executing Job  \"M31\""),
            capture("Capturing 1.000-second L image..."),
            capture("Received image 1 out of 5."),
            plain[1].clone(),
            capture("Capturing 1.000-second L image..."),
            plain[2].clone(),
        ],
    );
    // The log stops in mid-exposure: one alert after about 2 s.
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos silent for").is_empty()),
        "no silence alert: {}",
        d.stderr()
    );
    let alert = &titled(&fake, "Ekos silent for")[0];
    assert!(
        title(alert).contains("during a 1 s exposure of M31"),
        "{}",
        title(alert)
    );
    let fields = alert.embeds[0]["fields"].to_string();
    assert!(
        fields.contains("M31") && fields.contains("\"L\""),
        "{fields}"
    );
    assert!(
        alert.embeds[0]["description"]
            .as_str()
            .unwrap()
            .contains("silence-000002"),
        "the last line is shown"
    );
    append(
        &file,
        &[
            capture("Received image 2 out of 5."),
            plain[3].clone(),
            sched("Mount parked."),
            plain[4].clone(),
        ],
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Ekos is writing again after")
            .is_empty()),
        "no resumption: {:?}\n{}",
        fake.messages()
            .iter()
            .map(|m| (m.edit, title(m), delivered(std::slice::from_ref(m))))
            .collect::<Vec<_>>(),
        d.stderr()
    );
    // Parked: the quiet that follows is no silence. The next lines and a
    // stop flush everything; then the counts are final.
    append(&file, &[plain[5].clone()]);
    assert!(wait_until(LONG, || {
        let msgs = fake.messages();
        loss_and_dups(&plain, &delivered(&msgs)).0.is_empty()
    }));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(
        titled(&fake, "Ekos silent for").len(),
        1,
        "once per silence"
    );
    assert_eq!(titled(&fake, "Ekos is writing again").len(), 1);
    check_lines(&fake, &plain);
}

#[test]
fn a_storm_is_one_incident_edited_in_place_and_a_crash_carries_its_context() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("CONTEXT_LINES", "4")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    env.write_config(
        "[[rule]]\nname = \"guide-star-lost\"\nseverity = \"warning\"\nmention = \"<@&4242>\"\n",
    );
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let plain = tokens("storm", 0..20);
    let mut lines = Vec::new();
    for (i, t) in plain.iter().take(9).enumerate() {
        lines.push(t.clone());
        lines.push(guide(
            "Lost track of the guide star. Searching for guide stars...",
        ));
        if i == 0 {
            append(&file, &lines);
            lines.clear();
            // The first loss opens the incident: one message, one ping.
            assert!(
                wait_until(LONG, || !incidents(&fake, "Lost track of the guide star")
                    .is_empty()),
                "no incident: {}",
                d.stderr()
            );
        }
    }
    append(&file, &lines);
    append(&file, &[plain[9].clone(), guide("Autoguiding started.")]);
    // Resolved at once (a Final ignores the 30 s edit interval).
    let resolved = |m: &[Received]| {
        m.iter().any(|e| {
            e.edit
                && title(e).starts_with("Resolved after")
                && e.embeds[0]["fields"].to_string().contains("9 times")
        })
    };
    assert!(
        fake.wait_for_edits(LONG, resolved),
        "{:#?}",
        fake.edits().iter().map(title).collect::<Vec<_>>()
    );
    let incident = incidents(&fake, "Lost track of the guide star");
    assert_eq!(incident.len(), 1, "one message, not nine");
    assert_eq!(incident[0].content, "<@&4242>", "the incident pings");
    let edited = fake.message(&incident[0].message_id).unwrap();
    assert_eq!(edited.embeds[0]["color"], 0x2ECC71, "resolved is green");
    // The line embeds are still posted, but none pings.
    let pings: usize = fake
        .messages()
        .iter()
        .filter(|m| !m.edit && m.content.contains("<@&4242>"))
        .count();
    assert_eq!(pings, 1, "one ping for nine losses");

    // A driver crash: an incident with the lines before it attached.
    let before: Vec<String> = plain[10..14].to_vec();
    let mut crash = before.clone();
    crash.push(ekos(
        "org.kde.kstars.indi",
        "INDI driver  \"indi_eqmod_telescope\"  crashed!",
    ));
    append(&file, &crash);
    assert!(wait_until(LONG, || !incidents(&fake, "INDI driver").is_empty()));
    let c = &incidents(&fake, "INDI driver")[0];
    assert_eq!(c.attachments.len(), 1, "{c:?}");
    let (name, data) = &c.attachments[0];
    assert!(name.ends_with(".log"), "{name}");
    let text = String::from_utf8_lossy(data);
    let ctx: Vec<&str> = text.lines().collect();
    assert_eq!(ctx.len(), 4, "{text}");
    assert!(ctx[3].contains("crashed!"), "the line itself last: {text}");
    assert_eq!(ctx[..3], before[1..], "the lines before it");

    append(&file, &plain[14..]);
    assert!(wait_until(LONG, || {
        loss_and_dups(&plain, &delivered(&fake.messages()))
            .0
            .is_empty()
    }));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    check_lines(&fake, &plain);
}

#[test]
fn a_storm_that_comes_before_the_first_post_goes_out_still_pings_once() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    env.write_config(
        "[[rule]]\nname = \"guide-star-lost\"\nseverity = \"warning\"\nmention = \"<@&4242>\"\n",
    );
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    // Discord is down: the incident's first post cannot go out, and the
    // repeats (all in the same chunk) replace its body while it waits.
    fake.set_mode(Mode::Down);
    let before = fake.requests();
    let plain = tokens("early", 0..5);
    let mut lines = Vec::new();
    for t in &plain {
        lines.push(t.clone());
        lines.push(guide(
            "Lost track of the guide star. Searching for guide stars...",
        ));
    }
    append(&file, &lines);
    assert!(
        fake.wait_for_requests(before + 2, LONG),
        "no retry: {}",
        d.stderr()
    );
    fake.set_mode(Mode::Normal);
    assert!(
        wait_until(LONG, || !incidents(&fake, "Lost track of the guide star")
            .is_empty()),
        "no incident: {}",
        d.stderr()
    );
    let incident = incidents(&fake, "Lost track of the guide star");
    assert_eq!(incident.len(), 1, "one message, not five");
    assert_eq!(incident[0].content, "<@&4242>", "the incident pings");
    assert_eq!(
        incident[0].body["allowed_mentions"]["roles"],
        serde_json::json!(["4242"])
    );
    assert!(wait_until(LONG, || {
        loss_and_dups(&plain, &delivered(&fake.messages()))
            .0
            .is_empty()
    }));
    let pings = fake
        .messages()
        .iter()
        .filter(|m| !m.edit && m.content.contains("<@&4242>"))
        .count();
    assert_eq!(pings, 1, "one ping for five losses");
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    check_lines(&fake, &plain);
}

#[test]
fn a_restart_edits_the_open_incident_instead_of_posting_it_again() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[capture(
            "Capture failed. Check INDI Control Panel for details.",
        )],
    );
    assert!(wait_until(LONG, || !incidents(&fake, "Capture failed").is_empty()));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let d = env.start(&[]);
    append(
        &file,
        &[capture(
            "Capture failed. Check INDI Control Panel for details.",
        )],
    );
    let first = incidents(&fake, "Capture failed")[0].message_id.clone();
    // The new run has sent nothing under the key yet: the edit goes at once.
    let edited = |e: &[Received]| {
        e.iter()
            .any(|m| m.message_id == first && title(m).contains("(×2)"))
    };
    assert!(
        fake.wait_for_edits(LONG, edited),
        "{:?}\n{}",
        fake.edits().iter().map(title).collect::<Vec<_>>(),
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(
        incidents(&fake, "Capture failed").len(),
        1,
        "not posted twice"
    );
}

/// `HH:MM:SS` in UTC, `ahead` from now (the daemon runs with `TZ=UTC0`).
fn utc_time_of_day_in(ahead: Duration) -> String {
    let t = (std::time::SystemTime::now() + ahead)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 86_400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

#[test]
fn an_expect_deadline_not_met_alerts_once_on_its_files_webhook_and_a_late_line_once() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    // Real time: the deadline is a few seconds ahead on the wall clock
    // ("by" takes seconds), in a zone that needs no time-zone files.
    env.set("TZ", "UTC0");
    let scripts = env.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let by = utc_time_of_day_in(Duration::from_secs(8));
    env.write_config(&format!(
        "[[source]]\nname = \"scripts\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n\
         discord_webhook_url = \"{}\"\n\n\
         [[expect]]\nfile = \"backup.log\"\npattern = \"completed\"\nby = \"{by}\"\n\n\
         [[expect]]\nfile = \"rsync.log\"\npattern = \"done\"\nby = \"{by}\"\n",
        scripts.display(),
        fake.webhook_url_for("2", "scripts-token"),
    ));
    append(&scripts.join("backup.log"), &["backup started".to_string()]);
    append(&scripts.join("rsync.log"), &[]);
    let d = env.start(&[]);
    // The other expectation is met in time: no alert for it.
    append(&scripts.join("rsync.log"), &["rsync done".to_string()]);
    let missing = |f: &FakeDiscord| titled(f, "Expected line missing");
    assert!(
        wait_until(Duration::from_secs(30), || !missing(&fake).is_empty()),
        "no alert by {by}: {}",
        d.stderr()
    );
    let alert = &missing(&fake)[0];
    assert_eq!(alert.webhook_id, "2", "the webhook of the file's source");
    // Shown without its seconds when they are zero.
    let by_shown = by.strip_suffix(":00").unwrap_or(&by);
    assert_eq!(
        alert.embeds[0]["description"],
        format!("backup.log: no 'completed' line by {by_shown}")
    );
    append(
        &scripts.join("backup.log"),
        &["backup completed".to_string()],
    );
    assert!(
        wait_until(LONG, || !titled(&fake, "Expected line late").is_empty()),
        "{}",
        d.stderr()
    );
    // One more matching line, then a plain line on the Ekos log that is
    // delivered after anything the night watch could still send.
    append(
        &scripts.join("backup.log"),
        &["backup completed again".to_string()],
    );
    let marker = tokens("expect", 0..1);
    append(&env.logs().join("2024-03-09/log_21-00-00.txt"), &marker);
    assert!(wait_until(LONG, || {
        loss_and_dups(&marker, &delivered(&fake.messages()))
            .0
            .is_empty()
    }));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(missing(&fake).len(), 1, "missing is reported once");
    assert_eq!(titled(&fake, "Expected line late").len(), 1, "late once");
    assert_eq!(
        titled(&fake, "Expected line").len(),
        2,
        "the met expectation is quiet"
    );
}

fn card_title(m: &Received) -> bool {
    title(m).starts_with("Night of ")
}

#[test]
fn a_short_night_is_one_card_edited_in_place_into_its_summary() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let frame = |i: usize, f: &str| {
        vec![
            capture(&format!("Capturing 1.000-second {f} image...")),
            capture(&format!("Received image {i} out of 3.")),
        ]
    };
    let mut first = vec![
        sched("\"Scheduler started.\""),
        sched("Executing Job  \"M31\""),
        sched("\"Job 'M31' capture is in progress...\""),
    ];
    first.extend(frame(1, "L"));
    append(&file, &first);
    // The card opens with the work.
    assert!(
        wait_until(LONG, || fake
            .messages()
            .iter()
            .any(|m| !m.edit && card_title(m))),
        "no card: {}",
        d.stderr()
    );
    let mut rest = frame(2, "L");
    rest.extend(frame(3, "Ha"));
    rest.extend([
        sched("\"Job 'M31' is complete.\""),
        sched("\"Parking mount in progress...\""),
        sched("\"Mount parked.\""),
        sched("\"Scheduler is stopping...\""),
    ]);
    append(&file, &rest);
    // The summary replaces the card at once, not after the 5 min throttle.
    let summary = |m: &Received| m.edit && title(m).ends_with("— summary");
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(summary)),
        "no summary: {:?}\n{}",
        fake.messages().iter().map(title).collect::<Vec<_>>(),
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let cards: Vec<Received> = fake
        .messages()
        .into_iter()
        .filter(|m| !m.edit && card_title(m))
        .collect();
    assert_eq!(cards.len(), 1, "one card message");
    assert!(
        title(&cards[0]).ends_with("— in progress"),
        "{}",
        title(&cards[0])
    );
    let edits: Vec<Received> = fake.edits().into_iter().filter(card_title).collect();
    assert!(
        edits.iter().all(|e| e.message_id == cards[0].message_id),
        "edited in place"
    );
    let last = edits.last().unwrap();
    assert!(summary(last), "the summary is the last word");
    let e = &last.embeds[0];
    let desc = e["description"].as_str().unwrap();
    assert!(
        desc.contains("1 target · 3 frames · 3 s of exposure · ended: mount parked"),
        "{desc}"
    );
    let field = |name: &str| embed_field(e, name);
    assert_eq!(field("M31"), "Ha: 1 × 1 s = 1 s\nL: 2 × 1 s = 2 s");
}

/// A crash (`kill -9`) in mid-night, down across an `[[expect]]` deadline
/// met before the crash, with lines written while down: the night card
/// goes on in the same message with its counts, no silence is reported
/// for the downtime, and no expect alert is sent.
#[test]
fn a_crash_in_mid_night_goes_on_with_the_same_card_its_counts_and_no_false_alert() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("TZ", "UTC0")
        .set("SILENCE_AFTER", "8");
    let scripts = env.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let deadline = std::time::SystemTime::now() + Duration::from_secs(12);
    let by = utc_time_of_day_in(Duration::from_secs(12));
    env.write_config(&format!(
        "[[source]]\nname = \"scripts\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n\n\
         [[expect]]\nfile = \"backup.log\"\npattern = \"completed\"\nby = \"{by}\"\n",
        scripts.display(),
    ));
    append(&scripts.join("backup.log"), &["backup started".to_string()]);
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let state = env.dir.path().join("state");
    let d = env.start(&[]);
    // `start` returns once one file is followed; with start_at = end, a
    // line written to backup.log before the daemon followed it would be
    // before its start (skipped as at any first start).
    assert!(
        wait_until(LONG, || d
            .stderr()
            .contains("scripts/backup.log from offset")),
        "{}",
        d.stderr()
    );
    let frame = |i: usize| {
        vec![
            capture("Capturing 1.000-second L image..."),
            capture(&format!("Received image {i} out of 3.")),
        ]
    };
    let mut first = vec![
        sched("\"Scheduler started.\""),
        sched("Executing Job  \"M31\""),
        sched("\"Job 'M31' capture is in progress...\""),
    ];
    first.extend(frame(1));
    first.push(capture("Capturing 1.000-second L image..."));
    append(&file, &first);
    append(
        &scripts.join("backup.log"),
        &["backup completed".to_string()],
    );
    let marker = tokens("crash", 0..1);
    append(&file, &marker);
    let read = |name: &str| std::fs::read_to_string(state.join(name)).unwrap_or_default();
    // Wait until the card is posted, its id kept (an update of it may wait
    // for the card's edit interval: after the restart it edits the same
    // message), the night watch's state saved with the frame and the met
    // deadline, and the lines delivered.
    assert!(
        wait_until(LONG, || {
            notice_keys(&state)
                .0
                .iter()
                .any(|k| k.starts_with("night:"))
                && read("nightwatch.json").contains("\"frames_seen\":1")
                && read("nightwatch.json").contains("\"seen\":true")
                && loss_and_dups(&marker, &delivered(&fake.messages()))
                    .0
                    .is_empty()
        }),
        "{}\n{}",
        read("nightwatch.json"),
        d.stderr()
    );
    d.kill9();
    // Down across the deadline (and longer than SILENCE_AFTER); the
    // frame written meanwhile is read back at the restart.
    append(&file, &frame(2)[1..]);
    assert!(wait_until(Duration::from_secs(30), || {
        std::time::SystemTime::now() > deadline + Duration::from_secs(1)
    }));
    let d = env.start(&[]);
    let card_with = |n: &str| {
        let n = n.to_string();
        move |e: &[Received]| {
            e.iter()
                .any(|m| card_title(m) && embed_field(&m.embeds[0], "Tonight").starts_with(&n))
        }
    };
    assert!(
        fake.wait_for_edits(LONG, card_with("2 frames")),
        "the card goes on: {:?}\n{}",
        fake.edits()
            .iter()
            .map(|m| m.embeds[0].to_string())
            .collect::<Vec<_>>(),
        d.stderr()
    );
    let mut rest = frame(3);
    rest.extend([
        sched("\"Job 'M31' is complete.\""),
        sched("\"Mount parked.\""),
        sched("\"Scheduler is stopping...\""),
    ]);
    append(&file, &rest);
    let summary = |m: &Received| m.edit && title(m).ends_with("— summary");
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(summary)),
        "no summary: {}",
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let cards: Vec<Received> = fake
        .messages()
        .into_iter()
        .filter(|m| !m.edit && card_title(m))
        .collect();
    assert_eq!(cards.len(), 1, "one card message across the crash");
    let edits: Vec<Received> = fake.edits().into_iter().filter(card_title).collect();
    assert!(edits.iter().all(|e| e.message_id == cards[0].message_id));
    let desc = edits.last().unwrap().embeds[0]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(desc.contains("3 frames"), "{desc}");
    assert!(
        titled(&fake, "Expected line").is_empty(),
        "met before the crash"
    );
    assert!(
        titled(&fake, "Ekos silent").is_empty(),
        "the daemon was down, not Ekos"
    );
}

/// Discord is down (503 to every request): the Ekos log's webhook falls
/// behind by more than the sender and the channels hold, so the watcher
/// stops reading the log. The work in progress was seen by the night watch
/// (its lines delivered before Discord went down).
fn held_up_route() -> (
    crate::support::daemon::Daemon,
    std::path::PathBuf,
    FakeDiscord,
    Env,
) {
    let fake = FakeDiscord::start_with(crate::support::fake_discord::Options {
        rate_limit: None,
        ..Default::default()
    });
    let mut env = Env::new(&fake.webhook_url());
    env.set("SILENCE_AFTER", "2").set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[
            sched("Executing Job  \"M31\""),
            capture("Capturing 1.000-second L image..."),
            "work-started".to_string(),
        ],
    );
    assert!(
        fake.wait_for(LONG, |m| delivered(m).iter().any(|l| l == "work-started")),
        "{}",
        d.stderr()
    );
    fake.set_mode(Mode::Down);
    // 3 MiB: more than the sender's route budget (1 MiB) and the channels.
    let backlog: Vec<String> = (0..30_000)
        .map(|i| format!("backlog-{i:06} {}", "z".repeat(90)))
        .collect();
    append(&file, &backlog);
    (d, file, fake, env)
}

/// The Ekos log keeps being written while Discord is down and its webhook
/// behind (the watcher holds its lines back): the night watch hears the
/// log grow and raises no silence alarm, though no line reaches it for
/// many times `silence_after`.
#[test]
fn a_discord_outage_is_no_silence_of_ekos() {
    let (d, file, fake, _env) = held_up_route();
    let trickle = tokens("trickle", 0..50);
    // 12 s of writing, 6 × silence_after, while Discord is down.
    for t in &trickle[..40] {
        append(&file, std::slice::from_ref(t));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Discord is back; Ekos writes on until the backlog went, then parks
    // (after which quiet is no silence).
    fake.set_mode(Mode::Normal);
    let mut more = trickle[40..].iter();
    let delivered_all = wait_until(Duration::from_secs(90), || {
        match more.next() {
            Some(t) => append(&file, std::slice::from_ref(t)),
            None => append(&file, &["still-writing".to_string()]),
        }
        std::thread::sleep(Duration::from_millis(300));
        // Caught up: lines come one message at a time again (the backlog
        // may have gone as attachments).
        delivered(&fake.messages())
            .iter()
            .any(|l| l == "still-writing")
    });
    assert!(
        delivered_all,
        "the backlog was not delivered: {}",
        d.stderr()
    );
    append(&file, &[sched("Mount parked."), "parked-now".to_string()]);
    assert!(fake.wait_for(LONG, |m| delivered(m).iter().any(|l| l == "parked-now")));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert!(
        titled(&fake, "Ekos silent for").is_empty(),
        "a false silence alarm: {:?}",
        titled(&fake, "Ekos silent for")
            .iter()
            .map(|m| m.embeds[0].to_string())
            .collect::<Vec<_>>()
    );
}

/// The control: Discord is down and the webhook behind, and Ekos really
/// stops writing: the alarm is raised (and posted once Discord is back),
/// saying its last lines were not read yet.
#[test]
fn ekos_stopping_during_a_discord_outage_is_still_a_silence() {
    let (d, file, fake, _env) = held_up_route();
    for t in tokens("trickle", 0..10) {
        append(&file, &[t]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Quiet for 3 × silence_after before Discord comes back: once the
    // backlog is read, its lines would keep any later alarm away.
    std::thread::sleep(Duration::from_secs(6));
    fake.set_mode(Mode::Normal);
    assert!(
        wait_until(Duration::from_secs(60), || !titled(
            &fake,
            "Ekos silent for"
        )
        .is_empty()),
        "no silence alert: {}",
        d.stderr()
    );
    // Its last line is the one the night watch knew of: "not read yet"
    // when the route was still held up at the last write, the last
    // trickle line when a loaded machine let the watcher read it first.
    let alert = &titled(&fake, "Ekos silent for")[0];
    let last = alert.embeds[0]["description"].as_str().unwrap();
    assert!(
        last.contains("not read yet") || last.contains("trickle-000009"),
        "{}",
        alert.embeds[0]
    );
    assert_eq!(titled(&fake, "Ekos silent for").len(), 1);
    drop(d);
}

/// A storm of one warning: 20 identical KStars WARN lines (a number
/// changing inside) are one incident "Repeated warning: …", opened at the
/// third with the two before counted, without a ping, ended (a short
/// incident window) with the count of all 20; and every line is still
/// posted as a line.
#[test]
fn a_storm_of_one_warning_is_one_incident_with_its_count() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("INCIDENT_WINDOW", "3")
        .set("BATCH_SIZE", "20")
        .set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let plain = tokens("warnstorm", 0..20);
    let lines: Vec<String> = (plain.iter().enumerate())
        .map(|(i, t)| {
            format!(
                "[2024-03-09T21:14:{:02}.000 CET WARN ][  org.kde.kstars.indi] - \"Timeout after {} s reading {t} temperature\"",
                10 + i,
                3 + i * 7
            )
        })
        .collect();
    let storm = |m: &Received| title(m).starts_with("Repeated warning:");
    // Two: plain lines, no incident.
    append(&file, &lines[..2]);
    assert!(
        wait_until(LONG, || loss_and_dups(
            &plain[..2],
            &delivered(&fake.messages())
        )
        .0
        .is_empty()),
        "{}",
        d.stderr()
    );
    append(&file, &[plain[0].replace("warnstorm", "quiet")]);
    assert!(wait_until(LONG, || {
        delivered(&fake.messages()).contains(&plain[0].replace("warnstorm", "quiet"))
    }));
    assert!(!fake.messages().iter().any(storm), "two are no storm");
    // Eighteen more: one incident, ended after the window with its count.
    append(&file, &lines[2..]);
    let want = "Repeated warning: Timeout after # s reading warnstorm-# temperature (×20)";
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(
            |e| title(e) == want && e.embeds[0]["fields"].to_string().contains("20 times")
        )),
        "{:#?}\n{}",
        fake.edits().iter().map(title).collect::<Vec<_>>(),
        d.stderr()
    );
    let posts: Vec<Received> = fake
        .messages()
        .into_iter()
        .filter(|m| !m.edit && storm(m))
        .collect();
    assert_eq!(posts.len(), 1, "one incident, not a storm of them");
    assert_eq!(incidents(&fake, "Repeated warning:").len(), 1);
    let first = title(&posts[0]);
    let n: u64 = first
        .rsplit_once("(×")
        .and_then(|(_, n)| n.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no count in {first}"));
    assert!((3..=20).contains(&n), "opened with the two before: {first}");
    assert_eq!(posts[0].content, "", "a warning pings nobody");
    let last = fake.message(&posts[0].message_id).unwrap();
    assert_eq!(title(&last), want);
    assert!(
        last.embeds[0]["footer"]["text"]
            .as_str()
            .unwrap()
            .contains("no repeat since"),
        "ended: {}",
        last.embeds[0]
    );
    // Every line still went as a line.
    assert!(wait_until(LONG, || loss_and_dups(
        &plain,
        &delivered(&fake.messages())
    )
    .0
    .is_empty()));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
}

/// Frames read while Discord takes nothing (503s), so the checkpoint does
/// not move past them; the daemon is killed (`kill -9`) after the night
/// watch counted them and saved its state, and restarted: the watcher reads
/// them again from the checkpoint, the night watch knows it observed them.
/// The summary counts each frame once.
#[test]
fn frames_read_again_after_a_crash_are_counted_once() {
    let fake = FakeDiscord::start_with(crate::support::fake_discord::Options {
        rate_limit: None,
        ..Default::default()
    });
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO").set("TZ", "UTC0");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let state = env.dir.path().join("state");
    let read = |name: &str| std::fs::read_to_string(state.join(name)).unwrap_or_default();
    let d = env.start(&[]);
    let frame = |i: usize| {
        vec![
            capture("Capturing 1.000-second L image..."),
            capture(&format!("Received image {i} out of 4.")),
        ]
    };
    append(
        &file,
        &[
            sched("\"Scheduler started.\""),
            sched("Executing Job  \"M31\""),
            sched("\"Job 'M31' capture is in progress...\""),
        ],
    );
    assert!(
        wait_until(LONG, || notice_keys(&state)
            .0
            .iter()
            .any(|k| k.starts_with("night:"))),
        "no card: {}",
        d.stderr()
    );
    fake.set_mode(Mode::Down);
    let marks = tokens("held", 0..3);
    let mut held = frame(1);
    held.push(marks[0].clone());
    held.extend(frame(2));
    held.push(marks[1].clone());
    append(&file, &held);
    assert!(
        wait_until(LONG, || read("nightwatch.json")
            .contains("\"frames_seen\":2")),
        "{}\n{}",
        read("nightwatch.json"),
        d.stderr()
    );
    assert!(
        !delivered(&fake.messages())
            .iter()
            .any(|l| l.contains("Received image")),
        "Discord accepted nothing"
    );
    d.kill9();
    fake.set_mode(Mode::Normal);
    let d = env.start(&[]);
    let mut rest = frame(3);
    rest.extend(frame(4));
    rest.extend([
        sched("\"Job 'M31' is complete.\""),
        sched("\"Mount parked.\""),
        sched("\"Scheduler is stopping...\""),
        marks[2].clone(),
    ]);
    append(&file, &rest);
    let summary = |m: &Received| m.edit && title(m).ends_with("— summary");
    assert!(
        fake.wait_for_edits(LONG, |e| e.iter().any(summary))
            && wait_until(LONG, || loss_and_dups(&marks, &delivered(&fake.messages()))
                .0
                .is_empty()),
        "no summary: {}",
        d.stderr()
    );
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    let last = fake.edits().into_iter().rfind(summary).expect("a summary");
    let e = &last.embeds[0];
    let desc = e["description"].as_str().unwrap();
    assert!(desc.contains("4 frames · 4 s of exposure"), "{desc}");
    assert_eq!(embed_field(e, "M31"), "L: 4 × 1 s = 4 s");
    // The lines themselves: each delivered once (the checkpoint's work).
    check_lines(&fake, &marks);
}

/// Ekos stops during a Discord outage and the alarm is raised; when Discord
/// is back, the backlog (written before the silence) is read and delivered
/// but is no resumption: no "writing again" until Ekos really writes
/// again, then exactly one.
#[test]
fn the_backlog_of_an_outage_does_not_end_a_silence_but_writing_again_does() {
    let (d, file, fake, _env) = held_up_route();
    let trickle = tokens("trickle", 0..10);
    for t in &trickle {
        append(&file, std::slice::from_ref(t));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Quiet for 3 × silence_after before Discord comes back.
    std::thread::sleep(Duration::from_secs(6));
    fake.set_mode(Mode::Normal);
    // The alarm, then the whole backlog delivered (in messages or, caught
    // up, in attachments).
    let last = trickle.last().unwrap().clone();
    let sent = |fake: &FakeDiscord, line: &str| {
        fake.messages().iter().any(|m| {
            code_block_lines(&m.content).iter().any(|l| l == line)
                || (m.attachments.iter())
                    .any(|(_, data)| String::from_utf8_lossy(data).lines().any(|l| l == line))
        })
    };
    assert!(
        wait_until(Duration::from_secs(90), || {
            !titled(&fake, "Ekos silent for").is_empty() && sent(&fake, &last)
        }),
        "no alarm or backlog: {}",
        d.stderr()
    );
    assert!(
        titled(&fake, "Ekos is writing again").is_empty(),
        "the backlog ended the silence: {:?}",
        titled(&fake, "Ekos is writing again")
            .iter()
            .map(|m| m.embeds[0].to_string())
            .collect::<Vec<_>>()
    );
    // Ekos writes again.
    let marker = tokens("again", 0..1);
    append(
        &file,
        &[capture("Received image 1 out of 5."), marker[0].clone()],
    );
    assert!(
        wait_until(LONG, || {
            !titled(&fake, "Ekos is writing again").is_empty()
                && loss_and_dups(&marker, &delivered(&fake.messages()))
                    .0
                    .is_empty()
        }),
        "no resumption: {}",
        d.stderr()
    );
    append(&file, &[sched("Mount parked."), "parked-now".to_string()]);
    assert!(fake.wait_for(LONG, |m| delivered(m).iter().any(|l| l == "parked-now")));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    assert_eq!(titled(&fake, "Ekos silent for").len(), 1);
    assert_eq!(titled(&fake, "Ekos is writing again").len(), 1);
}

/// Incidents off (`incident_window = 0`): a driver crash is its line's own
/// embed (which pings), and its context, the lines before it, comes as a
/// message of its own with the `.log` attached.
#[test]
fn with_incidents_off_a_crash_still_carries_its_context() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO")
        .set("CONTEXT_LINES", "4")
        .set("INCIDENT_WINDOW", "0");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let plain = tokens("off", 0..6);
    let mut crash = plain[..4].to_vec();
    crash.push(ekos(
        "org.kde.kstars.indi",
        "INDI driver  \"indi_eqmod_telescope\"  crashed!",
    ));
    append(&file, &crash);
    assert!(
        wait_until(LONG, || !titled(&fake, "Context of: INDI driver")
            .is_empty()),
        "no context: {:?}\n{}",
        fake.messages().iter().map(title).collect::<Vec<_>>(),
        d.stderr()
    );
    let c = &titled(&fake, "Context of: INDI driver")[0];
    assert_eq!(c.attachments.len(), 1, "{c:?}");
    let (name, data) = &c.attachments[0];
    assert!(name.ends_with(".log"), "{name}");
    let text = String::from_utf8_lossy(data);
    let ctx: Vec<&str> = text.lines().collect();
    assert_eq!(ctx.len(), 4, "{text}");
    assert!(ctx[3].contains("crashed!"), "the line itself last: {text}");
    assert_eq!(ctx[..3], plain[1..4], "the lines before it");
    append(&file, &plain[4..]);
    assert!(wait_until(LONG, || {
        loss_and_dups(&plain, &delivered(&fake.messages()))
            .0
            .is_empty()
    }));
    let (status, _, err) = d.stop();
    assert!(status.success(), "{err}");
    // The alert is the line's own embed; no incident message.
    assert!(incidents(&fake, "INDI driver").is_empty());
    assert_eq!(titled(&fake, "Context of").len(), 1);
    assert!(
        titled(&fake, "INDI driver")
            .iter()
            .any(|m| m.attachments.is_empty() && !m.embeds.is_empty()),
        "the line's embed"
    );
    check_lines(&fake, &plain);
}

/// A Discord that creates the message but answers 12 s later (a slow
/// proxy; outside probe of issue 11): the incident is posted once, not
/// once per timeout. With the old fixed 10 s timeout every try made a copy.
#[test]
fn an_incident_answered_slowly_is_posted_once() {
    let fake = FakeDiscord::start_with(crate::support::fake_discord::Options {
        wait_delay: Some(Duration::from_secs(12)),
        ..Default::default()
    });
    let mut env = Env::new(&fake.webhook_url());
    env.set("MIN_LEVEL", "INFO");
    let file = env.logs().join("2024-03-09/log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    append(
        &file,
        &[guide(
            "Lost track of the guide star. Searching for guide stars...",
        )],
    );
    assert!(
        wait_until(LONG, || !incidents(&fake, "Lost track of the guide star")
            .is_empty()),
        "no incident: {}",
        d.stderr()
    );
    // A copy would follow a timeout (10 s then) and a retry: wait for the
    // first answer and as long again.
    assert!(
        !wait_until(Duration::from_secs(25), || incidents(
            &fake,
            "Lost track of the guide star"
        )
        .len()
            > 1),
        "the incident was posted again: {}",
        d.stderr()
    );
    assert!(!d.stderr().contains("timed out"), "{}", d.stderr());
}
