//! The heartbeat against a loopback monitor: pings while healthy, `/fail`
//! while Discord fails, pings again once it works; a failing monitor is
//! logged once and never holds up delivery; the monitor's token is never
//! logged.

use std::time::Duration;

use crate::support::daemon::{Env, append, wait_until};
use crate::support::fake_discord::{FakeDiscord, Mode, delivered};
use crate::support::pings::PingServer;

const PING: &str = "/ping/0f1e2d3c-secret-monitor-token";
const FAIL: &str = "/ping/0f1e2d3c-secret-monitor-token/fail";

#[test]
fn pings_while_healthy_fail_while_discord_fails_and_pings_again() {
    let fake = FakeDiscord::start();
    let monitor = PingServer::start();
    let mut env = Env::new(&fake.webhook_url());
    env.set("HEARTBEAT_URL", &monitor.url(PING))
        .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22").join("log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);

    assert!(
        wait_until(Duration::from_secs(10), || monitor.count(PING) >= 2),
        "no pings: {:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    assert_eq!(monitor.count(FAIL), 0);

    // Discord answers 503 to everything: the line cannot be posted, and
    // after one interval of failing the heartbeat says so.
    fake.set_mode(Mode::Down);
    append(&file, &["line during the outage".to_string()]);
    assert!(
        wait_until(Duration::from_secs(15), || monitor.count(FAIL) >= 1),
        "no /fail: {:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    // While failing, no plain ping.
    let first_fail = monitor
        .gets()
        .into_iter()
        .find(|(p, _)| p == FAIL)
        .unwrap()
        .1;
    let pings_then = monitor.count(PING);

    fake.set_mode(Mode::Normal);
    assert!(
        fake.wait_for(Duration::from_secs(30), |m| delivered(m)
            .iter()
            .any(|l| l == "line during the outage")),
        "the line was not delivered after the outage"
    );
    assert!(
        wait_until(Duration::from_secs(10), || monitor.count(PING) > pings_then),
        "no ping after recovery: {:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    let gets = monitor.gets();
    let last_fail = gets.iter().rev().find(|(p, _)| p == FAIL).unwrap().1;
    assert!(
        !gets
            .iter()
            .any(|(p, t)| p == PING && *t > first_fail && *t < last_fail),
        "a plain ping between two /fail: {gets:?}"
    );

    let (status, _, log) = d.stop();
    assert!(status.success());
    assert!(
        log.contains("heartbeat: reporting a failure to http://127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains("heartbeat: healthy again"), "{log}");
    assert!(!log.contains("secret-monitor-token"), "{log}");
}

#[test]
fn a_failing_monitor_is_logged_once_and_does_not_stop_delivery() {
    let fake = FakeDiscord::start();
    let monitor = PingServer::start();
    monitor.set_failing(true);
    let mut env = Env::new(&fake.webhook_url());
    env.set("HEARTBEAT_URL", &monitor.url(PING))
        .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22").join("log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    assert!(wait_until(Duration::from_secs(10), || monitor.count(PING) >= 3));
    append(&file, &["still delivered".to_string()]);
    assert!(fake.wait_for(Duration::from_secs(10), |m| {
        delivered(m).iter().any(|l| l == "still delivered")
    }));
    monitor.set_failing(false);
    assert!(wait_until(Duration::from_secs(10), || d
        .stderr()
        .contains("heartbeat works again")));
    let log = d.stderr();
    assert_eq!(log.matches("heartbeat failed").count(), 1, "{log}");
    assert!(
        log.contains("heartbeat failed: GET http://127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("secret-monitor-token"), "{log}");
}

/// Discord unreachable from boot (connection refused) and nothing to
/// post: the probes fail, and after one interval the monitor hears
/// `/fail`, never a healthy ping; neither the monitor's nor the webhook's
/// token is logged. Once Discord answers the probes, pings come.
#[test]
fn discord_unreachable_from_boot_with_nothing_to_post_is_a_failure() {
    let fake = FakeDiscord::start();
    let monitor = PingServer::start();
    let url = fake.webhook_url();
    let token = url.rsplit('/').next().unwrap().to_string();
    fake.set_mode(Mode::Refuse);
    let mut env = Env::new(&url);
    env.set("HEARTBEAT_URL", &monitor.url(PING))
        .set("HEARTBEAT_INTERVAL", "1");
    let file = env.logs().join("2026-11-22").join("log_21-00-00.txt");
    append(&file, &[]);
    let d = env.start(&[]);
    assert!(
        wait_until(Duration::from_secs(15), || monitor.count(FAIL) >= 2),
        "no /fail: {:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    assert_eq!(monitor.count(PING), 0, "{:?}", monitor.gets());
    fake.set_mode(Mode::Normal);
    assert!(
        wait_until(Duration::from_secs(15), || monitor.count(PING) >= 1),
        "no ping once Discord answers: {:?}\n{}",
        monitor.gets(),
        d.stderr()
    );
    assert!(fake.count_probes() >= 1);
    assert!(fake.messages().is_empty(), "a probe posts nothing");
    let (status, _, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("heartbeat: reporting a failure"), "{log}");
    assert!(!log.contains("secret-monitor-token"), "{log}");
    assert!(!log.contains(&token), "{log}");
}

/// A deleted webhook (404 Unknown Webhook) from boot is a failure too;
/// a rate-limited one (429 to the probe) is healthy.
#[test]
fn a_deleted_webhook_fails_and_a_rate_limited_one_is_healthy() {
    for (fault, healthy) in [
        (crate::support::fake_discord::Fault::not_found(), false),
        (crate::support::fake_discord::Fault::RateLimited(30.0), true),
    ] {
        let fake = FakeDiscord::start();
        let monitor = PingServer::start();
        let url = fake.webhook_url();
        let id = url.rsplit('/').nth(1).unwrap().to_string();
        fake.set_hook_fault(&id, Some(fault.clone()));
        let mut env = Env::new(&url);
        env.set("HEARTBEAT_URL", &monitor.url(PING))
            .set("HEARTBEAT_INTERVAL", "1");
        let file = env.logs().join("2026-11-22").join("log_21-00-00.txt");
        append(&file, &[]);
        let d = env.start(&[]);
        let (want, other) = if healthy { (PING, FAIL) } else { (FAIL, PING) };
        assert!(
            wait_until(Duration::from_secs(15), || monitor.count(want) >= 2),
            "{fault:?}: {:?}\n{}",
            monitor.gets(),
            d.stderr()
        );
        assert_eq!(monitor.count(other), 0, "{fault:?}: {:?}", monitor.gets());
        assert!(fake.count_faulted() >= 1);
        let (status, _, log) = d.stop();
        assert!(status.success(), "{log}");
    }
}
