//! Runs the real `ekos-log-monitor` binary for integration tests: a temp
//! directory for logs and state, environment-only configuration, stderr
//! captured to a file so tests can read what the daemon logged.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::notify::NotifySocket;

pub const BIN: &str = env!("CARGO_BIN_EXE_ekos-log-monitor");

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A workspace: logs root, state directory, and the environment to use.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub vars: HashMap<String, String>,
    pub config: Option<PathBuf>,
}

impl Env {
    pub fn new(webhook: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let mut vars = HashMap::new();
        vars.insert("DISCORD_WEBHOOK_URL".into(), webhook.to_string());
        vars.insert(
            "EKOS_LOGS_DIRECTORY".into(),
            dir.path().join("logs").display().to_string(),
        );
        vars.insert(
            "STATE_DIRECTORY".into(),
            dir.path().join("state").display().to_string(),
        );
        vars.insert("BATCH_SIZE".into(), "1".into());
        vars.insert("BATCH_TIMEOUT".into(), "0.05".into());
        vars.insert("RATE_LIMIT_DELAY".into(), "0".into());
        vars.insert("LOG_LEVEL".into(), "DEBUG".into());
        Env {
            dir,
            vars,
            config: None,
        }
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.insert(k.into(), v.into());
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.remove(k);
        self
    }

    pub fn write_config(&mut self, toml: &str) {
        let p = self.dir.path().join("config.toml");
        std::fs::write(&p, toml).unwrap();
        self.config = Some(p);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("HOME", self.dir.path());
        c.envs(&self.vars);
        c.current_dir(self.dir.path());
        if let Some(p) = &self.config {
            c.arg("--config").arg(p);
        }
        c.args(args);
        c
    }

    /// Runs a short command (check, test-webhook) to completion.
    pub fn run_to_end(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = self.command(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the daemon and waits until it is ready: `READY=1` on a
    /// notification socket of its own, which the daemon sends once every
    /// source's watches are in place and its files opened (as systemd
    /// waits for it). A test that points `NOTIFY_SOCKET` elsewhere itself
    /// gets the older wait: the log says a file is followed, or that the
    /// daemon waits for its directory.
    pub fn start(&self, args: &[&str]) -> Daemon {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.dir.path().join(format!("daemon-{n}.stderr"));
        let out = self.dir.path().join(format!("daemon-{n}.stdout"));
        let notify = (!self.vars.contains_key("NOTIFY_SOCKET")).then(|| {
            let d = self.dir.path().join(format!("notify-{n}"));
            std::fs::create_dir_all(&d).unwrap();
            NotifySocket::bind(&d)
        });
        let mut command = self.command(args);
        if let Some(s) = &notify {
            command.env("NOTIFY_SOCKET", s.path());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            log,
            out,
            notify: None,
        };
        assert!(
            wait_until(Duration::from_secs(10), || d.stderr().contains("starting:")),
            "daemon did not start: {}",
            d.stderr()
        );
        match &notify {
            Some(s) => {
                let ready = wait_until(Duration::from_secs(30), || {
                    s.messages()
                        .iter()
                        .any(|m| m.lines().any(|l| l == "READY=1"))
                        || d.child.try_wait().ok().flatten().is_some()
                });
                assert!(ready, "daemon not ready after 30 s: {}", d.stderr());
            }
            None => {
                wait_until(Duration::from_secs(5), || {
                    let e = d.stderr();
                    e.contains("following ") && e.matches("following").count() >= 2
                        || e.contains("waiting for")
                });
            }
        }
        d.notify = notify;
        d
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub out: PathBuf,
    /// The notification socket [`Env::start`] gave it, read for as long
    /// as it runs (as systemd does).
    notify: Option<NotifySocket>,
}

impl Daemon {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM and wait for the exit (with a bound).
    pub fn stop(mut self) -> (ExitStatus, Duration, String) {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self
            .wait(Duration::from_secs(20))
            .expect("daemon did not stop within 20 s");
        (status, t.elapsed(), self.stderr())
    }

    pub fn kill9(mut self) -> String {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.stderr()
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends lines to a file (creating it), one write per line.
pub fn append(path: &Path, lines: &[String]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        f.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
}

/// Unique tokens `prefix-000001`... for loss and duplicate counting.
pub fn tokens(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:06}")).collect()
}

/// Counts, for each expected token, how often it occurs in the delivered
/// lines; returns (lost, duplicated).
pub fn loss_and_dups(expected: &[String], delivered: &[String]) -> (Vec<String>, usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in delivered {
        for w in l.split_whitespace() {
            *seen.entry(w).or_default() += 1;
        }
    }
    loss_and_dups_by(expected, |t| seen.get(t).copied().unwrap_or(0))
}

/// (lost, duplicated) among `expected`, given how often each token was seen.
fn loss_and_dups_by(expected: &[String], count: impl Fn(&str) -> usize) -> (Vec<String>, usize) {
    let lost = expected.iter().filter(|t| count(t) == 0).cloned().collect();
    let dups = expected.iter().map(|t| count(t).saturating_sub(1)).sum();
    (lost, dups)
}

/// Counts the words of the accepted messages as they come, each message
/// read once (through `view`, which turns messages into text lines), so
/// waiting for 100,000 lines costs one pass over them, not one per new
/// message while the fake Discord's lock is held (which slowed the fake
/// and the daemon with it).
pub struct Tally<'a> {
    fake: &'a crate::support::fake_discord::FakeDiscord,
    view: fn(&[crate::support::fake_discord::Received]) -> Vec<String>,
    read: usize,
    seen: HashMap<String, usize>,
}

impl<'a> Tally<'a> {
    pub fn new(
        fake: &'a crate::support::fake_discord::FakeDiscord,
        view: fn(&[crate::support::fake_discord::Received]) -> Vec<String>,
    ) -> Self {
        Tally {
            fake,
            view,
            read: 0,
            seen: HashMap::new(),
        }
    }

    /// Reads the messages accepted since the last call.
    pub fn update(&mut self) {
        let new = self.fake.messages_from(self.read);
        self.read += new.len();
        for l in (self.view)(&new) {
            for w in l.split_whitespace() {
                *self.seen.entry(w.to_string()).or_default() += 1;
            }
        }
    }

    /// (lost, duplicated) among `expected`, as [`loss_and_dups`] counts.
    pub fn loss_and_dups(&self, expected: &[String]) -> (Vec<String>, usize) {
        loss_and_dups_by(expected, |t| self.seen.get(t).copied().unwrap_or(0))
    }

    /// Waits until every token of `expected` arrived or `timeout` passed;
    /// returns (lost, duplicated).
    pub fn wait_all(&mut self, expected: &[String], timeout: Duration) -> (Vec<String>, usize) {
        self.wait_all_with(expected, timeout, || {})
    }

    /// [`Self::wait_all`], calling `each_round` after every look (to sample
    /// the daemon meanwhile).
    pub fn wait_all_with(
        &mut self,
        expected: &[String],
        timeout: Duration,
        mut each_round: impl FnMut(),
    ) -> (Vec<String>, usize) {
        let deadline = Instant::now() + timeout;
        // Tokens mostly arrive in order: the first one missing is where
        // the next look starts.
        let mut first_missing = 0;
        loop {
            self.update();
            each_round();
            while first_missing < expected.len()
                && self.seen.contains_key(expected[first_missing].as_str())
            {
                first_missing += 1;
            }
            if first_missing == expected.len() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.fake
                .wait_for_more_than(self.read, left.min(Duration::from_millis(200)));
        }
        self.loss_and_dups(expected)
    }
}

/// What `notices.json` in the state directory `state` says: the keys whose
/// message is posted (its id kept), and the keys of the notices still
/// waiting (saved before they are sent, gone once accepted).
pub fn notice_keys(state: &Path) -> (Vec<String>, Vec<String>) {
    let s = ekos_log_monitor::sender::notices::load(&state.join("notices.json"));
    let kept = (s.kept.values())
        .flat_map(|m| m.iter().filter(|(_, k)| k.id.is_some()))
        .map(|(key, _)| key.clone())
        .collect();
    let pending = s
        .pending
        .values()
        .flatten()
        .map(|p| p.key.clone())
        .collect();
    (kept, pending)
}
