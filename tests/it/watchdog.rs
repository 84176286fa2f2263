//! The systemd watchdog is fed on its own clock: events of the supervisor
//! loop (reloads, READY after each reload) arriving more often than the
//! ping period must not postpone `WATCHDOG=1`, or systemd kills a healthy
//! daemon. Found by the emulated arm64 system test: three reloads 4 s apart
//! with `WatchdogSec=12s` starved the watchdog and the service was killed
//! with SIGABRT.

use std::time::{Duration, Instant};

use crate::support::daemon::{Env, append};
use crate::support::fake_discord::FakeDiscord;
use crate::support::notify::NotifySocket;

fn pings(notify: &NotifySocket) -> usize {
    notify
        .messages()
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn reloads_faster_than_the_ping_period_do_not_starve_the_watchdog() {
    let fake = FakeDiscord::start();
    let mut env = Env::new(&fake.webhook_url());
    let notify = NotifySocket::bind(env.dir.path());
    env.set("NOTIFY_SOCKET", notify.path().to_str().unwrap());
    // WatchdogSec=1s: a ping every 0.5 s.
    env.set("WATCHDOG_USEC", "1000000");
    append(&env.logs().join("log_1.txt"), &[]);
    let d = env.start(&[]);
    assert!(
        notify.wait_for(Duration::from_secs(10), |m| m.contains("READY=1")),
        "no READY=1: {:?}\n{}",
        notify.messages(),
        d.stderr()
    );
    notify.clear();
    // A reload every 0.2 s for 3 s: the stimulus's own pace, not a wait.
    let start = Instant::now();
    let mut reloads = 0;
    while start.elapsed() < Duration::from_secs(3) {
        d.signal(libc::SIGHUP);
        reloads += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = pings(&notify);
    // Six periods of 0.5 s: at least three pings even on a loaded machine;
    // none when every event restarts the ping timer.
    assert!(
        n >= 3,
        "{n} WATCHDOG=1 in 3 s with {reloads} reloads:\n{:?}\n{}",
        notify.messages(),
        d.stderr()
    );
    let (status, _, stderr) = d.stop();
    assert!(status.success(), "{stderr}");
}
