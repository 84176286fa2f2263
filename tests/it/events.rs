//! Issue 6 through the real binary: notable Ekos lines become embeds
//! coloured by severity, rule mentions ping exactly their target, filters
//! drop what the user asked, and `--replay` shows every line exactly once.

use std::time::Duration;

use crate::support::daemon::{Env, append};
use crate::support::fake_discord::{FakeDiscord, code_block_lines};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ekos-corpus.txt");

fn ekos(level: &str, cat: &str, msg: &str) -> String {
    format!("[2023-06-16T22:01:31.367 CEST {level} ][{cat:>30}] - {msg}")
}

#[test]
fn events_become_embeds_with_mentions_only_where_a_rule_says() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "5")
        .set("BATCH_TIMEOUT", "0.2")
        .set("MIN_LEVEL", "INFO")
        // The line embeds' own pings (incidents: tests/nightwatch.rs).
        .set("INCIDENT_WINDOW", "0");
    env.write_config(
        "[[rule]]\nname = \"indi-driver-crashed\"\nseverity = \"critical\"\nmention = \"<@&424242>\"\n\n\
         [[rule]]\nname = \"guidage-fr\"\npattern = \"Guidage automatique interrompu\"\nseverity = \"error\"\ntitle = \"Guiding aborted (fr)\"\n",
    );
    let file = env.logs().join("2026-11-22/log_22-00-00.txt");
    append(&file, &[]);
    let _d = env.start(&[]);
    let lines = vec![
        ekos(
            "INFO",
            "org.kde.kstars.ekos.capture",
            "\"Received image 2 out of 17.\"",
        ),
        ekos(
            "DEBG",
            "org.kde.kstars.ekos.capture",
            "\"debug noise @everyone\"",
        ),
        ekos(
            "INFO",
            "org.kde.kstars.ekos.guide",
            "\"Guidage automatique interrompu.\"",
        ),
        ekos(
            "CRIT",
            "org.kde.kstars.indi",
            "INDI driver  \"indi_eqmod_telescope\"  crashed! @everyone",
        ),
        "a plain line".to_string(),
    ];
    append(&file, &lines);
    let ok = fake.wait_for(Duration::from_secs(10), |m| {
        let embeds: usize = m
            .iter()
            .map(|r| r.body["embeds"].as_array().map_or(0, |a| a.len()))
            .sum();
        embeds >= 3 && m.iter().any(|r| r.content.contains("a plain line"))
    });
    assert!(
        ok,
        "{:#?}\n{}",
        fake.messages()
            .iter()
            .map(|m| m.body.to_string())
            .collect::<Vec<_>>(),
        _d.stderr()
    );
    // With incidents off, the error and the crash get their context lines
    // in a message of their own (tests/it/nightwatch.rs); the line embeds
    // are the rest. Neither may ping from the text.
    let is_context = |m: &crate::support::fake_discord::Received| {
        m.embeds
            .first()
            .and_then(|e| e["title"].as_str())
            .is_some_and(|t| t.starts_with("Context of: "))
    };
    assert!(fake.wait_for(
        Duration::from_secs(10),
        |m| m.iter().filter(|m| is_context(m)).count() == 2
    ));
    let (context, msgs): (Vec<_>, Vec<_>) = fake.messages().into_iter().partition(is_context);
    for c in &context {
        assert_eq!(c.attachments.len(), 1, "{:?}", c.body);
        assert_eq!(c.body["allowed_mentions"]["parse"], serde_json::json!([]));
        assert!(c.content.is_empty(), "no ping: {}", c.content);
    }
    let embeds: Vec<&serde_json::Value> = msgs
        .iter()
        .flat_map(|m| m.body["embeds"].as_array().into_iter().flatten())
        .collect();
    let titles: Vec<&str> = embeds
        .iter()
        .map(|e| e["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        vec![
            "Image 2/17 received",
            "Guiding aborted (fr)",
            "INDI driver indi_eqmod_telescope crashed"
        ],
        "{titles:?}"
    );
    assert_eq!(embeds[2]["color"], 0xE74C3C);
    assert!(
        embeds[2]["footer"]["text"]
            .as_str()
            .unwrap()
            .starts_with("critical")
    );
    // The DEBG line was filtered out; nothing came twice.
    let all: String = msgs.iter().map(|m| m.body.to_string()).collect();
    assert!(!all.contains("debug noise"));
    assert_eq!(all.matches("Received image 2 out of 17").count(), 1);
    // Exactly the rule's role may be pinged, never @everyone from the text.
    let crit = msgs
        .iter()
        .find(|m| m.body.to_string().contains("crashed"))
        .unwrap();
    assert!(crit.content.starts_with("<@&424242>"), "{}", crit.content);
    assert_eq!(
        crit.body["allowed_mentions"]["parse"],
        serde_json::json!([])
    );
    assert_eq!(
        crit.body["allowed_mentions"]["roles"],
        serde_json::json!(["424242"])
    );
    for m in &msgs {
        if !std::ptr::eq(m, crit) {
            assert_eq!(m.body["allowed_mentions"]["roles"], serde_json::json!([]));
        }
    }
}

#[test]
fn replay_shows_every_line_once_and_classifies() {
    let mut env = Env::new("unused");
    env.unset("DISCORD_WEBHOOK_URL");
    let (status, out, err) = env.run_to_end(&["--replay", CORPUS]);
    assert!(status.success(), "{err}");
    let corpus = std::fs::read_to_string(CORPUS).unwrap();
    let mut shown: Vec<String> = Vec::new();
    let mut severities = std::collections::HashMap::new();
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let content = v["content"].as_str().unwrap_or("");
        assert!(content.chars().count() <= 2000);
        shown.extend(code_block_lines(content));
        for e in v["embeds"].as_array().into_iter().flatten() {
            let text = code_block_lines(e["description"].as_str().unwrap());
            let sev = e["footer"]["text"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            for t in &text {
                severities.insert(t.clone(), sev.clone());
            }
            shown.extend(text);
        }
    }
    let expected: Vec<String> = corpus
        .lines()
        .map(|l| ekos_log_monitor::format::sanitize(l.as_bytes()))
        .collect();
    // Shown in order, each exactly once (events ride after the lines that
    // precede them in the same message, so compare as multisets too).
    // Lines longer than one message come in pieces: compare the short
    // ones as multisets, and find the long ones in the concatenation.
    let long: Vec<&String> = expected
        .iter()
        .filter(|l| l.chars().count() >= 1900)
        .collect();
    let mut a: Vec<&String> = shown
        .iter()
        .filter(|piece| piece.is_empty() || !long.iter().any(|l| l.contains(piece.as_str())))
        .collect();
    let mut b: Vec<&String> = expected
        .iter()
        .filter(|l| l.chars().count() < 1900)
        .collect();
    a.sort();
    b.sort();
    assert!(
        a == b,
        "every line exactly once: {} shown, {} expected",
        a.len(),
        b.len()
    );
    let joined = shown.concat();
    for long in expected.iter().filter(|l| l.chars().count() >= 1900) {
        assert_eq!(joined.matches(long.as_str()).count(), 1);
    }
    let crit = corpus.lines().find(|l| l.contains(" CRIT ")).unwrap();
    assert_eq!(severities.get(crit).map(String::as_str), Some("critical"));
    let err_line = corpus.lines().find(|l| l.contains("[ERROR]")).unwrap();
    assert_eq!(severities.get(err_line).map(String::as_str), Some("error"));
    let img = corpus
        .lines()
        .find(|l| l.contains("Received image"))
        .unwrap();
    assert_eq!(severities.get(img).map(String::as_str), Some("info"));
    let solved = corpus
        .lines()
        .find(|l| l.contains("Astrometric solver is successful"))
        .unwrap();
    assert_eq!(severities.get(solved).map(String::as_str), Some("success"));
}

/// An incident notice: its embed has fields (and quotes lines), unlike a
/// line's embed.
fn is_incident(body: &serde_json::Value) -> bool {
    body["embeds"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["fields"].as_array().is_some_and(|f| !f.is_empty()))
}

#[test]
fn alerts_go_to_a_second_webhook_and_the_logs_channel_keeps_everything() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let alerts = fake.webhook_url_for("999", "alerts-token");
    env.set("BATCH_SIZE", "10")
        .set("BATCH_TIMEOUT", "0.2")
        .set("ALERTS_WEBHOOK_URL", &alerts)
        .set("ALERTS_MIN_SEVERITY", "error");
    // Incidents are on (the default): they ping in the logs channel, and
    // the alerts channel gets them too (not the lines they stand for),
    // pinging as the rule says.
    env.write_config(
        "[[rule]]\nname = \"indi-driver-crashed\"\nseverity = \"critical\"\nmention = \"<@&424242>\"\n",
    );
    let file = env.logs().join("2026-11-22/log_22-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let lines = vec![
        ekos(
            "INFO",
            "org.kde.kstars.ekos.capture",
            "\"Received image 1 out of 2.\"",
        ),
        ekos(
            "INFO",
            "org.kde.kstars.ekos.guide",
            "\"Autoguiding aborted.\"",
        ),
        ekos(
            "CRIT",
            "org.kde.kstars.indi",
            "INDI driver  \"indi_asi_ccd\"  crashed!",
        ),
        "plain".to_string(),
    ];
    append(&file, &lines);
    let ok = fake.wait_for(Duration::from_secs(10), |m| {
        m.iter()
            .filter(|r| r.webhook_id == "999")
            .map(|r| r.body["embeds"].as_array().map_or(0, |a| a.len()))
            .sum::<usize>()
            >= 2
            && m.iter()
                .any(|r| r.webhook_id != "999" && r.content.contains("plain"))
            && m.iter()
                .filter(|r| r.webhook_id != "999" && is_incident(&r.body))
                .count()
                >= 2
    });
    assert!(ok, "{}", d.stderr());
    let msgs = fake.messages();
    let alert_titles: Vec<String> = msgs
        .iter()
        .filter(|r| r.webhook_id == "999")
        .flat_map(|r| r.body["embeds"].as_array().cloned().unwrap_or_default())
        .map(|e| e["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        alert_titles,
        vec!["Autoguiding aborted", "INDI driver indi_asi_ccd crashed"]
    );
    assert!(
        (msgs.iter())
            .filter(|r| r.webhook_id == "999")
            .all(|r| is_incident(&r.body)),
        "the alerts channel has the incidents"
    );
    let crash_alert = msgs
        .iter()
        .find(|r| r.webhook_id == "999" && r.body.to_string().contains("crashed"))
        .unwrap();
    assert!(
        crash_alert.content.starts_with("<@&424242>"),
        "the alerts copy pings: {}",
        crash_alert.body
    );
    assert_eq!(
        crash_alert.body["allowed_mentions"]["roles"],
        serde_json::json!(["424242"])
    );
    // The logs channel has every line once: three events and one plain line
    // (besides the incidents, whose embeds have fields and quote lines).
    assert_eq!(
        msgs.iter()
            .filter(|r| r.webhook_id != "999" && is_incident(&r.body))
            .count(),
        2,
        "an incident each for the aborted guiding and the crash"
    );
    let mut logs: Vec<String> = Vec::new();
    for r in msgs
        .iter()
        .filter(|r| r.webhook_id != "999" && !is_incident(&r.body))
    {
        logs.extend(code_block_lines(&r.content));
        for e in r.body["embeds"].as_array().into_iter().flatten() {
            logs.extend(code_block_lines(e["description"].as_str().unwrap()));
        }
    }
    assert_eq!(logs, lines);
    assert!(!d.stderr().contains("alerts-token"));
}

#[test]
fn a_burst_goes_as_one_attachment_and_nothing_is_lost() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "10")
        .set("BATCH_TIMEOUT", "0.2")
        .set("ATTACHMENT_THRESHOLD", "100");
    let file = env.logs().join("2026-11-22/log_22-00-00.txt");
    append(&file, &[]);
    let _d = env.start(&[]);
    let toks = crate::support::daemon::tokens("burst", 0..3000);
    let lines: Vec<String> = toks
        .iter()
        .map(|t| format!("{t} debug storm ``` {}", "y".repeat(60)))
        .collect();
    append(&file, &lines);
    let all_in = |m: &[crate::support::fake_discord::Received]| {
        let mut text = String::new();
        for r in m {
            text.push_str(&r.content);
            text.push('\n');
            for (_, data) in &r.attachments {
                text.push_str(&String::from_utf8_lossy(data));
                text.push('\n');
            }
        }
        crate::support::daemon::loss_and_dups(&toks, &[text])
    };
    let ok = fake.wait_for(Duration::from_secs(20), |m| all_in(m).0.is_empty());
    let m = fake.messages();
    assert!(
        ok,
        "lost {} of {}; {} messages; first: {:?} {:?}",
        all_in(&m).0.len(),
        toks.len(),
        m.len(),
        m.first().map(|r| r.content.clone()),
        m.first().and_then(|r| r.attachments.first()).map(|(n, d)| (
            n.clone(),
            String::from_utf8_lossy(&d[..d.len().min(200)]).into_owned()
        ))
    );
    let msgs = fake.messages();
    let (lost, dups) = all_in(&msgs);
    assert!(lost.is_empty() && dups == 0);
    // Without attachments this burst takes about 150 messages.
    assert!(msgs.len() <= 10, "{} requests for a burst", msgs.len());
    let with_files: Vec<_> = msgs.iter().filter(|m| !m.attachments.is_empty()).collect();
    assert!(!with_files.is_empty());
    let data = String::from_utf8_lossy(&with_files[0].attachments[0].1);
    assert!(
        data.contains("debug storm ``` y"),
        "fences are restored in the file"
    );
    assert!(with_files[0].content.contains("lines"));
}

/// Issue 9 bug 1: a CRIT line of about 3,750 code points whose module is
/// very long used to make an embed over 6,000 characters; the packer then
/// returned an empty message and the sender spun on it forever.
#[test]
fn a_long_crit_line_with_a_long_module_is_posted_and_the_next_line_follows() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "10").set("BATCH_TIMEOUT", "0.2");
    let file = env.logs().join("2026-11-22/log_22-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let head = format!(
        "[2026-11-22T22:00:00.000 UTC CRIT ][{}] - ",
        "m".repeat(2500)
    );
    let crit = format!("{head}{}", "z".repeat(3750 - head.chars().count()));
    append(&file, &[crit, "after-the-crit-line".into()]);
    let ok = fake.wait_for(Duration::from_secs(10), |m| {
        m.iter().any(|r| r.content.contains("after-the-crit-line"))
    });
    assert!(ok, "{}", d.stderr());
    let msgs = fake.messages();
    assert_eq!(msgs[0].body["embeds"].as_array().map(Vec::len), Some(1));
    let zs: usize = msgs
        .iter()
        .map(|r| {
            let embeds = r.body["embeds"].as_array().cloned().unwrap_or_default();
            r.content.matches('z').count()
                + embeds
                    .iter()
                    .map(|e| e["description"].as_str().unwrap().matches('z').count())
                    .sum::<usize>()
        })
        .sum();
    assert_eq!(zs, 3750 - head.chars().count(), "the line came out whole");
    assert!(!d.stderr().contains("rejected"), "{}", d.stderr());
}

/// Issue 9 bug 12: a 10 MiB line used to become about 5,000 messages over
/// 90 minutes at the default rate. Folded, it is a handful of uploads and
/// the next line follows within seconds.
#[test]
fn a_10_mib_line_is_a_handful_of_uploads_and_the_next_line_follows() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "10")
        .set("BATCH_TIMEOUT", "0.2")
        .set("RATE_LIMIT_DELAY", "1.0");
    let file = env.logs().join("2026-11-22/log_22-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    let big = "x".repeat(10 * 1024 * 1024);
    let started = std::time::Instant::now();
    append(&file, &[big, "after-the-big-line".into()]);
    let has_next = |m: &[crate::support::fake_discord::Received]| {
        m.iter().any(|r| {
            r.content.contains("after-the-big-line")
                || r.attachments
                    .iter()
                    .any(|(_, data)| String::from_utf8_lossy(data).contains("after-the-big-line"))
        })
    };
    let ok = fake.wait_for(Duration::from_secs(60), has_next);
    let msgs = fake.messages();
    assert!(ok, "{} messages so far\n{}", msgs.len(), d.stderr());
    let xs: usize = msgs
        .iter()
        .map(|r| {
            r.content.matches('x').count()
                + r.attachments
                    .iter()
                    .map(|(_, data)| data.iter().filter(|&&b| b == b'x').count())
                    .sum::<usize>()
        })
        .sum();
    assert!(xs >= 10 * 1024 * 1024, "{xs} x delivered");
    eprintln!(
        "a 10 MiB line: {} requests, the next line after {:.1} s",
        msgs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(msgs.len() <= 12, "{} requests", msgs.len());
}
