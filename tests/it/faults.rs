//! Fault injection: the real binary against the fake Discord, driven by
//! random, seeded sequences of writes and faults, checked against a model.
//!
//! The shape follows Vector's file-source model tests: the test keeps a
//! model of what was written to each logical stream (a log file under
//! its name, across rotations and rewrites), applies random actions to the
//! real files, the daemon and the network, and compares the model with what
//! the fake Discord accepted. Every line carries markers
//! (`ZZ<stream>x<line>y<part>ZZ`: part 0 starts the line, part 1 ends it,
//! 2.. are spread through long lines), so a line split over messages, put
//! in an attachment or shown in an embed is still recognised.
//!
//! The oracle:
//! - every line written (after the start position of its source) reaches
//!   its own webhook, all its parts, and no line goes to the other webhook;
//! - in order per stream (by the first message carrying each line);
//! - no line twice, except one first delivered shortly before a kill -9 or
//!   a reload (in flight, or accepted but not yet recorded);
//! - no wedge: once a fault clears, every line written so far arrives
//!   within [`SETTLE`]; while one webhook is down the other keeps flowing;
//! - the daemon's peak RSS (VmHWM) stays under 32 MiB and its log never
//!   shows a webhook token.
//!
//! Seeds: a fixed short set by default (a CI run); `FAULTS_SEED=x` runs
//! one seed (or a list `3,7`, or a range `3..12`), `FAULTS_SEEDS=n` runs
//! seeds 1..=n, `FAULTS_STEPS=n` sets the steps per seed,
//! `FAULTS_ONLY=kill,rotate,...` restricts the actions to these (and
//! appends) and `FAULTS_SKIP=link,...` leaves some out (names:
//! [`Action::name`]), to find a minimal reproduction. A failure prints
//! the seed and the actions taken; `FAULTS_VERBOSE=1` prints them for
//! every seed, and `FAULTS_TRACE=1` also each step with the streams'
//! lengths and each accepted message with the lines it starts.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Env, append, wait_until};
use crate::support::fake_discord::{Event, FakeDiscord, Fault, Mode, Options, Received};
use crate::support::notify::NotifySocket;
use serde_json::Value;

/// Two webhooks with Discord-shaped ids and 68-character tokens.
const HOOK_A: &str = "111111111111111111";
const HOOK_B: &str = "222222222222222222";
const TOKEN_A: &str = "Aa1-Bb2_Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0KkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz-_0123";
const TOKEN_B: &str = "Zz9_Yy8-Xx7Ww6Vv5Uu4Tt3Ss2Rr1QqPpOoNnMmLlKkJjIiHhGgFfEeDdCcBbAa_-9876";

/// After a fault clears, every line written so far must arrive within this.
const SETTLE: Duration = Duration::from_secs(20);
/// A line first delivered this long before a kill -9 or a reload may be
/// posted again after it (its message was in flight or not yet recorded).
const IN_FLIGHT: Duration = Duration::from_secs(3);
/// Peak resident memory allowed for the daemon.
const RSS_LIMIT_KIB: u64 = 32 * 1024;
/// Size of the state directory's tmpfs (the "full disk").
const STATE_FS: &str = "size=256k";
/// Default seeds and steps (a CI run, about 45 s in a debug build): these
/// three seeds together take every action, every rotation kind, both
/// kinds of rewrite and of outage, and every scripted answer (400 forum,
/// 401, 403, 404, 408, 500, 502, 503, 504, 429, a closed connection, a
/// POST that hangs) within their first 40 steps; seeds 1 and 2 at 28 steps
/// never chose a Reload, a create rotation, a shrinking rewrite, a 401,
/// 403, 404, 408 or any 5xx. Choosing again after a change to [`Run::choose`]: run
/// candidates with `FAULTS_VERBOSE=1` and compare the actions taken.
const CI_SEEDS: &[u64] = &[15, 20, 22];
const CI_STEPS: usize = 40;

// ------------------------------------------------------------------ random

/// splitmix64: small, seedable, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ------------------------------------------------------------------- lines

fn marker(s: usize, i: usize, k: usize) -> String {
    format!("ZZ{s}x{i}y{k}ZZ")
}

/// Lowercase filler (no digits, so it never forms a marker).
fn filler(out: &mut String, n: usize, seed: usize) {
    out.extend((0..n).map(|j| (b'a' + ((j + seed) % 26) as u8) as char));
}

/// A plain line of exactly `len` bytes (at least [`MIN_LINE`]): the start
/// marker three times, filler with a pair of middle markers every 4 KiB,
/// and the end marker three times. A split inside one copy leaves the
/// others whole: the packer may cut a line too long for one message
/// anywhere, also a few characters after its start, to fill the end of
/// the message before (seed 31 at 500 steps lost the only start marker of
/// a 2,000-byte line that way).
fn plain_line(s: usize, i: usize, len: usize) -> (String, Vec<usize>) {
    let (start, end) = (marker(s, i, 0), marker(s, i, 1));
    let tail = format!(" {end} {end} {end}");
    let mut t = format!("{start} {start} {start} ");
    let mut parts = vec![0, 1];
    let mut k = 2;
    loop {
        let mid = marker(s, i, k);
        let step = 4000 + 2 * mid.len() + 3;
        if t.len() + step + tail.len() >= len {
            break;
        }
        filler(&mut t, 4000, i);
        t.push_str(&format!(" {mid} {mid} "));
        parts.push(k);
        k += 1;
    }
    let pad = len.saturating_sub(t.len() + tail.len());
    filler(&mut t, pad, i);
    t.push_str(&tail);
    (t, parts)
}

/// The shortest line [`plain_line`] makes for large stream and line numbers.
const MIN_LINE: usize = 96;

/// A CRIT line in Ekos' format with a module name of `module` characters:
/// notable, so posted as an embed whose footer carries the module.
fn event_line(s: usize, i: usize, module: usize, pad: usize) -> (String, Vec<usize>) {
    let mut m = String::from("org.kde.kstars.ekos.");
    let n = module.saturating_sub(m.len());
    filler(&mut m, n, s + i);
    let start = marker(s, i, 0);
    let end = marker(s, i, 1);
    let mut msg = format!("{start} INDI driver  \"indi_eqmod_telescope\"  crashed! ");
    filler(&mut msg, pad, i);
    msg.push_str(&format!(" {end} {end} {end}"));
    (
        format!("[2026-11-22T22:01:31.367 CET CRIT ][{m:>30}] - {msg}"),
        vec![0, 1],
    )
}

// ------------------------------------------------------------------- model

/// One logical stream: a file under its name, across rotations and rewrites.
struct Stream {
    path: PathBuf,
    hook: &'static str,
    /// While `Some`, lines are written through this hard link outside the
    /// followed tree (inotify does not see those writes).
    link: Option<PathBuf>,
    /// The parts each line was written with.
    lines: Vec<Vec<usize>>,
    /// Lines before this index were written before the daemon first ran,
    /// to a source that starts at the end: they must never be posted.
    history: usize,
    /// Lines written when the stream was last rotated.
    rotated_at: usize,
}

/// What the fake Discord accepted, indexed by marker. Fed by the fake's
/// observer as messages arrive.
#[derive(Default)]
struct Ledger {
    msgs: usize,
    /// Fingerprint of each webhook's previous message: an identical
    /// message right after is a retry of an ambiguous answer, counted once.
    last: HashMap<String, u64>,
    parts: HashSet<(usize, usize, usize)>,
    /// (stream, line) -> (message number, time) of each message whose
    /// text (content or attachment) carried the line's start.
    text: HashMap<(usize, usize), Vec<(usize, Instant)>>,
    /// The same for embeds.
    embed: HashMap<(usize, usize), Vec<(usize, Instant)>>,
    misrouted: Vec<String>,
}

fn fingerprint(parts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn markers_in(text: &str, re: &regex::Regex) -> Vec<(usize, usize, usize)> {
    re.captures_iter(text)
        .filter_map(|c| Some((c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?)))
        .collect()
}

fn strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

impl Ledger {
    fn accept(&mut self, m: &Received, hooks: &[&str], re: &regex::Regex) {
        let (hook, at) = (m.webhook_id.as_str(), m.at);
        let embeds = m.body.get("embeds").cloned().unwrap_or(Value::Null);
        let mut text = m.content.clone();
        for (_, data) in &m.attachments {
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(data));
        }
        let mut emb = String::new();
        strings(&embeds, &mut emb);
        let fp = fingerprint(&[&text, &emb]);
        if self.last.insert(hook.to_string(), fp) == Some(fp) {
            return;
        }
        self.msgs += 1;
        let n = self.msgs;
        for (carrier, body) in [(true, &text), (false, &emb)] {
            let mut starts = HashSet::new();
            for (s, i, k) in markers_in(body, re) {
                if hooks.get(s) != Some(&hook) {
                    self.misrouted
                        .push(format!("{} posted to webhook {hook}", marker(s, i, k)));
                    continue;
                }
                self.parts.insert((s, i, k));
                if k == 0 {
                    starts.insert((s, i));
                }
            }
            let map = if carrier {
                &mut self.text
            } else {
                &mut self.embed
            };
            if std::env::var_os("FAULTS_TRACE").is_some() {
                let mut v: Vec<_> = starts.iter().copied().collect();
                v.sort();
                eprintln!("TRACE msg {n} hook {hook} text={carrier} {v:?}");
            }
            for key in starts {
                map.entry(key).or_default().push((n, at));
            }
        }
    }

    /// Parts of expected lines not delivered yet, for the streams in `which`.
    fn missing(&self, streams: &[Stream], which: &dyn Fn(&Stream) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (s, st) in streams.iter().enumerate().filter(|(_, st)| which(st)) {
            for (i, parts) in st.lines.iter().enumerate().skip(st.history) {
                for &k in parts {
                    if !self.parts.contains(&(s, i, k)) {
                        out.push(marker(s, i, k));
                    }
                }
            }
        }
        out
    }

    /// Whether every line of stream `s` before `upto` has arrived whole.
    fn delivered_upto(&self, streams: &[Stream], s: usize, upto: usize) -> bool {
        let st = &streams[s];
        (st.history..upto.min(st.lines.len()))
            .all(|i| st.lines[i].iter().all(|&k| self.parts.contains(&(s, i, k))))
    }
}

// ---------------------------------------------------------------- harness

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rotation {
    Create,
    CopyTruncate,
    DelayCompress,
}

#[derive(Clone, Debug)]
enum Action {
    Append {
        s: usize,
        n: usize,
    },
    LongLine {
        s: usize,
        len: usize,
    },
    Events {
        s: usize,
        module: usize,
        pad: usize,
        n: usize,
    },
    Rotate {
        s: usize,
        how: Rotation,
    },
    Rewrite {
        s: usize,
        same_length: bool,
    },
    HardLink {
        s: usize,
    },
    Kill {
        down_writes: usize,
    },
    Reload,
    Outage {
        refuse: bool,
        steps: usize,
    },
    HookFaults {
        hook: &'static str,
        faults: Vec<Fault>,
    },
    HookDown {
        hook: &'static str,
        fault: Fault,
        steps: usize,
    },
    DiskFull {
        steps: usize,
    },
    Settle,
}

impl Action {
    /// The name used by `FAULTS_ONLY`.
    fn name(&self) -> &'static str {
        match self {
            Action::Append { .. } => "append",
            Action::LongLine { .. } => "long",
            Action::Events { .. } => "event",
            Action::Rotate { .. } => "rotate",
            Action::Rewrite { .. } => "rewrite",
            Action::HardLink { .. } => "link",
            Action::Kill { .. } => "kill",
            Action::Reload => "reload",
            Action::Outage { .. } => "outage",
            Action::HookFaults { .. } => "hookfaults",
            Action::HookDown { .. } => "hookdown",
            Action::DiskFull { .. } => "diskfull",
            Action::Settle => "settle",
        }
    }
}

/// A tmpfs mounted for the state directory; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", STATE_FS, "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system with a junk file; returns its path.
    fn fill(&self) -> PathBuf {
        let junk = self.0.join("junk");
        let mut f = std::fs::File::create(&junk).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        junk
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

struct Run {
    rng: Rng,
    fake: FakeDiscord,
    ledger: Arc<Mutex<Ledger>>,
    env: Env,
    notify: NotifySocket,
    daemon: Option<Daemon>,
    streams: Vec<Stream>,
    tmpfs: Option<Tmpfs>,
    junk: Option<PathBuf>,
    /// Times of kills and reloads: lines first delivered shortly before
    /// may come again.
    unsaved: Vec<Instant>,
    /// Periods of a full state disk: what was accepted just before the
    /// daemon noticed is not recorded until the disk has room.
    full: Vec<(Instant, Option<Instant>)>,
    /// Active faults and the step at which each clears.
    outage_until: Option<usize>,
    hook_down: Option<(&'static str, usize)>,
    disk_full_until: Option<usize>,
    peak_rss: u64,
    log: Vec<String>,
    violations: Vec<String>,
    /// `FAULTS_ONLY` and `FAULTS_SKIP`.
    only: (Option<Vec<String>>, Vec<String>),
}

impl Run {
    fn new(seed: u64, only: (Option<Vec<String>>, Vec<String>)) -> Run {
        let fake = FakeDiscord::start_with(Options {
            rate_limit: Some((50, Duration::from_secs(1))),
            ..Options::default()
        });
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let hooks: Vec<&'static str> = vec![HOOK_A, HOOK_A, HOOK_B];
        {
            let ledger = ledger.clone();
            let re = regex::Regex::new(r"ZZ(\d+)x(\d+)y(\d+)ZZ").unwrap();
            fake.on_event(move |ev| {
                if let Event::Accepted(m) = ev {
                    ledger.lock().unwrap().accept(m, &hooks, &re);
                }
            });
        }
        let url_a = fake.webhook_url_for(HOOK_A, TOKEN_A);
        let url_b = fake.webhook_url_for(HOOK_B, TOKEN_B);
        let mut env = Env::new(&url_a);
        env.unset("EKOS_LOGS_DIRECTORY");
        env.set("BATCH_SIZE", "20")
            .set("BATCH_TIMEOUT", "0.1")
            .set("FILE_CHECK_INTERVAL", "1")
            .set("MAX_RETRIES", "2")
            // The ledger counts each line's embeds: incident messages
            // (tests/it/nightwatch.rs), or with incidents off the
            // "Context of:" messages, would quote the crash lines again.
            .set("INCIDENT_WINDOW", "0")
            .set("CONTEXT_LINES", "0");
        let root = env.dir.path().to_path_buf();
        env.write_config(&format!(
            "[[source]]\nname = \"a\"\nroot = \"{a}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\nstart_at = \"beginning\"\n\n\
             [[source]]\nname = \"b\"\nroot = \"{b}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\nstart_at = \"end\"\ndiscord_webhook_url = \"{url_b}\"\n",
            a = root.join("logsA").display(),
            b = root.join("logsB").display(),
        ));
        let notify = NotifySocket::bind(env.dir.path());
        env.set("NOTIFY_SOCKET", notify.path().to_str().unwrap());
        let tmpfs = Tmpfs::mount(&root.join("state"));
        std::fs::create_dir_all(root.join("outside")).unwrap();
        let mk = |p: PathBuf, hook| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::File::create(&p).unwrap();
            Stream {
                path: p,
                hook,
                link: None,
                lines: Vec::new(),
                history: 0,
                rotated_at: 0,
            }
        };
        let streams = vec![
            mk(root.join("logsA/sub/a0.log"), HOOK_A),
            mk(root.join("logsA/sub/a1.log"), HOOK_A),
            mk(root.join("logsB/b0.log"), HOOK_B),
        ];
        Run {
            rng: Rng(seed),
            fake,
            ledger,
            env,
            notify,
            daemon: None,
            streams,
            tmpfs,
            junk: None,
            unsaved: Vec::new(),
            full: Vec::new(),
            outage_until: None,
            hook_down: None,
            disk_full_until: None,
            peak_rss: 0,
            log: Vec::new(),
            violations: Vec::new(),
            only,
        }
    }

    fn note(&mut self, what: String) {
        self.log.push(what);
    }

    fn fail(&mut self, what: String) {
        let tail: String = self
            .daemon
            .as_ref()
            .map(|d| {
                let e = d.stderr();
                let lines: Vec<&str> = e.lines().rev().take(15).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            })
            .unwrap_or_default();
        self.violations
            .push(format!("{what}\n  daemon log tail:\n    {tail}"));
    }

    fn sample_rss(&mut self) {
        if let Some(d) = &self.daemon {
            if let Some(k) = vm_hwm_kib(d.pid()) {
                self.peak_rss = self.peak_rss.max(k);
            }
        }
    }

    fn start_daemon(&mut self) -> bool {
        self.notify.clear();
        let d = self.env.start(&[]);
        self.daemon = Some(d);
        if !self
            .notify
            .wait_for(Duration::from_secs(15), |m| m.contains("READY=1"))
        {
            self.fail("the daemon did not report READY=1 within 15 s".into());
            return false;
        }
        true
    }

    fn alive(&mut self) -> bool {
        let exited = match self.daemon.as_mut() {
            Some(d) => d.child.try_wait().ok().flatten(),
            None => return true,
        };
        if let Some(status) = exited {
            self.fail(format!("the daemon exited unexpectedly ({status})"));
            return false;
        }
        true
    }

    /// Appends lines to a stream, through its hard link if it has one.
    fn write(&mut self, s: usize, texts: Vec<(String, Vec<usize>)>) {
        let st = &mut self.streams[s];
        let path = st.link.clone().unwrap_or_else(|| st.path.clone());
        let lines: Vec<String> = texts.iter().map(|t| t.0.clone()).collect();
        append(&path, &lines);
        st.lines.extend(texts.into_iter().map(|t| t.1));
    }

    fn short_lines(&mut self, s: usize, n: usize) -> Vec<(String, Vec<usize>)> {
        let base = self.streams[s].lines.len();
        (0..n)
            .map(|j| {
                let len = self.rng.range(MIN_LINE, 300);
                plain_line(s, base + j, len)
            })
            .collect()
    }

    fn faults_on(&self, hook: &str) -> bool {
        self.outage_until.is_some()
            || self.disk_full_until.is_some()
            || self.hook_down.is_some_and(|(h, _)| h == hook)
            || self.fake.queued_faults(hook) > 0
    }

    fn choose(&mut self) -> Action {
        let r = &mut self.rng;
        let s = r.below(3);
        let a = r.below(2); // a rotatable stream
        let table: Vec<(usize, Action)> = vec![
            (
                30,
                Action::Append {
                    s,
                    n: r.range(1, 30),
                },
            ),
            (
                4,
                Action::LongLine {
                    s,
                    len: r.range(8 * 1024, 300 * 1024),
                },
            ),
            (
                7,
                Action::Events {
                    s,
                    module: *r.pick(&[12, 60, 400, 1500, 2100, 2600, 3000]),
                    pad: *r.pick(&[0, 20, 800, 2000]),
                    n: r.range(1, 3),
                },
            ),
            (
                7,
                Action::Rotate {
                    s: a,
                    how: *r.pick(&[
                        Rotation::Create,
                        Rotation::CopyTruncate,
                        Rotation::DelayCompress,
                    ]),
                },
            ),
            (
                3,
                Action::Rewrite {
                    s: a,
                    same_length: r.chance(50),
                },
            ),
            (3, Action::HardLink { s }),
            (
                5,
                Action::Kill {
                    down_writes: r.range(0, 40),
                },
            ),
            (4, Action::Reload),
            (
                3,
                Action::Outage {
                    refuse: r.chance(50),
                    steps: r.range(1, 4),
                },
            ),
            (
                6,
                Action::HookFaults {
                    hook: if r.chance(50) { HOOK_A } else { HOOK_B },
                    faults: (0..r.range(1, 3))
                        .map(|_| {
                            r.pick(&[
                                Fault::Status(
                                    500,
                                    "{\"message\": \"500: Internal Server Error\", \"code\": 0}"
                                        .into(),
                                ),
                                Fault::Status(502, "<html>502 Bad Gateway</html>".into()),
                                Fault::Status(503, "upstream connect error".into()),
                                Fault::Status(504, "gateway timeout".into()),
                                Fault::Status(408, "<html>408 Request Timeout</html>".into()),
                                Fault::RateLimited(1.2),
                                Fault::Close,
                                Fault::Close,
                                Fault::Hang(Duration::from_secs(12)),
                            ])
                            .clone()
                        })
                        .collect(),
                },
            ),
            (
                3,
                Action::HookDown {
                    hook: if r.chance(50) { HOOK_A } else { HOOK_B },
                    fault: r
                        .pick(&[
                            Fault::not_found(),
                            Fault::forum_400(),
                            Fault::Status(
                                401,
                                "{\"message\": \"401: Unauthorized\", \"code\": 0}".into(),
                            ),
                            Fault::Status(
                                403,
                                "{\"message\": \"Missing Access\", \"code\": 50001}".into(),
                            ),
                        ])
                        .clone(),
                    steps: r.range(2, 5),
                },
            ),
            (
                3,
                Action::DiskFull {
                    steps: r.range(1, 4),
                },
            ),
            (4, Action::Settle),
        ];
        let table: Vec<(usize, Action)> = table
            .into_iter()
            .filter(|(_, a)| {
                let (only, skip) = &self.only;
                let name = a.name();
                (name == "append" || only.as_ref().is_none_or(|o| o.iter().any(|n| n == name)))
                    && !skip.iter().any(|n| n == name)
            })
            .collect();
        let total: usize = table.iter().map(|t| t.0).sum();
        let mut x = self.rng.below(total);
        for (w, a) in table {
            if x < w {
                return a;
            }
            x -= w;
        }
        unreachable!()
    }

    /// Waits until the lines of the streams `which` selects have arrived.
    fn wait_delivered(
        &mut self,
        timeout: Duration,
        which: &dyn Fn(&Stream) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self.ledger.lock().unwrap().missing(&self.streams, which);
            if missing.is_empty() || Instant::now() >= deadline || !self.alive() {
                return missing;
            }
            self.sample_rss();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clears every fault, then requires every line so far within SETTLE.
    fn settle(&mut self, why: &str) -> bool {
        self.clear_outage();
        self.clear_hook_down();
        self.clear_disk_full();
        // Transient faults still queued are part of the sequence: they must
        // be used up by the daemon's retries first.
        let queued = |f: &FakeDiscord| f.queued_faults(HOOK_A) + f.queued_faults(HOOK_B);
        let pending = queued(&self.fake) > 0;
        if pending {
            let fake = &self.fake;
            let hooks_wanted: Vec<&str> = [HOOK_A, HOOK_B].into_iter().collect();
            // Only a webhook with undelivered lines makes requests.
            let ok = wait_until(Duration::from_secs(40), || {
                hooks_wanted.iter().all(|h| {
                    fake.queued_faults(h) == 0
                        || self
                            .ledger
                            .lock()
                            .unwrap()
                            .missing(&self.streams, &|st: &Stream| st.hook == *h)
                            .is_empty()
                })
            });
            if !ok {
                let m = self
                    .ledger
                    .lock()
                    .unwrap()
                    .missing(&self.streams, &|_| true);
                self.fail(format!(
                    "wedge ({why}): scripted faults not consumed within 40 s while {} parts wait, e.g. {:?}",
                    m.len(),
                    &m[..m.len().min(5)]
                ));
                return false;
            }
        }
        let t = Instant::now();
        let missing = self.wait_delivered(SETTLE, &|_| true);
        if !missing.is_empty() {
            let detail = self.describe_missing(&missing);
            self.fail(format!(
                "wedge or loss ({why}): {} parts not delivered {SETTLE:?} after the faults cleared: {detail}",
                missing.len()
            ));
            return false;
        }
        self.note(format!("  settled in {:?}", t.elapsed()));
        true
    }

    fn describe_missing(&self, missing: &[String]) -> String {
        let mut per: HashMap<String, Vec<&str>> = HashMap::new();
        for m in missing {
            let s = m[2..].split('x').next().unwrap_or("?").to_string();
            per.entry(s).or_default().push(m);
        }
        let mut v: Vec<String> = per
            .into_iter()
            .map(|(s, ms)| {
                // The stream's length says whether they are its last lines.
                let len = s.parse().ok().and_then(|s: usize| self.streams.get(s));
                let len = len.map_or(0, |st| st.lines.len());
                let shown = ms[..ms.len().min(8)].join(" ");
                format!(
                    "stream {s} ({len} lines): {} parts: {shown}{}",
                    ms.len(),
                    if ms.len() > 8 { " ..." } else { "" }
                )
            })
            .collect();
        v.sort();
        v.join("; ")
    }

    fn clear_outage(&mut self) {
        if self.outage_until.take().is_some() {
            self.fake.set_mode(Mode::Normal);
            self.note("  outage ends".into());
        }
    }

    fn clear_hook_down(&mut self) {
        if let Some((hook, _)) = self.hook_down.take() {
            self.fake.set_hook_fault(hook, None);
            self.note(format!("  webhook {hook} fixed; reload"));
            // Like a user who fixed the webhook: reload.
            self.reload();
        }
    }

    fn clear_disk_full(&mut self) {
        if self.disk_full_until.take().is_some() {
            if let Some(j) = self.junk.take() {
                let _ = std::fs::remove_file(j);
            }
            if let Some(p) = self.full.last_mut() {
                p.1 = Some(Instant::now());
            }
            self.note("  disk freed".into());
        }
    }

    fn reload(&mut self) {
        let Some(d) = &self.daemon else { return };
        self.notify.clear();
        d.signal(libc::SIGHUP);
        self.unsaved.push(Instant::now());
        if !self
            .notify
            .wait_for(Duration::from_secs(15), |m| m.contains("READY=1"))
        {
            self.fail("no READY=1 within 15 s of a SIGHUP".into());
        }
        self.unsaved.push(Instant::now());
    }

    fn step(&mut self, n: usize, action: Action) -> bool {
        if std::env::var_os("FAULTS_TRACE").is_some() {
            eprintln!(
                "TRACE step {n}: {action:?} lens {:?}",
                self.streams
                    .iter()
                    .map(|s| s.lines.len())
                    .collect::<Vec<_>>()
            );
        }
        self.note(format!("{n:3}: {action:?}"));
        match action {
            Action::Append { s, n } => {
                let l = self.short_lines(s, n);
                self.write(s, l);
            }
            Action::LongLine { s, len } => {
                let i = self.streams[s].lines.len();
                let l = plain_line(s, i, len);
                self.write(s, vec![l]);
            }
            Action::Events { s, module, pad, n } => {
                let base = self.streams[s].lines.len();
                let l = (0..n)
                    .map(|j| event_line(s, base + j, module, pad))
                    .collect();
                self.write(s, l);
            }
            Action::Rotate { s, how } => {
                let (upto, path) = (self.streams[s].rotated_at, self.streams[s].path.clone());
                // The previous generation must have been read: logrotate
                // keeps shifting it (and compresses it with delaycompress).
                if !self
                    .ledger
                    .lock()
                    .unwrap()
                    .delivered_upto(&self.streams, s, upto)
                {
                    self.note("  skipped: the previous generation is not delivered yet".into());
                    return true;
                }
                self.streams[s].link = None;
                rotate(&path, how);
                self.streams[s].rotated_at = self.streams[s].lines.len();
            }
            Action::Rewrite { s, same_length } => {
                // Its own draws come from a generator split off here, so
                // whether it is skipped (which depends on timing) does not
                // change the rest of the sequence: a seed stays a seed.
                let sub = Rng(self.rng.next());
                let main = std::mem::replace(&mut self.rng, sub);
                self.rewrite(s, same_length);
                self.rng = main;
            }
            Action::HardLink { s } => {
                if self.streams[s].link.is_none() {
                    let link = self
                        .env
                        .dir
                        .path()
                        .join("outside")
                        .join(format!("link{s}-{n}"));
                    std::fs::hard_link(&self.streams[s].path, &link).unwrap();
                    self.streams[s].link = Some(link);
                }
                let k = self.rng.range(1, 10);
                let l = self.short_lines(s, k);
                self.write(s, l);
            }
            Action::Kill { down_writes } => {
                if let Some(d) = self.daemon.take() {
                    self.sample_rss_of(&d);
                    d.kill9();
                    self.unsaved.push(Instant::now());
                }
                // Writes while the daemon is down.
                let s = self.rng.below(3);
                let l = self.short_lines(s, down_writes);
                self.write(s, l);
                if !self.start_daemon() {
                    return false;
                }
            }
            Action::Reload => self.reload(),
            Action::Outage { refuse, steps } => {
                if self.outage_until.is_none() {
                    self.fake
                        .set_mode(if refuse { Mode::Refuse } else { Mode::Down });
                    self.outage_until = Some(n + steps);
                }
            }
            Action::HookFaults { hook, faults } => {
                // At most one burst at a time: a longer run of failures
                // is a longer outage, whose backoff may exceed the deadline.
                if self.fake.queued_faults(hook) == 0 {
                    self.fake.push_faults(hook, faults);
                } else {
                    self.note("  skipped: faults still queued".into());
                }
            }
            Action::HookDown { hook, fault, steps } => {
                if self.hook_down.is_none() {
                    self.fake.set_hook_fault(hook, Some(fault));
                    self.hook_down = Some((hook, n + steps));
                }
            }
            Action::DiskFull { steps } => {
                if let (Some(fs), None) = (&self.tmpfs, &self.disk_full_until) {
                    self.junk = Some(fs.fill());
                    self.full.push((Instant::now(), None));
                    self.disk_full_until = Some(n + steps);
                } else if self.tmpfs.is_none() {
                    self.note("  skipped: no tmpfs (not root?)".into());
                }
            }
            Action::Settle => return self.settle("periodic"),
        }
        true
    }

    /// Truncates stream `s` and writes new lines (`>` in a shell).
    fn rewrite(&mut self, s: usize, same_length: bool) {
        // A rewrite destroys what was not read: only once delivered.
        let all = self.streams[s].lines.len();
        if self.daemon.is_none()
            || !self
                .ledger
                .lock()
                .unwrap()
                .delivered_upto(&self.streams, s, all)
        {
            self.note("  skipped: not all delivered yet".into());
            return;
        }
        self.streams[s].link = None;
        let path = self.streams[s].path.clone();
        let old = std::fs::metadata(&path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let mut texts = Vec::new();
        let base = self.streams[s].lines.len();
        if same_length && old > MIN_LINE {
            let mut left = old;
            while left > 6000 {
                let len = self.rng.range(MIN_LINE, 2000);
                texts.push(plain_line(s, base + texts.len(), len));
                left -= len + 1;
            }
            texts.push(plain_line(s, base + texts.len(), left - 1));
        } else {
            let n = self.rng.range(1, 10);
            texts = self.short_lines(s, n);
        }
        let mut data = String::new();
        for t in &texts {
            data.push_str(&t.0);
            data.push('\n');
        }
        if same_length && old > MIN_LINE {
            assert_eq!(data.len(), old, "same-length rewrite");
        }
        // `>` in a shell: truncate the same inode, write anew.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(data.as_bytes()).unwrap();
        self.streams[s].lines.extend(texts.into_iter().map(|t| t.1));
        self.streams[s].rotated_at = self.streams[s].lines.len();
        self.note(format!("  rewrote {old} bytes with {} bytes", data.len()));
    }

    fn sample_rss_of(&mut self, d: &Daemon) {
        if let Some(k) = vm_hwm_kib(d.pid()) {
            self.peak_rss = self.peak_rss.max(k);
        }
    }

    /// Faults whose time is up clear; a settle follows each.
    fn expire(&mut self, n: usize) -> bool {
        let mut cleared = false;
        if self.outage_until.is_some_and(|t| n >= t) {
            self.clear_outage();
            cleared = true;
        }
        if let Some((hook, t)) = self.hook_down {
            let other = if hook == HOOK_A { HOOK_B } else { HOOK_A };
            // Route isolation: while one webhook is down, the other's
            // lines flow.
            if !self.faults_on(other) && self.daemon.is_some() {
                let missing = self.wait_delivered(SETTLE, &|st: &Stream| st.hook == other);
                if !missing.is_empty() {
                    let detail = self.describe_missing(&missing);
                    self.fail(format!(
                        "route isolation: webhook {hook} is down and webhook {other}'s lines stop: {detail}"
                    ));
                    return false;
                }
            }
            if n >= t {
                self.clear_hook_down();
                cleared = true;
            }
        }
        if self.disk_full_until.is_some_and(|t| n >= t) {
            self.clear_disk_full();
            cleared = true;
        }
        if cleared {
            return self.settle("after a fault cleared");
        }
        true
    }

    fn run(&mut self, steps: usize) {
        // History of the source that starts at the end: never posted.
        let h = self.short_lines(2, 20);
        self.write(2, h);
        self.streams[2].history = self.streams[2].lines.len();
        if !self.start_daemon() {
            return;
        }
        for n in 0..steps {
            let a = self.choose();
            if !self.step(n, a) || !self.alive() || !self.expire(n) {
                return;
            }
            self.sample_rss();
            // Pacing: the daemon works while the sequence goes on.
            std::thread::sleep(Duration::from_millis(self.rng.range(20, 250) as u64));
        }
        if !self.settle("end of the sequence") {
            return;
        }
        self.finish();
    }

    /// The checks on the whole history, after the last settle.
    fn finish(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.sample_rss_of(&d);
            let (status, took, _) = d.stop();
            if !status.success() || took > Duration::from_secs(10) {
                self.violations
                    .push(format!("stop: {status} after {took:?}"));
            }
        }
        let l = self.ledger.lock().unwrap();
        let mut v = Vec::new();
        v.extend(l.misrouted.iter().take(5).cloned());
        for (s, st) in self.streams.iter().enumerate() {
            for i in 0..st.history {
                if l.text.contains_key(&(s, i)) || l.embed.contains_key(&(s, i)) {
                    v.push(format!(
                        "stream {s} line {i} was written before the daemon first ran to a source that starts at the end, and was posted"
                    ));
                    break;
                }
            }
            // Order: by the first message carrying each line (as text if
            // it came as text, else as an embed).
            let mut prev: Option<(usize, usize)> = None;
            for i in st.history..st.lines.len() {
                let first = l
                    .text
                    .get(&(s, i))
                    .or_else(|| l.embed.get(&(s, i)))
                    .and_then(|d| d.first());
                let Some(&(msg, _)) = first else { continue };
                if let Some((pi, pm)) = prev {
                    if msg < pm {
                        v.push(format!(
                            "order: stream {s} line {i} first arrived in message {msg}, before line {pi} (message {pm})"
                        ));
                        break;
                    }
                }
                prev = Some((i, msg));
            }
            // Duplicates: only lines in flight at a kill or reload.
            let mut dups = 0;
            let mut example = None;
            for i in st.history..st.lines.len() {
                for map in [&l.text, &l.embed] {
                    let Some(d) = map.get(&(s, i)) else { continue };
                    if d.len() < 2 {
                        continue;
                    }
                    let first = d[0].1;
                    let near =
                        |a: Instant, b: Instant| a.max(b).duration_since(a.min(b)) <= IN_FLIGHT;
                    let explained = self.unsaved.iter().any(|&k| {
                        // In flight at a kill or reload, or accepted around
                        // the moment the disk filled up before one.
                        (first <= k && near(first, k))
                            || self.full.iter().any(|&(f, g)| {
                                near(first, f) && k >= f && g.is_none_or(|g| k <= g + IN_FLIGHT)
                            })
                    });
                    if !explained {
                        dups += d.len() - 1;
                        example.get_or_insert(marker(s, i, 0));
                    }
                }
            }
            if dups > 0 {
                v.push(format!(
                    "duplicates: stream {s}: {dups} extra deliveries not explained by a kill or reload, e.g. {}",
                    example.unwrap_or_default()
                ));
            }
        }
        drop(l);
        if self.peak_rss > RSS_LIMIT_KIB {
            v.push(format!(
                "memory: peak RSS {} KiB over {RSS_LIMIT_KIB} KiB",
                self.peak_rss
            ));
        }
        for e in std::fs::read_dir(self.env.dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("daemon-") && name.ends_with(".stderr") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                for t in [TOKEN_A, TOKEN_B] {
                    if t.as_bytes()
                        .windows(12)
                        .any(|w| text.contains(std::str::from_utf8(w).unwrap()))
                    {
                        v.push(format!("secret: a webhook token in {name}"));
                    }
                }
            }
        }
        self.violations.extend(v);
    }
}

/// Does what logrotate does to `path`.
fn rotate(path: &Path, how: Rotation) {
    let generation = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    match how {
        Rotation::Create | Rotation::CopyTruncate => {
            for n in (1..4).rev() {
                let _ = std::fs::rename(generation(n), generation(n + 1));
            }
            if how == Rotation::Create {
                std::fs::rename(path, generation(1)).unwrap();
                std::fs::File::create(path).unwrap();
            } else {
                std::fs::copy(path, generation(1)).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .unwrap();
            }
        }
        Rotation::DelayCompress => {
            let one = generation(1);
            if one.exists() {
                // gzip x.log.1 into x.log.2.gz: the daemon must not read it.
                let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
                gz.extend_from_slice(&std::fs::read(&one).unwrap());
                std::fs::write(format!("{}.2.gz", path.display()), gz).unwrap();
                std::fs::remove_file(&one).unwrap();
            }
            std::fs::rename(path, &one).unwrap();
            std::fs::File::create(path).unwrap();
        }
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// `FAULTS_SEED`: one seed, a list `3,7,9` or a range `3..12` (inclusive).
fn parse_seeds(v: &str) -> Vec<u64> {
    let num = |x: &str| x.trim().parse::<u64>().expect("FAULTS_SEED: numbers");
    v.split(',')
        .flat_map(|part| match part.split_once("..") {
            Some((a, b)) => (num(a)..=num(b)).collect::<Vec<_>>(),
            None => vec![num(part)],
        })
        .collect()
}

#[test]
fn random_fault_sequences_lose_nothing_and_never_wedge() {
    let seeds: Vec<u64> = if let Ok(s) = std::env::var("FAULTS_SEED") {
        parse_seeds(&s)
    } else if let Ok(n) = std::env::var("FAULTS_SEEDS") {
        (1..=n.parse::<u64>().expect("FAULTS_SEEDS is a number")).collect()
    } else {
        CI_SEEDS.to_vec()
    };
    let steps = std::env::var("FAULTS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_STEPS);
    let only = (
        env_list("FAULTS_ONLY"),
        env_list("FAULTS_SKIP").unwrap_or_default(),
    );
    let mut failures = Vec::new();
    for seed in seeds {
        let t = Instant::now();
        let mut run = Run::new(seed, only.clone());
        run.run(steps);
        eprintln!(
            "faults: seed {seed}: {} steps in {:?}, {} messages, peak RSS {} KiB, {} violations",
            steps,
            t.elapsed(),
            run.ledger.lock().unwrap().msgs,
            run.peak_rss,
            run.violations.len()
        );
        if std::env::var_os("FAULTS_VERBOSE").is_some() {
            eprintln!("  actions:\n    {}", run.log.join("\n    "));
        }
        if !run.violations.is_empty() {
            // Keep the daemon's logs for the post-mortem.
            let keep = std::env::temp_dir().join(format!("ekos-faults-seed{seed}"));
            let _ = std::fs::create_dir_all(&keep);
            for e in std::fs::read_dir(run.env.dir.path()).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with("daemon-") {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            failures.push(format!(
                "seed {seed} (rerun: FAULTS_SEED={seed} FAULTS_STEPS={steps} cargo test --test it faults::; daemon logs in {}):\n- {}\n  actions:\n    {}",
                keep.display(),
                run.violations.join("\n- "),
                run.log.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
