//! `ekos-log-monitor setup` driven as a person and as a script would, on a
//! made-up machine: a test root (the hidden `--root DIR`) holding
//! /etc/passwd, the shipped config.toml, homes with KStars logs, a 0640
//! script-log tree and /run/systemd/system, against the fake Discord.
//!
//! The interactive runs go through a real pseudo-terminal (openpty), so the
//! terminal's own echo is in play: the webhook token must not appear in
//! anything the terminal shows, and a Ctrl-C at the hidden prompt must give
//! the echo back. systemctl is printed, not run, under a test root; the
//! booted-systemd run is packaging/system-test.d/setup.sh.

use crate::support::fake_discord;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ekos_log_monitor::setup::access;
use fake_discord::{FakeDiscord, Fault};

const BIN: &str = env!("CARGO_BIN_EXE_ekos-log-monitor");
const SVC_UID: u32 = 999;
const SHIPPED: &str = include_str!("../../packaging/config.toml");
const TIMEOUT: Duration = Duration::from_secs(30);

/// A machine in a directory.
fn machine() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let mk = |d: &str, mode: u32| {
        std::fs::create_dir_all(r.join(d)).unwrap();
        std::fs::set_permissions(r.join(d), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |f: &str, text: &str, mode: u32| {
        std::fs::write(r.join(f), text).unwrap();
        std::fs::set_permissions(r.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mk("run/systemd/system", 0o755);
    mk("etc/ekos-log-monitor", 0o755);
    file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n\
         ekos-log-monitor:x:999:999::/nonexistent:/usr/sbin/nologin\n\
         astro:x:1000:1000::/home/astro:/bin/bash\n\
         bob:x:1001:1001::/home/bob:/bin/bash\n\
         carol:x:1002:1002::/home/carol:/bin/bash\n",
        0o644,
    );
    file("etc/ekos-log-monitor/config.toml", SHIPPED, 0o640);
    // As KStars writes them (umask 022) in 0700 homes; carol never ran it.
    for user in ["astro", "bob"] {
        mk(
            &format!("home/{user}/.local/share/kstars/logs/2026-01-17"),
            0o755,
        );
        file(
            &format!("home/{user}/.local/share/kstars/logs/2026-01-17/log_21-04-11.txt"),
            "[2026-01-17T21:04:11.000 UTC INFO ][org.kde.kstars.ekos] - \"hello\"\n",
            0o644,
        );
        std::fs::set_permissions(
            r.join(format!("home/{user}")),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
    }
    mk("home/carol", 0o700);
    // Script logs as root writes them: not readable by the service.
    mk("srv/service/event/deploy", 0o750);
    file("srv/service/event/deploy/deploy.log", "started\n", 0o640);
    t
}

/// Every file under the root: mode and content (symlinks and dirs by mode).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.mode(), content),
            );
        }
    }
    out
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

/// The binary on a pseudo-terminal: what it shows is collected by a
/// reader thread; answers are typed into the master side.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    shown: Arc<(Mutex<Vec<u8>>, Condvar)>,
    cursor: usize,
}

impl Pty {
    fn spawn(root: &Path, args: &[&str]) -> Pty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: out-pointers to two ints; no name, default settings.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: openpty returned two fresh descriptors we now own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let mut cmd = Command::new(BIN);
        cmd.arg("setup")
            .arg("--root")
            .arg(root)
            .args(args)
            .env("SUDO_USER", "bob")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe. The terminal
        // becomes the child's controlling terminal, so Ctrl-C is SIGINT.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let master = std::fs::File::from(master);
        let shown = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (mut r, sh) = (master.try_clone().unwrap(), shown.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child closed its side.
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sh.0.lock().unwrap().extend_from_slice(&buf[..n]);
                sh.1.notify_all();
            }
        });
        Pty {
            master,
            child,
            shown,
            cursor: 0,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.shown.0.lock().unwrap()).into_owned()
    }

    /// Waits until `what` is shown after what was already expected.
    fn expect(&mut self, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = self.shown.0.lock().unwrap();
        loop {
            let s = String::from_utf8_lossy(&buf[self.cursor..]).into_owned();
            if let Some(i) = s.find(what) {
                self.cursor += s[..i + what.len()].len();
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what:?}; the terminal shows:\n{}",
                String::from_utf8_lossy(&buf)
            );
            buf = self.shown.1.wait_timeout(buf, left).unwrap().0;
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "setup did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the terminal echoes typed characters now.
    fn echoes(&self) -> bool {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) },
            0
        );
        t.c_lflag & libc::ECHO != 0
    }
}

fn run_yes(root: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .arg("setup")
        .arg("--root")
        .arg(root)
        .arg("--yes")
        .args(args)
        .env_remove("SUDO_USER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new file holding `url`, as an operator would prepare it.
fn webhook_file(dir: &Path, url: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let f = dir.join(format!("webhook-{n}"));
    std::fs::write(&f, format!("{url}\n")).unwrap();
    f
}

#[test]
fn interactive_run_on_a_terminal_hides_the_webhook_and_writes_the_files() {
    let fake = FakeDiscord::start();
    let url = fake.webhook_url_for("4242", "pty-SECRET-token_xyz");
    let m = machine();
    let root = m.path();

    let mut pty = Pty::spawn(root, &[]);
    pty.expect("Webhook URL (not shown): ");
    pty.type_line(&url);
    pty.expect("KStars log directories:");
    // bob ran sudo: listed first; carol has no KStars logs: not listed.
    pty.expect("1) bob");
    pty.expect("2) astro");
    pty.expect("Follow which? (numbers separated by spaces, or none) [1 2] ");
    pty.type_line("2");
    pty.expect("Follow the script logs in /srv/service/event? [Y/n] ");
    pty.type_line("");
    pty.expect("Discord accepted the test message.");
    pty.expect("setfacl -R -m u:ekos-log-monitor:rX -m d:u:ekos-log-monitor:rX /srv/service/event");
    pty.expect("Apply? [Y/n] ");
    pty.type_line("y");
    pty.expect("(test root) would run: systemctl daemon-reload");
    pty.expect("(test root) would run: systemctl start ekos-log-monitor.service");
    let st = pty.wait();
    let shown = pty.text();
    assert!(st.success(), "{st:?}\n{shown}");
    assert!(!shown.contains("SECRET"), "the token was shown:\n{shown}");
    assert!(shown.contains("/api/webhooks/4242/****"), "{shown}");

    // The test message, and nothing else.
    let msgs = fake.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].content.contains("set up on"), "{}", msgs[0].content);

    // The credential: the URL, root-only.
    assert_eq!(
        read(root, "etc/ekos-log-monitor/webhook"),
        format!("{url}\n")
    );
    let mode = std::fs::metadata(root.join("etc/ekos-log-monitor/webhook"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    let dropins = "etc/systemd/system/ekos-log-monitor.service.d";
    assert!(
        read(root, &format!("{dropins}/webhook-credential.conf")).contains(
            "\n[Service]\nLoadCredential=discord-webhook:/etc/ekos-log-monitor/webhook\n"
        )
    );
    let home = read(root, &format!("{dropins}/read-home-logs.conf"));
    assert!(
        home.contains(
            "\nProtectHome=tmpfs\nBindReadOnlyPaths=-/home/astro/.local/share/kstars/logs\n"
        ),
        "{home}"
    );
    assert!(!home.contains("bob"), "{home}");
    // The conffile: the user's comments kept, two settings added.
    let cfg = read(root, "etc/ekos-log-monitor/config.toml");
    for l in SHIPPED.lines() {
        assert!(cfg.contains(l), "lost line {l:?}");
    }
    assert!(cfg.contains("\nekos_logs_directory = \"/home/astro/.local/share/kstars/logs\"\n"));
    assert!(cfg.contains("[[source]]\nname = \"scripts\"\nroot = \"/srv/service/event\"\n"));
    assert!(!cfg.contains("bob"));
    let mode = std::fs::metadata(root.join("etc/ekos-log-monitor/config.toml"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o640, "the conffile keeps its mode");
    // The 0640 root tree got an ACL; the KStars tree needed none.
    let log = root.join("srv/service/event/deploy/deploy.log");
    assert!(access::may(&log, SVC_UID, &[SVC_UID], access::R).unwrap());
    assert!(
        access::first_unreadable(&root.join("srv/service/event"), SVC_UID, &[SVC_UID])
            .unwrap()
            .is_none()
    );
    assert!(
        !shown.contains("setfacl -R -m u:ekos-log-monitor:rX -m d:u:ekos-log-monitor:rX /home")
    );

    // Again, keeping everything: the current settings are the defaults,
    // nothing is written, nothing is posted.
    let before = snapshot(root);
    let mut pty = Pty::spawn(root, &[]);
    pty.expect("Keep the current webhook http://127.0.0.1:");
    pty.expect("/api/webhooks/4242/****? [Y/n] ");
    pty.type_line("");
    pty.expect("2) astro");
    pty.expect("[followed]");
    pty.expect("[2] ");
    pty.type_line("");
    pty.expect("Follow the script logs in /srv/service/event? [Y/n] ");
    pty.type_line("");
    pty.expect("Nothing to change.");
    let st = pty.wait();
    assert!(st.success(), "{}", pty.text());
    assert!(!pty.text().contains("Apply?"));
    assert_eq!(snapshot(root), before);
    assert_eq!(fake.messages().len(), 1);

    // Ctrl-C at the hidden prompt: echo back on, nothing changed.
    let mut pty = Pty::spawn(root, &[]);
    pty.expect("? [Y/n] ");
    pty.type_line("n");
    pty.expect("Webhook URL (not shown): ");
    assert!(!pty.echoes(), "echo is on at the hidden prompt");
    pty.master.write_all(b"half-typed\x03").unwrap();
    let st = pty.wait();
    assert_eq!(st.code(), Some(130), "{}", pty.text());
    assert!(pty.echoes(), "echo left off after Ctrl-C");
    pty.expect("interrupted: nothing was changed");
    assert_eq!(snapshot(root), before);
}

#[test]
fn non_interactive_run_then_rerun_with_fewer_flags_keeps_the_rest() {
    let fake = FakeDiscord::start();
    let url = fake.webhook_url_for("77", "yes-token");
    let m = machine();
    let root = m.path();
    let answers = tempfile::tempdir().unwrap();
    let f = webhook_file(answers.path(), &url);

    let (st, out, err) = run_yes(
        root,
        &[
            "--webhook-file",
            f.to_str().unwrap(),
            "--ekos-user",
            "astro",
            "--ekos-user",
            "bob",
            "--scripts",
            "/srv/service/event",
        ],
    );
    assert!(st.success(), "{out}\n{err}");
    assert!(!out.contains("yes-token") && !err.contains("yes-token"));
    let cfg = read(root, "etc/ekos-log-monitor/config.toml");
    assert!(cfg.contains("ekos_logs_directory = \"/home/astro/.local/share/kstars/logs\""));
    assert!(cfg.contains("name = \"kstars-bob\"\nroot = \"/home/bob/.local/share/kstars/logs\""));
    let home = read(
        root,
        "etc/systemd/system/ekos-log-monitor.service.d/read-home-logs.conf",
    );
    assert!(home.contains("BindReadOnlyPaths=-/home/astro/"));
    assert!(home.contains("BindReadOnlyPaths=-/home/bob/"));
    assert_eq!(fake.messages().len(), 1);

    // No flag at all: everything kept, nothing posted.
    let before = snapshot(root);
    let (st, out, err) = run_yes(root, &[]);
    assert!(st.success(), "{out}\n{err}");
    assert!(out.contains("Nothing to change."), "{out}");
    assert_eq!(snapshot(root), before);
    assert_eq!(fake.messages().len(), 1);

    // One flag: only what it says changes.
    let (st, out, err) = run_yes(root, &["--no-scripts"]);
    assert!(st.success(), "{out}\n{err}");
    let cfg = read(root, "etc/ekos-log-monitor/config.toml");
    assert!(!cfg.contains("\nroot = \"/srv/service/event\""), "{cfg}");
    assert!(cfg.contains("kstars-bob"));
    let after = snapshot(root);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(changed, vec!["etc/ekos-log-monitor/config.toml"]);
}

#[test]
fn bad_answers_exit_1_with_one_line_and_change_nothing() {
    let fake = FakeDiscord::start();
    let m = machine();
    let root = m.path();
    let answers = tempfile::tempdir().unwrap();
    let good = fake.webhook_url_for("5", "good-token");
    let before = snapshot(root);

    let rejected = fake.webhook_url_for("404", "deleted-token");
    fake.set_hook_fault("404", Some(Fault::not_found()));
    // A closed port: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "http://127.0.0.1:{}/api/webhooks/6/gone-token",
            l.local_addr().unwrap().port()
        )
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), "https://example.com/api/webhooks/1/x-token")
                    .display()
                    .to_string(),
                "--ekos-user".into(),
                "astro".into(),
            ],
            "is not a Discord webhook URL",
        ),
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), &rejected)
                    .display()
                    .to_string(),
                "--ekos-user".into(),
                "astro".into(),
            ],
            "HTTP 404",
        ),
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), &closed).display().to_string(),
                "--ekos-user".into(),
                "astro".into(),
            ],
            "could not reach Discord",
        ),
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), &good).display().to_string(),
                "--ekos-user".into(),
                "carol".into(),
            ],
            "user carol has no KStars logs directory (/home/carol/.local/share/kstars/logs)",
        ),
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), &good).display().to_string(),
                "--ekos-user".into(),
                "nobody-such".into(),
            ],
            "no user named \"nobody-such\"",
        ),
        (
            vec![
                "--webhook-file".into(),
                webhook_file(answers.path(), &good).display().to_string(),
                "--scripts".into(),
                "/srv/none".into(),
            ],
            "/srv/none: not a directory",
        ),
        // No webhook configured yet, and none given.
        (
            vec!["--ekos-user".into(), "astro".into()],
            "no webhook configured",
        ),
    ];
    for (args, msg) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (st, out, err) = run_yes(root, &args);
        assert_eq!(st.code(), Some(1), "{args:?}\n{out}\n{err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !err.contains("-token") && !out.contains("-token"),
            "{err}{out}"
        );
        assert_eq!(snapshot(root), before, "{args:?} changed files");
    }
    // Only the good webhook got a message, and only in the cases that
    // reached the test message (none: the user or directory failed first).
    assert_eq!(fake.messages().len(), 0);

    // A tree the service cannot read, and no setfacl to let it.
    let f = webhook_file(answers.path(), &good);
    let out = Command::new(BIN)
        .args([
            "setup",
            "--yes",
            "--ekos-user",
            "astro",
            "--scripts",
            "/srv/service/event",
        ])
        .arg("--webhook-file")
        .arg(&f)
        .arg("--root")
        .arg(root)
        .env("PATH", answers.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot read /srv/service/event, and setfacl, needed to let it, is missing: apt install acl"),
        "{err}"
    );
    assert_eq!(snapshot(root), before);
    assert_eq!(fake.messages().len(), 0);

    // A machine without systemd (container, WSL).
    std::fs::remove_dir(root.join("run/systemd/system")).unwrap();
    let before = snapshot(root);
    let f = webhook_file(answers.path(), &good);
    let (st, _, err) = run_yes(
        root,
        &[
            "--webhook-file",
            f.to_str().unwrap(),
            "--ekos-user",
            "astro",
        ],
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("not booted with systemd"), "{err}");
    assert_eq!(snapshot(root), before);
}

#[test]
fn a_broken_config_is_refused_not_overwritten() {
    let fake = FakeDiscord::start();
    let m = machine();
    let root = m.path();
    std::fs::write(
        root.join("etc/ekos-log-monitor/config.toml"),
        "batch_size = \"ten\"\n",
    )
    .unwrap();
    let answers = tempfile::tempdir().unwrap();
    let f = webhook_file(answers.path(), &fake.webhook_url_for("8", "t"));
    let before = snapshot(root);
    let (st, _, err) = run_yes(
        root,
        &[
            "--webhook-file",
            f.to_str().unwrap(),
            "--ekos-user",
            "astro",
        ],
    );
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("the new configuration would not load: BATCH_SIZE"),
        "{err}"
    );
    assert_eq!(snapshot(root), before);
}
