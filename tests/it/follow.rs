//! The real binary against a fake Discord that enforces Discord's limits:
//! following, batching and packing, rate limits, outages, mentions,
//! secrecy of the token, configuration errors and --dry-run.

use std::time::{Duration, Instant};

use crate::support::daemon::{Env, append, loss_and_dups, tokens, wait_until};
use crate::support::fake_discord::{FakeDiscord, Mode, Options, code_block_lines, delivered};

fn today_file(env: &Env) -> std::path::PathBuf {
    env.logs().join("2026-11-22").join("log_21-00-00.txt")
}

#[test]
fn lines_arrive_in_order_quickly_without_429() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &["before start".to_string()]);
    let d = env.start(&[]);
    let toks = tokens("order", 0..40);
    let mut latencies = Vec::new();
    for t in &toks {
        let before = fake.messages().len();
        let t0 = Instant::now();
        append(&file, std::slice::from_ref(t));
        assert!(
            fake.wait_for(Duration::from_secs(15), |m| m.len() > before),
            "line {t} never arrived"
        );
        latencies.push(t0.elapsed());
        // Stay under 5 requests per 2 s so no batching is needed.
        std::thread::sleep(Duration::from_millis(420));
    }
    let lines = delivered(&fake.messages());
    assert_eq!(
        lines, toks,
        "in order, once, and the line from before the start is not sent"
    );
    assert_eq!(fake.count_429(), 0);
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    let (status, took, _) = d.stop();
    assert!(status.success());
    assert!(took < Duration::from_secs(10));
}

#[test]
fn steady_stream_faster_than_the_limit_sees_no_429_and_loses_nothing() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &[]);
    let _d = env.start(&[]);
    let toks = tokens("steady", 0..80);
    for chunk in toks.chunks(2) {
        append(&file, chunk);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fake.wait_for(Duration::from_secs(30), |m| delivered(m).len()
            >= toks.len())
    );
    assert_eq!(delivered(&fake.messages()), toks);
    assert_eq!(
        fake.count_429(),
        0,
        "the client must wait for the bucket, not collect 429s"
    );
}

#[test]
fn a_burst_is_packed_into_full_messages() {
    let fake = FakeDiscord::start_with(Options {
        rate_limit: Some((50, Duration::from_secs(1))),
        ..Options::default()
    });
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "10").set("BATCH_TIMEOUT", "0.2");
    let file = today_file(&env);
    append(&file, &[]);
    let _d = env.start(&[]);
    let toks: Vec<String> = tokens("burst", 0..1500)
        .into_iter()
        .map(|t| format!("{t} {}", "x".repeat(88)))
        .collect();
    append(&file, &toks);
    assert!(
        fake.wait_for(Duration::from_secs(30), |m| delivered(m).len()
            >= toks.len())
    );
    let msgs = fake.messages();
    assert_eq!(delivered(&msgs), toks);
    let sizes: Vec<usize> = msgs.iter().map(|m| m.content.chars().count()).collect();
    assert!(sizes.iter().all(|&s| s <= 2000));
    let full = &sizes[..sizes.len() - 1];
    let mean = full.iter().sum::<usize>() / full.len();
    assert!(
        mean >= 1900,
        "mean code points per message {mean}: {sizes:?}"
    );
}

#[test]
fn an_outage_loses_nothing() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("RATE_LIMIT_DELAY", "0.2");
    let file = today_file(&env);
    append(&file, &[]);
    let d = env.start(&[]);
    let toks = tokens("outage", 0..60);
    append(&file, &toks[..10]);
    assert!(fake.wait_for(Duration::from_secs(15), |m| delivered(m).len() >= 10));
    fake.set_mode(Mode::Fail5xx(3));
    append(&file, &toks[10..20]);
    std::thread::sleep(Duration::from_millis(300));
    fake.set_mode(Mode::Refuse);
    append(&file, &toks[20..40]);
    std::thread::sleep(Duration::from_secs(2));
    fake.set_mode(Mode::Normal);
    append(&file, &toks[40..]);
    assert!(
        fake.wait_for(Duration::from_secs(40), |m| delivered(m).len()
            >= toks.len()),
        "{}",
        d.stderr()
    );
    let (lost, dups) = loss_and_dups(&toks, &delivered(&fake.messages()));
    assert!(lost.is_empty(), "lost {lost:?}");
    assert_eq!(dups, 0);
    let err = d.stderr();
    assert!(!err.contains(FakeDiscord::TOKEN), "token leaked: {err}");
}

#[test]
fn a_new_dated_folder_is_followed_within_a_second() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    append(&today_file(&env), &["old session".to_string()]);
    let _d = env.start(&[]);
    let t0 = Instant::now();
    let next = env.logs().join("2026-11-23").join("log_00-10-00.txt");
    append(
        &next,
        &["new session first line".to_string(), "second".to_string()],
    );
    assert!(fake.wait_for(Duration::from_secs(15), |m| delivered(m).len() >= 2));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        delivered(&fake.messages()),
        vec!["new session first line", "second"]
    );
}

#[test]
fn mentions_and_fences_in_log_lines_are_harmless() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &[]);
    let _d = env.start(&[]);
    let nasty = "@everyone @here <@123456> <@&654321> ``` escaped? ```".to_string();
    append(&file, std::slice::from_ref(&nasty));
    append(&file, &["bin\u{0}ary \u{1b}[31m".to_string()]);
    assert!(fake.wait_for(Duration::from_secs(15), |m| delivered(m).len() >= 2));
    for m in fake.messages() {
        assert_eq!(m.body["allowed_mentions"]["parse"], serde_json::json!([]));
        // Exactly one code block: the line could not close it.
        assert_eq!(m.content.matches("```").count(), 2, "{}", m.content);
    }
    let lines = delivered(&fake.messages());
    assert_eq!(lines[0], nasty);
    assert_eq!(lines[1], "bin\u{2400}ary \u{241b}[31m");
}

#[test]
fn sigterm_posts_what_is_queued_and_exits_zero() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "100").set("BATCH_TIMEOUT", "30");
    let file = today_file(&env);
    append(&file, &[]);
    let d = env.start(&[]);
    append(&file, &tokens("queued", 0..3));
    std::thread::sleep(Duration::from_millis(300));
    assert!(fake.messages().is_empty(), "batch timeout is 30 s");
    let (status, took, _) = d.stop();
    assert!(status.success());
    assert!(took < Duration::from_secs(10));
    assert_eq!(delivered(&fake.messages()), tokens("queued", 0..3));
}

#[test]
fn a_deleted_webhook_is_reported_once_and_not_hammered() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &[]);
    let d = env.start(&[]);
    fake.set_mode(Mode::NotFound);
    for t in tokens("gone", 0..5) {
        append(&file, &[t]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wait_until(Duration::from_secs(15), || d
        .stderr()
        .contains("webhook was deleted")));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fake.requests(), 1, "one request, then a long pause");
    let err = d.stderr();
    assert_eq!(err.matches("webhook was deleted").count(), 1, "{err}");
    assert!(!err.contains(FakeDiscord::TOKEN));
}

#[test]
fn bad_configuration_stops_startup_with_one_clear_line() {
    let fake = FakeDiscord::start();
    let cases: &[(&str, &str, &str)] = &[
        (
            "BATCH_SIZE",
            "ten",
            "BATCH_SIZE = \"ten\": expected a whole number of lines, 1 or more",
        ),
        (
            "BATCH_TIMEOUT",
            "-2",
            "BATCH_TIMEOUT = \"-2\": expected a number of seconds",
        ),
        (
            "LOG_LEVEL",
            "LOUD",
            "LOG_LEVEL = \"LOUD\": expected one of DEBUG, INFO, WARNING, ERROR",
        ),
        (
            "DISCORD_WEBHOOK_URL",
            "http://example.com/api/webhooks/1/abcsecret",
            "expected https://",
        ),
        (
            "DISCORD_WEBHOOK_URL",
            "https://example.com/hook/abcsecret",
            "is not a Discord webhook URL",
        ),
    ];
    for (k, v, want) in cases {
        let mut env = Env::new(&fake.webhook_url());
        env.set(k, v);
        let (status, _, err) = env.run_to_end(&[]);
        assert_eq!(status.code(), Some(1), "{k}={v}: {err}");
        assert!(err.contains(want), "{k}={v}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("abcsecret"), "{err}");
    }
    let mut env = Env::new(&fake.webhook_url());
    env.unset("DISCORD_WEBHOOK_URL");
    let (status, _, err) = env.run_to_end(&[]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("DISCORD_WEBHOOK_URL is not set"), "{err}");
}

#[test]
fn check_reports_settings_without_the_token() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    append(&today_file(&env), &["x".to_string()]);
    let (status, out, _) = env.run_to_end(&["check"]);
    assert!(status.success(), "{out}");
    assert!(out.contains("BATCH_SIZE = 1"));
    assert!(
        out.contains("would follow:") && out.contains("log_21-00-00.txt"),
        "{out}"
    );
    assert!(!out.contains(FakeDiscord::TOKEN), "{out}");
    assert!(out.contains("****"));

    let mut env = Env::new(&fake.webhook_url());
    env.set("EKOS_LOGS_DIRECTORY", "/nonexistent/kstars/logs");
    let (status, out, _) = env.run_to_end(&["check"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("/nonexistent/kstars/logs"));
}

/// The real binary's command line: `-c` works before and after the
/// command and is in `--help`; a usage error exits 2 before anything else
/// happens (no config read, no file followed).
#[test]
fn command_line_usage_and_help() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    env.unset("BATCH_SIZE").write_config("batch_size = 7\n");
    let cfg = env.config.take().unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [&["-c", cfg, "check"][..], &["check", "-c", cfg]] {
        let (status, out, _) = env.run_to_end(args);
        assert!(status.success(), "{args:?}: {out}");
        assert!(out.contains("BATCH_SIZE = 7"), "{args:?}: {out}");
    }
    let (status, out, _) = env.run_to_end(&["--help"]);
    assert!(status.success());
    for opt in [
        "-c, --config",
        "--dry-run",
        "--replay",
        "setup",
        "test-webhook",
    ] {
        assert!(out.contains(opt), "{opt} missing from --help:\n{out}");
    }
    for bad in [
        &["--bogus"][..],
        &["check", "frob"],
        &["--replay", cfg, "check"],
    ] {
        let (status, out, err) = env.run_to_end(bad);
        assert_eq!(status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            out.is_empty() && err.starts_with("error: "),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn run_waits_for_a_missing_logs_directory() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let logs = env.dir.path().join("later/logs");
    env.set("EKOS_LOGS_DIRECTORY", logs.to_str().unwrap());
    let d = env.start(&[]);
    assert!(d.stderr().contains("does not exist yet"), "{}", d.stderr());
    append(
        &logs.join("2026-11-22/log_01-02-03.txt"),
        &["appeared".to_string()],
    );
    assert!(
        fake.wait_for(Duration::from_secs(15), |m| !m.is_empty()),
        "{}",
        d.stderr()
    );
    assert_eq!(delivered(&fake.messages()), vec!["appeared"]);
}

#[test]
fn test_webhook_reports_discords_answer() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let (status, out, _) = env.run_to_end(&["test-webhook"]);
    assert!(status.success(), "{out}");
    assert!(out.contains("accepted"));
    assert_eq!(fake.messages().len(), 1);
    fake.set_mode(Mode::NotFound);
    let (status, out, _) = env.run_to_end(&["test-webhook"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        out.contains("404") && !out.contains(FakeDiscord::TOKEN),
        "{out}"
    );
}

#[test]
fn dry_run_prints_request_bodies_and_needs_no_webhook() {
    let mut env = Env::new("unused");
    env.unset("DISCORD_WEBHOOK_URL");
    let file = today_file(&env);
    append(&file, &[]);
    let d = env.start(&["--dry-run"]);
    append(&file, &["dry one".to_string(), "dry two".to_string()]);
    assert!(wait_until(Duration::from_secs(15), || d
        .stdout()
        .lines()
        .count()
        >= 1));
    let out = d.stdout();
    let mut lines = Vec::new();
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["allowed_mentions"]["parse"], serde_json::json!([]));
        lines.extend(code_block_lines(v["content"].as_str().unwrap()));
    }
    assert_eq!(lines, vec!["dry one", "dry two"]);
    // Idle now: it must sleep, not spin (with only inline sinks the
    // sender's answer channel once had no sender left and was always
    // ready). A spinning thread burns the whole second; an idle daemon a
    // few milliseconds.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime, fields 14 and 15 of stat(5), in clock ticks.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let c0 = cpu();
    // A measuring window, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let used = cpu() - c0;
    assert!(
        used * 4 < hz,
        "idle --dry-run used {used}/{hz} s of CPU in 1 s"
    );
}

#[test]
fn sighup_reloads_the_configuration_and_a_bad_one_keeps_the_old() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let a = env.dir.path().join("a");
    let b = env.dir.path().join("b");
    env.unset("EKOS_LOGS_DIRECTORY");
    let source = |root: &std::path::Path| {
        format!(
            "[[source]]\nname = \"s\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n",
            root.display()
        )
    };
    append(&a.join("x.log"), &[]);
    append(&b.join("y.log"), &[]);
    env.write_config(&source(&a));
    let mut d = env.start(&[]);
    append(&a.join("x.log"), &["from a".to_string()]);
    assert!(fake.wait_for(Duration::from_secs(15), |m| !delivered(m).is_empty()));

    std::fs::write(env.config.as_ref().unwrap(), source(&b)).unwrap();
    d.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(15), || d
        .stderr()
        .contains("configuration reloaded")));
    append(&b.join("y.log"), &["from b".to_string()]);
    assert!(
        fake.wait_for(Duration::from_secs(15), |m| delivered(m).len() >= 2),
        "{}",
        d.stderr()
    );

    std::fs::write(env.config.as_ref().unwrap(), "follow_everything = true\n").unwrap();
    d.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(15), || d
        .stderr()
        .contains("reload failed, keeping the running configuration")));
    assert!(
        d.wait(Duration::from_millis(300)).is_none(),
        "still running"
    );
    append(&b.join("y.log"), &["still b".to_string()]);
    assert!(fake.wait_for(Duration::from_secs(15), |m| delivered(m).len() >= 3));
    assert_eq!(
        delivered(&fake.messages()),
        vec!["from a", "from b", "still b"]
    );
}

#[test]
fn two_daemons_sharing_a_webhook_honour_429s_and_lose_nothing() {
    // Each daemon alone stays under the limit; together they exceed it, so
    // the fake answers 429 with retry_after and both must wait and retry.
    let fake = FakeDiscord::start();
    let mut daemons = Vec::new();
    let mut all = Vec::new();
    let mut envs = Vec::new();
    for k in 0..2 {
        let mut env = Env::new(&fake.webhook_url());
        env.set("BATCH_SIZE", "1").set("BATCH_TIMEOUT", "0.05");
        let file = today_file(&env);
        append(&file, &[]);
        daemons.push(env.start(&[]));
        envs.push((env, file, k));
    }
    for round in 0..30 {
        for (_, file, k) in &envs {
            let t = format!("share{k}-{round:03}");
            append(file, std::slice::from_ref(&t));
            all.push(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fake.wait_for(Duration::from_secs(60), |m| delivered(m).len() >= all.len()),
        "{}",
        daemons[0].stderr()
    );
    let (lost, dups) = loss_and_dups(&all, &delivered(&fake.messages()));
    assert!(lost.is_empty(), "lost {lost:?}");
    assert_eq!(dups, 0);
    assert!(fake.count_429() > 0, "the test must provoke 429s");
    // A 429 is answered by waiting: never a storm of retries.
    assert!(fake.count_429() <= 20, "{} 429s", fake.count_429());
    let err: String = daemons.iter().map(|d| d.stderr()).collect();
    assert!(err.contains("rate limit hit (HTTP 429)"));
}

#[test]
fn sigterm_during_a_post_that_never_answers_exits_within_10_s_and_keeps_the_line() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &[]);
    let d = env.start(&[]);
    fake.set_mode(Mode::Slow(Duration::from_secs(3600)));
    append(&file, &tokens("hung", 0..1));
    assert!(fake.wait_for_requests(1, Duration::from_secs(15)));
    let (status, took, err) = d.stop();
    assert!(status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    eprintln!("stop with a POST that never answers took {took:?}");
    // The abandoned POST's line was not committed: the next start posts it.
    fake.set_mode(Mode::Normal);
    let d = env.start(&[]);
    assert!(
        fake.wait_for(Duration::from_secs(10), |m| delivered(m)
            == tokens("hung", 0..1)),
        "{}",
        d.stderr()
    );
}

/// A second SIGTERM while the first one's shutdown is under way (a POST
/// that never answers holds it for a few seconds) changes nothing: the
/// same bounded, clean exit, and the unanswered line is kept.
#[test]
fn a_second_sigterm_during_the_shutdown_changes_nothing() {
    let fake = FakeDiscord::start();
    let env = Env::new(&fake.webhook_url());
    let file = today_file(&env);
    append(&file, &[]);
    let mut d = env.start(&[]);
    fake.set_mode(Mode::Slow(Duration::from_secs(3600)));
    append(&file, &tokens("twice", 0..1));
    assert!(fake.wait_for_requests(1, Duration::from_secs(15)));
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(15), || d
            .stderr()
            .contains("stopping: posting what is queued")),
        "{}",
        d.stderr()
    );
    d.signal(libc::SIGTERM);
    let status = d
        .wait(Duration::from_secs(20))
        .expect("daemon did not stop within 20 s");
    let took = t.elapsed();
    assert!(status.success(), "{status:?}: {}", d.stderr());
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert_eq!(d.stderr().matches("stopping: posting").count(), 1);
    drop(d);
    fake.set_mode(Mode::Normal);
    let d = env.start(&[]);
    assert!(
        fake.wait_for(Duration::from_secs(10), |m| delivered(m)
            == tokens("twice", 0..1)),
        "{}",
        d.stderr()
    );
}
