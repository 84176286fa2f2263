//! Benchmark of the real release binary against the fake Discord (issue 5).
//!
//! ```text
//! cargo build --release
//! cargo run --release --example bench -- [latency|idle|burst|catchup|manyfiles ...]
//!                                        [--runs N] [--quick]
//! ```
//!
//! Each scenario starts `target/release/ekos-log-monitor` as a separate
//! process, configured through its environment only (plus a TOML file for
//! `manyfiles`), in a fresh temporary directory; the bench appends to real
//! files there and the fake Discord (tests/support/fake_discord.rs) runs in
//! this process. The daemon's own figures are read from /proc (VmRSS, VmHWM,
//! utime+stime, per-thread run time and context switches) and readiness
//! comes from its sd_notify `READY=1` on a socket given as `NOTIFY_SOCKET`.
//!
//! The output is one table (the median over the runs of each figure, the
//! runs' values and the target with PASS/MISS) and then one JSON line per
//! scenario, for machines. Progress goes to stderr.

#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;

use fake_discord::{Event, FakeDiscord, Options, code_block_lines};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo run --release --example bench -- [SCENARIO...] [--runs N] [--quick]

scenarios (default: all, in this order):
  latency    a line every 50 ms, BATCH_SIZE=1: write-to-Discord latency
  slowfsync  the same with every fsync/fdatasync of the checkpoint's
             writer thread delayed 500 ms (strace fault injection): the
             checkpoint's disk writes must stay off the posting path
  idle       nothing written for 60 s (--quick 10 s): RSS, CPU, wakeups
  burst      20,000 lines at once (--quick 2,000) against 5 requests / 2 s
  catchup    1 GB backlog (--quick 100 MB) read from a checkpoint, --dry-run
  manyfiles  10,000 files in 100 directories, follow = \"all\": READY, RSS,
             idle CPU over 60 s (--quick 5 s), latency of 20 appends
  checkpoint the checkpoint store in this process: open with 100,000
             records (--quick 10,000), claim and dormant, and the time a
             commit takes on the posting path while the writer fsyncs
             (run under `strace -f --seccomp-bpf -e trace=fsync,fdatasync
             -e inject=fsync,fdatasync:delay_enter=500ms` for a slow disk)

  --runs N   runs per scenario, the median is reported (default 3)
  --quick    short smoke version of every scenario
  --tmpdir DIR  where the scenarios' directories (logs, state) are made
             (default: the system temporary directory; /dev/shm takes
             the disk, and so the checkpoint's fsync, out of the figures)

Needs target/release/ekos-log-monitor (cargo build --release).";

// ------------------------------------------------------------------ options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Latency,
    SlowFsync,
    Idle,
    Burst,
    Catchup,
    ManyFiles,
    Checkpoint,
}

const ALL: [Scenario; 7] = [
    Scenario::Latency,
    Scenario::SlowFsync,
    Scenario::Idle,
    Scenario::Burst,
    Scenario::Catchup,
    Scenario::ManyFiles,
    Scenario::Checkpoint,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::SlowFsync => "slowfsync",
            Scenario::Idle => "idle",
            Scenario::Burst => "burst",
            Scenario::Catchup => "catchup",
            Scenario::ManyFiles => "manyfiles",
            Scenario::Checkpoint => "checkpoint",
        }
    }

    fn parse(s: &str) -> Option<Scenario> {
        ALL.into_iter().find(|sc| sc.name() == s)
    }
}

struct Opts {
    scenarios: Vec<Scenario>,
    runs: usize,
    quick: bool,
    tmpdir: PathBuf,
}

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        scenarios: Vec::new(),
        runs: 3,
        quick: false,
        tmpdir: std::env::temp_dir(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--runs" => {
                let v = args.next().ok_or("--runs needs a number")?;
                opts.runs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("bad --runs {v:?}"))?;
            }
            s if s.starts_with("--runs=") => {
                let v = &s["--runs=".len()..];
                opts.runs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("bad --runs {v:?}"))?;
            }
            "--tmpdir" => opts.tmpdir = args.next().ok_or("--tmpdir needs a directory")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s => {
                let sc = Scenario::parse(s).ok_or(format!("unknown argument {s:?}"))?;
                if !opts.scenarios.contains(&sc) {
                    opts.scenarios.push(sc);
                }
            }
        }
    }
    if opts.scenarios.is_empty() {
        opts.scenarios = ALL.to_vec();
    }
    Ok(opts)
}

// ---------------------------------------------------------------- machine

fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = status_field(&meminfo, "MemTotal:").unwrap_or(0);
    json!({
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": field("model name").unwrap_or_else(|| "unknown".into()),
        "cpu_mhz": field("cpu MHz"),
        "mem_gib": (mem_kib as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    })
}

/// The file system type and device of the mount holding `dir`.
fn filesystem(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} {}", f[2], f[0])))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

// ---------------------------------------------------------------- metrics

#[derive(Clone, Copy, Debug)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn pass(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        }
    }

    fn show(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t}"),
            Target::AtLeast(t) => format!(">= {t}"),
        }
    }
}

/// One figure of one run.
struct Sample {
    key: &'static str,
    label: &'static str,
    target: Option<Target>,
    value: f64,
}

fn sample(key: &'static str, label: &'static str, value: f64) -> Sample {
    Sample {
        key,
        label,
        target: None,
        value,
    }
}

fn target(key: &'static str, label: &'static str, value: f64, t: Target) -> Sample {
    Sample {
        key,
        label,
        target: Some(t),
        value,
    }
}

/// What one run of a scenario measured: figures, plus details for the JSON.
struct RunResult {
    samples: Vec<Sample>,
    extra: Value,
}

/// A figure over all runs of a scenario.
struct Metric {
    key: &'static str,
    label: &'static str,
    target: Option<Target>,
    values: Vec<f64>,
}

impl Metric {
    fn median(&self) -> f64 {
        median(&self.values)
    }

    fn pass(&self) -> Option<bool> {
        self.target.map(|t| t.pass(self.median()))
    }
}

struct ScenarioResult {
    scenario: Scenario,
    metrics: Vec<Metric>,
    extras: Vec<Value>,
    failures: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of `sorted` (ascending), `p` in 0..=100.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A number with about 3 significant digits, for the table.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a == 0.0 || a >= 1000.0 || (a >= 100.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

fn round4(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1e4).round() / 1e4)
    } else {
        Value::Null
    }
}

// ------------------------------------------------------------- /proc

fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Clone, Debug, Default)]
struct ThreadSample {
    name: String,
    switches: u64,
    run_ns: u64,
}

/// What /proc says about the daemon at one instant.
#[derive(Clone, Debug)]
struct ProcSample {
    at: Instant,
    /// utime + stime of the whole process (live and exited threads), in ticks.
    cpu_ticks: u64,
    /// Sum over the live threads of the run time in /proc/PID/task/*/schedstat.
    run_ns: u64,
    /// Sum over the live threads of voluntary + nonvoluntary context switches.
    switches: u64,
    rss_kib: u64,
    /// The anonymous (heap, stacks) and file-backed (binary, libraries) parts.
    anon_kib: u64,
    file_kib: u64,
    hwm_kib: u64,
    threads: HashMap<u32, ThreadSample>,
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn proc_sample(pid: u32) -> Res<ProcSample> {
    let at = Instant::now();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "comm)": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let cpu_ticks = tick(11) + tick(12);
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut s = ProcSample {
        at,
        cpu_ticks,
        run_ns: 0,
        switches: 0,
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        anon_kib: status_field(&status, "RssAnon:").unwrap_or(0),
        file_kib: status_field(&status, "RssFile:").unwrap_or(0),
        hwm_kib: status_field(&status, "VmHWM:").unwrap_or(0),
        threads: HashMap::new(),
    };
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir = entry.path();
        let Ok(st) = fs::read_to_string(dir.join("status")) else {
            continue; // the thread just ended
        };
        let switches = status_field(&st, "voluntary_ctxt_switches:").unwrap_or(0)
            + status_field(&st, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        let run_ns = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let name = fs::read_to_string(dir.join("comm"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        s.switches += switches;
        s.run_ns += run_ns;
        s.threads.insert(
            tid,
            ThreadSample {
                name,
                switches,
                run_ns,
            },
        );
    }
    Ok(s)
}

/// CPU, wakeups and memory over a window between two samples.
struct Window {
    secs: f64,
    cpu_ms_per_min: f64,
    cpu_ms_per_min_ticks: f64,
    wakeups_per_s: f64,
    rss_mib: f64,
    detail: Value,
}

fn window(a: &ProcSample, b: &ProcSample) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let per_min = 60.0 / secs;
    let ticks_ms = (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 * 1000.0 / clock_ticks() as f64;
    // schedstat has ns resolution; utime+stime (10 ms ticks) also counts
    // threads that ended in the window. Take the larger of the two.
    let sched_ms = b.run_ns.saturating_sub(a.run_ns) as f64 / 1e6;
    let cpu_ms = sched_ms.max(ticks_ms);
    let mut threads: Vec<(String, u64, f64)> = b
        .threads
        .iter()
        .map(|(tid, t)| {
            let before = a.threads.get(tid).cloned().unwrap_or_default();
            (
                format!("{}/{tid}", t.name),
                t.switches.saturating_sub(before.switches),
                t.run_ns.saturating_sub(before.run_ns) as f64 / 1e6,
            )
        })
        .collect();
    threads.sort_by(|x, y| x.0.cmp(&y.0));
    let detail: Map<String, Value> = threads
        .into_iter()
        .map(|(name, sw, ms)| {
            (
                name,
                json!({"wakeups_per_s": round4(sw as f64 / secs), "cpu_ms": round4(ms)}),
            )
        })
        .collect();
    Window {
        secs,
        cpu_ms_per_min: cpu_ms * per_min,
        cpu_ms_per_min_ticks: ticks_ms * per_min,
        wakeups_per_s: b.switches.saturating_sub(a.switches) as f64 / secs,
        rss_mib: b.rss_kib as f64 / 1024.0,
        detail: Value::Object(detail),
    }
}

// ---------------------------------------------------------------- daemon

/// Receives the daemon's sd_notify datagrams (drained continuously, so the
/// daemon never blocks on a full socket).
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Res<NotifySocket> {
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !s.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        lock(&g).push((Instant::now(), text));
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        Ok(NotifySocket {
            path,
            got,
            stop,
            thread: Some(thread),
        })
    }

    /// When a `STATUS=` line first said at least `n` lines were sent.
    fn lines_sent_at(&self, n: usize) -> Option<Instant> {
        lock(&self.got)
            .iter()
            .find(|(_, t)| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .any(|st| {
                        st.split("; ").any(|part| {
                            part.strip_suffix(" lines sent")
                                .and_then(|k| k.parse::<usize>().ok())
                                .is_some_and(|k| k >= n)
                        })
                    })
            })
            .map(|(at, _)| *at)
    }

    fn ready_at(&self) -> Option<Instant> {
        lock(&self.got)
            .iter()
            .find(|(_, t)| t.lines().any(|l| l == "READY=1"))
            .map(|(at, _)| *at)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// A scenario's temporary directory: logs/, state/, the daemon's stderr.
struct Work {
    dir: tempfile::TempDir,
    spawned: usize,
}

impl Work {
    fn new(ctx: &Ctx, tag: &str) -> Res<Work> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("elm-bench-{tag}-"))
            .tempdir_in(&ctx.tmpdir)?;
        fs::create_dir_all(dir.path().join("logs"))?;
        Ok(Work { dir, spawned: 0 })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn logs(&self) -> PathBuf {
        self.path().join("logs")
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// An Ekos log file as KStars lays them out: DIR/YYYY-MM-DD/log_HH-MM-SS.txt.
    fn ekos_file(&self, lines: &[String]) -> Res<PathBuf> {
        let day = self.logs().join("2025-01-01");
        fs::create_dir_all(&day)?;
        let path = day.join("log_21-30-00.txt");
        let mut f = File::create(&path)?;
        for l in lines {
            f.write_all(l.as_bytes())?;
        }
        Ok(path)
    }

    /// The environment every daemon gets: webhook, logs and state.
    fn base_env(&self, webhook: &str, ekos: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("DISCORD_WEBHOOK_URL".into(), webhook.to_string()),
            ("STATE_DIRECTORY".into(), self.state().display().to_string()),
            ("LOG_LEVEL".into(), "INFO".into()),
        ];
        if ekos {
            env.push((
                "EKOS_LOGS_DIRECTORY".into(),
                self.logs().display().to_string(),
            ));
        }
        env
    }

    /// Starts the daemon with exactly `env` (plus PATH and HOME) and `args`.
    fn spawn(
        &mut self,
        bin: &Path,
        env: &[(String, String)],
        args: &[&str],
        stdout: Stdio,
    ) -> Res<Daemon> {
        self.spawned += 1;
        let n = self.spawned;
        let sock = self.path().join(format!("notify-{n}.sock"));
        let notify = NotifySocket::bind(sock.clone())?;
        let stderr = self.path().join(format!("daemon-{n}.stderr"));
        let started = Instant::now();
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("NOTIFY_SOCKET", &sock)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Daemon {
            child,
            started,
            notify,
            stderr,
        })
    }
}

struct Daemon {
    child: Child,
    started: Instant,
    notify: NotifySocket,
    stderr: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn fail(&self, what: &str) -> Box<dyn std::error::Error> {
        format!("{what}; daemon stderr ends with:\n{}", self.stderr_tail()).into()
    }

    /// Waits for READY=1; returns the time from spawn to it.
    fn wait_ready(&mut self, timeout: Duration) -> Res<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.notify.ready_at() {
                return Ok(at.duration_since(self.started));
            }
            if let Some(st) = self.child.try_wait()? {
                return Err(self.fail(&format!("the daemon exited ({st}) before READY=1")));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(&format!("no READY=1 within {timeout:?}")));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn sample(&self) -> Res<ProcSample> {
        proc_sample(self.pid())
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    fn stop(mut self) -> Res<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(self.fail("the daemon did not stop within 30 s of SIGTERM"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- arrivals

/// Lines delivered to the fake Discord, by token, with the first arrival.
#[derive(Default)]
struct Seen {
    first: HashMap<String, Instant>,
    dups: usize,
    messages: usize,
    code_points: usize,
    last: Option<Instant>,
}

#[derive(Clone)]
struct Collector(Arc<Mutex<Seen>>);

impl Collector {
    /// Observes every accepted message (called once per message, so it stays
    /// cheap even for thousands of 2000-character messages).
    fn attach(fake: &FakeDiscord) -> Collector {
        let c = Collector(Arc::default());
        let seen = c.0.clone();
        fake.on_event(move |ev| {
            if let Event::Accepted(m) = ev {
                let mut s = lock(&seen);
                s.messages += 1;
                s.code_points += m.content.chars().count();
                s.last = Some(m.at);
                for line in code_block_lines(&m.content) {
                    if let Some(tok) = token_of(&line) {
                        if s.first.contains_key(tok) {
                            s.dups += 1;
                        } else {
                            s.first.insert(tok.to_string(), m.at);
                        }
                    }
                }
            }
        });
        c
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.0)
    }

    fn has_all(&self, tokens: &[String]) -> bool {
        let s = self.seen();
        tokens.iter().all(|t| s.first.contains_key(t))
    }

    /// Polls until every token arrived; false on timeout.
    fn wait_all(&self, tokens: &[String], timeout: Duration, daemon: &mut Daemon) -> Res<bool> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            // Tokens arrive roughly in order: skip those already seen.
            {
                let s = self.seen();
                while checked < tokens.len() && s.first.contains_key(&tokens[checked]) {
                    checked += 1;
                }
            }
            if checked == tokens.len() && self.has_all(tokens) {
                return Ok(true);
            }
            if let Some(st) = daemon.child.try_wait()? {
                return Err(daemon.fail(&format!("the daemon exited ({st})")));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Latencies (ms) of the written tokens, and how many never arrived.
    fn latencies(&self, written: &[(String, Instant)]) -> (Vec<f64>, usize) {
        let s = self.seen();
        let mut lat = Vec::new();
        let mut lost = 0;
        for (tok, at) in written {
            match s.first.get(tok) {
                Some(arr) => lat.push(arr.saturating_duration_since(*at).as_secs_f64() * 1e3),
                None => lost += 1,
            }
        }
        lat.sort_by(f64::total_cmp);
        (lat, lost)
    }
}

/// The token of a bench line: its fourth word (see [`line`]).
fn token_of(line: &str) -> Option<&str> {
    line.split_whitespace().nth(3)
}

/// A log line of `len` bytes (plus `\n`) that carries `token` as its 4th
/// word; padded with lower-case letters (never `Q`, see catch-up).
fn line(token: &str, len: usize) -> String {
    let mut s = format!("2025-01-01T21:30:00.000 INFO [bench] {token} ");
    let mut c = b'a';
    while s.len() < len {
        s.push(c as char);
        c = if c == b'z' { b'a' } else { c + 1 };
    }
    s.push('\n');
    s
}

fn no_rate_limit() -> Options {
    Options {
        rate_limit: None,
        wait_delay: None,
        uplink: None,
    }
}

fn env_with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

// ------------------------------------------------------------- scenarios

struct Ctx {
    bin: PathBuf,
    quick: bool,
    tmpdir: PathBuf,
}

const WARMUP_LINES: usize = 5;

/// Writes `tokens` one line at a time, spaced `every`, to `pick(i)`; returns
/// each token with the instant its write(2) returned.
fn write_spaced(
    tokens: &[String],
    every: Duration,
    mut pick: impl FnMut(usize) -> PathBuf,
) -> Res<Vec<(String, Instant)>> {
    let t0 = Instant::now();
    let mut written = Vec::with_capacity(tokens.len());
    for (i, tok) in tokens.iter().enumerate() {
        sleep_until(t0 + every * i as u32);
        let text = line(tok, 100);
        let mut f = OpenOptions::new().append(true).open(pick(i))?;
        f.write_all(text.as_bytes())?; // one write(2): File is unbuffered
        written.push((tok.clone(), Instant::now()));
    }
    Ok(written)
}

fn warm_up(c: &Collector, d: &mut Daemon, run: usize, path: impl Fn(usize) -> PathBuf) -> Res<()> {
    let warm: Vec<String> = (0..WARMUP_LINES)
        .map(|i| format!("warm{run}-{i}"))
        .collect();
    write_spaced(&warm, Duration::from_millis(60), path)?;
    if !c.wait_all(&warm, Duration::from_secs(15), d)? {
        return Err(d.fail("warm-up lines did not arrive within 15 s"));
    }
    Ok(())
}

/// Every fsync and fdatasync of the checkpoint's writer thread waits this
/// long first: a slow SD card, or a disk under load. strace attaches to
/// that one thread only (`-p TID`, no `-f`), so the other threads run
/// untraced: tracing them all would measure strace's cost of every thread
/// start, not the disk's.
const SLOW_FSYNC: &[&str] = &[
    "-qq",
    "-o",
    "/dev/null",
    "-e",
    "trace=fsync,fdatasync",
    "-e",
    "inject=fsync,fdatasync:delay_enter=500000",
    "-p",
];

/// The thread of `pid` whose name starts with `prefix` (names are cut to
/// 15 bytes).
fn thread_named(pid: u32, prefix: &str) -> Option<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// strace, slowing the fsyncs of thread `tid`, until dropped.
struct SlowFsync(Child);

impl SlowFsync {
    fn attach(tid: u32) -> Res<SlowFsync> {
        let mut args: Vec<String> = SLOW_FSYNC.iter().map(|s| s.to_string()).collect();
        args.push(tid.to_string());
        let child = Command::new("strace")
            .args(&args)
            .stdin(Stdio::null())
            .spawn()?;
        // strace is attached once the thread shows a tracer.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let status = fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
            if status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
            {
                return Ok(SlowFsync(child));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Err("strace did not attach to the checkpoint writer within 5 s".into())
    }
}

impl Drop for SlowFsync {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn latency(ctx: &Ctx, run: usize, slow_fsync: bool) -> Res<RunResult> {
    let fake = FakeDiscord::start_with(no_rate_limit());
    let c = Collector::attach(&fake);
    let mut work = Work::new(ctx, if slow_fsync { "slowfsync" } else { "latency" })?;
    let file = work.ekos_file(&[line("existing-0", 100)])?;
    let env = env_with(
        work.base_env(&fake.webhook_url(), true),
        &[
            ("BATCH_SIZE", "1"),
            ("BATCH_TIMEOUT", "0.05"),
            ("RATE_LIMIT_DELAY", "0"),
        ],
    );
    let mut d = work.spawn(&ctx.bin, &env, &[], Stdio::null())?;
    d.wait_ready(Duration::from_secs(10))?;
    let _slow = if slow_fsync {
        let tid = thread_named(d.pid(), "checkpoint-wri")
            .ok_or("no checkpoint-writer thread in the daemon")?;
        Some(SlowFsync::attach(tid)?)
    } else {
        None
    };
    warm_up(&c, &mut d, run, |_| file.clone())?;
    let n = if ctx.quick { 100 } else { 500 };
    let tokens: Vec<String> = (0..n).map(|i| format!("lat{run}-{i:06}")).collect();
    let written = write_spaced(&tokens, Duration::from_millis(50), |_| file.clone())?;
    c.wait_all(&tokens, Duration::from_secs(10), &mut d)?;
    let (lat, lost) = c.latencies(&written);
    let dups = c.seen().dups;
    d.stop()?;
    Ok(RunResult {
        samples: vec![
            sample("p50_ms", "latency p50 (ms)", percentile(&lat, 50.0)),
            target(
                "p99_ms",
                "latency p99 (ms)",
                percentile(&lat, 99.0),
                Target::AtMost(5.0),
            ),
            sample(
                "max_ms",
                "latency max (ms)",
                lat.last().copied().unwrap_or(f64::NAN),
            ),
            target("lost", "lines lost", lost as f64, Target::AtMost(0.0)),
        ],
        extra: json!({"lines": n, "warmup_lines": WARMUP_LINES, "duplicates": dups,
                      "mean_ms": round4(lat.iter().sum::<f64>() / lat.len().max(1) as f64),
                      "over_5ms": lat.iter().filter(|&&l| l > 5.0).count(),
                      "over_20ms": lat.iter().filter(|&&l| l > 20.0).count()}),
    })
}

fn idle(ctx: &Ctx, _run: usize) -> Res<RunResult> {
    let fake = FakeDiscord::start();
    let mut work = Work::new(ctx, "idle")?;
    // A realistic tree: an older night and the current one.
    let old = work.logs().join("2024-12-31");
    fs::create_dir_all(&old)?;
    fs::write(old.join("log_20-00-00.txt"), line("old-0", 100))?;
    work.ekos_file(&[line("existing-0", 100), line("existing-1", 100)])?;
    // Default batching and file checks: an idle daemon as it is deployed.
    let env = work.base_env(&fake.webhook_url(), true);
    let mut d = work.spawn(&ctx.bin, &env, &[], Stdio::null())?;
    d.wait_ready(Duration::from_secs(10))?;
    thread::sleep(Duration::from_secs(2));
    let secs = if ctx.quick { 10 } else { 60 };
    let a = d.sample()?;
    thread::sleep(Duration::from_secs(secs));
    let b = d.sample()?;
    let w = window(&a, &b);
    let requests = fake.requests();
    d.stop()?;
    Ok(RunResult {
        samples: vec![
            target("rss_mib", "RSS (MiB)", w.rss_mib, Target::AtMost(6.0)),
            target(
                "cpu_ms_per_min",
                "CPU (ms per minute)",
                w.cpu_ms_per_min,
                Target::AtMost(10.0),
            ),
            target(
                "wakeups_per_s",
                "wakeups (context switches/s)",
                w.wakeups_per_s,
                Target::AtMost(2.0),
            ),
        ],
        extra: json!({"window_s": round4(w.secs), "threads": w.detail,
                      "cpu_ms_per_min_ticks": round4(w.cpu_ms_per_min_ticks),
                      "hwm_mib": round4(b.hwm_kib as f64 / 1024.0), "requests": requests,
                      "rss_anon_mib": round4(b.anon_kib as f64 / 1024.0),
                      "rss_file_mib": round4(b.file_kib as f64 / 1024.0)}),
    })
}

/// Code points per message the minimum assumes: 2000 less the fences.
const CP_PER_MESSAGE: f64 = 1990.0;
/// Discord's webhook rate: 5 requests per 2 s.
const MESSAGES_PER_S: f64 = 2.5;

fn burst(ctx: &Ctx, run: usize) -> Res<RunResult> {
    let fake = FakeDiscord::start(); // 5 requests per 2 s per webhook
    let c = Collector::attach(&fake);
    let mut work = Work::new(ctx, "burst")?;
    let file = work.ekos_file(&[])?;
    let env = env_with(
        work.base_env(&fake.webhook_url(), true),
        &[
            ("BATCH_SIZE", "10"),
            ("BATCH_TIMEOUT", "1"),
            ("RATE_LIMIT_DELAY", "0"),
        ],
    );
    let mut d = work.spawn(&ctx.bin, &env, &[], Stdio::null())?;
    d.wait_ready(Duration::from_secs(10))?;
    thread::sleep(Duration::from_millis(200));
    let n = if ctx.quick { 2_000 } else { 20_000 };
    let tokens: Vec<String> = (0..n).map(|i| format!("b{run}-{i:06}")).collect();
    let mut text = String::with_capacity(n * 101);
    for t in &tokens {
        text.push_str(&line(t, 100));
    }
    // Code points the lines need in messages: each line plus its newline.
    let chars = text.chars().count() as f64;
    let min_s = (chars / CP_PER_MESSAGE).ceil() / MESSAGES_PER_S;
    let mut f = OpenOptions::new().append(true).open(&file)?;
    f.write_all(text.as_bytes())?;
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(min_s * 3.0 + 60.0);
    let complete = c.wait_all(&tokens, timeout, &mut d)?;
    let wall = t0.elapsed().as_secs_f64();
    let (lost, dups, messages, cps, last) = {
        let s = c.seen();
        let lost = tokens.iter().filter(|t| !s.first.contains_key(*t)).count();
        (lost, s.dups, s.messages, s.code_points, s.last)
    };
    let time_s = if complete {
        last.map_or(wall, |l| l.duration_since(t0).as_secs_f64())
    } else {
        f64::NAN
    };
    let n429 = fake.count_429();
    let requests = fake.requests();
    d.stop()?;
    Ok(RunResult {
        samples: vec![
            sample("time_s", "time to last line (s)", time_s),
            sample("min_s", "minimum possible (s)", min_s),
            target(
                "ratio",
                "time / minimum",
                time_s / min_s,
                Target::AtMost(1.1),
            ),
            target(
                "cp_per_message",
                "code points per message",
                cps as f64 / messages.max(1) as f64,
                Target::AtLeast(1900.0),
            ),
            target("n429", "429 answers", n429 as f64, Target::AtMost(0.0)),
            sample("messages", "messages", messages as f64),
            target("lost", "lines lost", lost as f64, Target::AtMost(0.0)),
        ],
        extra: json!({
            "lines": n, "line_code_points": 101, "total_code_points": chars,
            "min_formula": "ceil(sum(code points of each line + 1) / 1990) / 2.5 messages/s",
            "requests": requests, "duplicates": dups, "complete": complete,
        }),
    })
}

/// Bytes of one catch-up line, newline included.
const CATCHUP_LINE: usize = 100;

fn catchup(ctx: &Ctx, _run: usize) -> Res<RunResult> {
    let fake = FakeDiscord::start_with(no_rate_limit());
    let mut work = Work::new(ctx, "catchup")?;
    let file = work.ekos_file(&[])?;
    let env = work.base_env(&fake.webhook_url(), true);
    // 1. A normal start registers the (empty) file at offset 0 in the
    //    checkpoint; then a clean stop.
    let mut d = work.spawn(&ctx.bin, &env, &[], Stdio::null())?;
    d.wait_ready(Duration::from_secs(10))?;
    let ckpt = work.state().join("checkpoint.journal");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read(&ckpt).is_ok_and(|t| t.windows(name.len()).any(|w| w == name.as_bytes())) {
        if Instant::now() >= deadline {
            return Err(d.fail("checkpoint.journal does not name the log file"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let st = d.stop()?;
    if !st.success() {
        return Err(format!("first daemon exited with {st}").into());
    }
    // 2. The backlog, written and flushed to disk before the clock starts
    //    (it stays in the page cache: this measures the daemon, not the disk).
    let bytes: u64 = if ctx.quick {
        100_000_000
    } else {
        1_000_000_000
    };
    let n = (bytes / CATCHUP_LINE as u64) as usize;
    eprintln!("  writing a {} MB backlog", bytes / 1_000_000);
    {
        let mut w = BufWriter::with_capacity(8 << 20, OpenOptions::new().append(true).open(&file)?);
        for i in 0..n {
            // One `Q` per line: the output is checked by counting them.
            w.write_all(line(&format!("c{i:09} Q"), CATCHUP_LINE - 1).as_bytes())?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let size = fs::metadata(&file)?.len();
    // 3. --dry-run resumes from offset 0 and prints every request body.
    let env = env_with(
        env,
        &[
            ("RATE_LIMIT_DELAY", "0"),
            ("BATCH_SIZE", "100000"),
            ("BATCH_TIMEOUT", "0.01"),
        ],
    );
    // Into /dev/null, as the issue allows: a reader of ours would compete
    // with the daemon for the two cores. The end is when the daemon's
    // STATUS= line says every line was sent.
    let mut d = work.spawn(&ctx.bin, &env, &["--dry-run"], Stdio::null())?;
    let ready = d.wait_ready(Duration::from_secs(10))?;
    let timeout = Duration::from_secs(if ctx.quick { 120 } else { 900 });
    let deadline = Instant::now() + timeout;
    let end = loop {
        if let Some(at) = d.notify.lines_sent_at(n) {
            break at;
        }
        if Instant::now() >= deadline {
            return Err(d.fail(&format!(
                "the backlog was not printed within {}s",
                timeout.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let secs = end.duration_since(d.started).as_secs_f64();
    let s = d.sample()?;
    d.stop()?;
    Ok(RunResult {
        samples: vec![
            target(
                "mb_per_s",
                "throughput (MB/s)",
                size as f64 / 1e6 / secs,
                Target::AtLeast(200.0),
            ),
            sample("lines_per_s", "lines/s", n as f64 / secs),
            sample("elapsed_s", "elapsed (s)", secs),
            sample("peak_rss_mib", "peak RSS (MiB)", s.hwm_kib as f64 / 1024.0),
        ],
        extra: json!({"file_bytes": size, "lines": n,
                      "ready_s": round4(ready.as_secs_f64()),
                      "cpu_s": round4(s.cpu_ticks as f64 / clock_ticks() as f64)}),
    })
}

fn manyfiles(ctx: &Ctx, run: usize) -> Res<RunResult> {
    const DIRS: usize = 100;
    const PER_DIR: usize = 100;
    let fake = FakeDiscord::start_with(no_rate_limit());
    let c = Collector::attach(&fake);
    let mut work = Work::new(ctx, "manyfiles")?;
    let root = work.path().join("many");
    let file = |i: usize| {
        root.join(format!("d{:03}", i / PER_DIR))
            .join(format!("f{:03}.log", i % PER_DIR))
    };
    for d in 0..DIRS {
        fs::create_dir_all(root.join(format!("d{d:03}")))?;
    }
    for i in 0..DIRS * PER_DIR {
        fs::write(file(i), line(&format!("init-{i}"), 100))?;
    }
    let config = work.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "[[source]]\nname = \"many\"\nroot = \"{}\"\ninclude = [\"**/*.log\"]\nfollow = \"all\"\n",
            root.display()
        ),
    )?;
    // BATCH_SIZE=1: each appended line is posted at once.
    let env = env_with(
        work.base_env(&fake.webhook_url(), false),
        &[("BATCH_SIZE", "1"), ("RATE_LIMIT_DELAY", "0")],
    );
    let cfg = config.display().to_string();
    let mut d = work.spawn(&ctx.bin, &env, &["--config", &cfg], Stdio::null())?;
    let ready = d.wait_ready(Duration::from_secs(60))?;
    thread::sleep(Duration::from_secs(1));
    // A whole minute: the window then holds exactly one of the periodic
    // rescans (FILE_CHECK_INTERVAL, 60 s by default), which with 10,000
    // files is most of the idle cost; 30 s would see one or none.
    let secs = if ctx.quick { 5 } else { 60 };
    let a = d.sample()?;
    thread::sleep(Duration::from_secs(secs));
    let b = d.sample()?;
    let w = window(&a, &b);
    let pick = |i: usize| file((i * 379 + 17) % (DIRS * PER_DIR));
    warm_up(&c, &mut d, run, pick)?;
    let tokens: Vec<String> = (0..20).map(|i| format!("mf{run}-{i:03}")).collect();
    let written = write_spaced(&tokens, Duration::from_millis(300), |i| {
        pick(i + WARMUP_LINES)
    })?;
    c.wait_all(&tokens, Duration::from_secs(10), &mut d)?;
    let (lat, lost) = c.latencies(&written);
    let hwm = d.sample()?.hwm_kib;
    let followed = fs::read_to_string(&d.stderr)
        .unwrap_or_default()
        .matches("following ")
        .count();
    d.stop()?;
    Ok(RunResult {
        samples: vec![
            target(
                "ready_s",
                "time to READY (s)",
                ready.as_secs_f64(),
                Target::AtMost(1.0),
            ),
            target("rss_mib", "RSS (MiB)", w.rss_mib, Target::AtMost(32.0)),
            target(
                "cpu_ms_per_min",
                "idle CPU (ms per minute)",
                w.cpu_ms_per_min,
                Target::AtMost(10.0),
            ),
            sample("wakeups_per_s", "idle wakeups/s", w.wakeups_per_s),
            sample(
                "latency_p50_ms",
                "latency median (ms)",
                percentile(&lat, 50.0),
            ),
            sample(
                "latency_max_ms",
                "latency max (ms)",
                lat.last().copied().unwrap_or(f64::NAN),
            ),
            sample("peak_rss_mib", "peak RSS (MiB)", hwm as f64 / 1024.0),
            target("lost", "lines lost", lost as f64, Target::AtMost(0.0)),
        ],
        extra: json!({"files": DIRS * PER_DIR, "dirs": DIRS, "window_s": round4(w.secs),
                      "threads": w.detail,
                      "rss_anon_mib": round4(b.anon_kib as f64 / 1024.0),
                      "rss_file_mib": round4(b.file_kib as f64 / 1024.0),
                      "cpu_ms_per_min_ticks": round4(w.cpu_ms_per_min_ticks),
                      "following_log_lines": followed, "appends": tokens.len()}),
    })
}

/// The checkpoint store alone (no daemon): start-up with many records,
/// and what a commit costs the sender while the writer thread fsyncs.
fn checkpoint(ctx: &Ctx, _run: usize) -> Res<RunResult> {
    use ekos_log_monitor::checkpoint::{FileRecord, Store, fingerprint};
    let work = Work::new(ctx, "checkpoint")?;
    let state = work.state();
    let records: u64 = if ctx.quick { 10_000 } else { 100_000 };
    let rec = |i: u64| FileRecord {
        source: format!("source{}", i % 4),
        path: format!("/var/log/jobs/{}/run-{i:06}.log", i % 100).into(),
        dev: 1,
        ino: i,
        fp_len: 8,
        fp_hash: fingerprint(&i.to_le_bytes()),
        offset: i * 100,
        seen: 0,
    };
    // 1. A state of `records` files (each its own path), then a clean stop.
    {
        let s = Store::open(&state, true)?;
        for i in 0..records {
            let id = s.track(rec(i));
            s.release(id);
        }
        if !s.flush(Duration::from_secs(60)) {
            return Err("the records were not written within 60 s".into());
        }
    }
    let journal = fs::metadata(state.join("checkpoint.journal"))?.len();
    // 2. Start-up: open, then what the watcher does with it.
    let t = Instant::now();
    let s = Store::open(&state, true)?;
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dormant: usize = (0..4).map(|k| s.dormant(&format!("source{k}")).len()).sum();
    let dormant_s = t.elapsed().as_secs_f64();
    if dormant as u64 != records {
        return Err(format!("{dormant} dormant records of {records}").into());
    }
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in (0..records).step_by((records / 1000) as usize) {
        let c = s
            .claim(&format!("source{}", i % 4), 1, i, |_| {
                Some(i.to_le_bytes().to_vec())
            })
            .ok_or("a record was not claimed")?;
        if c.offset != i * 100 {
            return Err(format!("record {i} resumed at {}", c.offset).into());
        }
        ids.push(c.id);
    }
    let claim_us = t.elapsed().as_secs_f64() * 1e6 / ids.len() as f64;
    // 3. The posting path: one commit a millisecond for 3 s, each timed.
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        n += 1;
        let id = ids[(n % ids.len() as u64) as usize];
        let t = Instant::now();
        s.commit([(id, 1_000_000_000 + n)])?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    if !s.flush(Duration::from_secs(30)) {
        return Err("the commits were not durable within 30 s".into());
    }
    let drain_s = t.elapsed().as_secs_f64();
    drop(s);
    lat.sort_by(f64::total_cmp);
    Ok(RunResult {
        samples: vec![
            target("open_s", "open (s)", open_s, Target::AtMost(1.0)),
            sample("dormant_s", "dormant, all sources (s)", dormant_s),
            sample("claim_us", "claim (us)", claim_us),
            target(
                "commit_p99_us",
                "commit p99 (us)",
                percentile(&lat, 99.0),
                Target::AtMost(100.0),
            ),
            sample("commit_max_us", "commit max (us)", lat[lat.len() - 1]),
            sample("durable_after_s", "last commit durable after (s)", drain_s),
        ],
        extra: json!({"records": records, "journal_bytes": journal, "commits": lat.len(),
                      "commit_p50_us": round4(percentile(&lat, 50.0))}),
    })
}

fn run_one(ctx: &Ctx, sc: Scenario, run: usize) -> Res<RunResult> {
    match sc {
        Scenario::Latency => latency(ctx, run, false),
        Scenario::SlowFsync => latency(ctx, run, true),
        Scenario::Idle => idle(ctx, run),
        Scenario::Burst => burst(ctx, run),
        Scenario::Catchup => catchup(ctx, run),
        Scenario::ManyFiles => manyfiles(ctx, run),
        Scenario::Checkpoint => checkpoint(ctx, run),
    }
}

// ---------------------------------------------------------------- output

fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<30} {:>10}  {:<26} {:<8} result",
        "scenario", "figure", "median", "runs", "target"
    );
    let _ = writeln!(out, "{}", "-".repeat(98));
    for r in results {
        for f in &r.failures {
            let _ = writeln!(out, "{:<10} FAILED: {}", r.scenario.name(), first_line(f));
        }
        for m in &r.metrics {
            let runs: Vec<String> = m.values.iter().map(|v| num(*v)).collect();
            let (t, res) = match (m.target, m.pass()) {
                (Some(t), Some(p)) => (t.show(), if p { "PASS" } else { "MISS" }),
                _ => (String::new(), ""),
            };
            let _ = writeln!(
                out,
                "{:<10} {:<30} {:>10}  {:<26} {:<8} {res}",
                r.scenario.name(),
                m.label,
                num(m.median()),
                runs.join(" "),
                t
            );
        }
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn json_line(r: &ScenarioResult, opts: &Opts, machine: &Value) -> String {
    let metrics: Map<String, Value> = r
        .metrics
        .iter()
        .map(|m| {
            let mut v = json!({
                "median": round4(m.median()),
                "values": m.values.iter().map(|x| round4(*x)).collect::<Vec<_>>(),
            });
            if let (Some(t), Some(p)) = (m.target, m.pass()) {
                v["target"] = json!(t.show());
                v["pass"] = json!(p);
            }
            (m.key.to_string(), v)
        })
        .collect();
    json!({
        "bench": "ekos-log-monitor",
        "version": env!("CARGO_PKG_VERSION"),
        "scenario": r.scenario.name(),
        "quick": opts.quick,
        "runs": opts.runs,
        "tmpdir": opts.tmpdir.display().to_string(),
        "tmpdir_fs": filesystem(&opts.tmpdir),
        "completed_runs": r.extras.len(),
        "machine": machine,
        "metrics": metrics,
        "details": r.extras,
        "failures": r.failures,
    })
    .to_string()
}

/// The daemon binary next to this example: target/<profile>/ekos-log-monitor.
fn daemon_binary() -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    let bin = dir.join("ekos-log-monitor");
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        )
        .into());
    }
    // Warn when the sources changed since the binary was built.
    let built = fs::metadata(&bin)?.modified()?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newer = fs::read_dir(&src).into_iter().flatten().flatten().any(|e| {
        e.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
    });
    if newer {
        eprintln!(
            "warning: {} is older than {}: run `cargo build --release` to measure the current code",
            bin.display(),
            src.display()
        );
    }
    Ok(bin)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let bin = match daemon_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let machine = machine();
    let ctx = Ctx {
        bin,
        quick: opts.quick,
        tmpdir: opts.tmpdir.clone(),
    };
    eprintln!(
        "bench: {} on {} ({} cores); {} run(s) per scenario{}; files in {}",
        ctx.bin.display(),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["nproc"],
        opts.runs,
        if opts.quick { ", quick" } else { "" },
        opts.tmpdir.display()
    );
    let mut results = Vec::new();
    for &sc in &opts.scenarios {
        let mut r = ScenarioResult {
            scenario: sc,
            metrics: Vec::new(),
            extras: Vec::new(),
            failures: Vec::new(),
        };
        for run in 1..=opts.runs {
            eprintln!("{} run {run}/{} ...", sc.name(), opts.runs);
            let t = Instant::now();
            match run_one(&ctx, sc, run) {
                Ok(res) => {
                    let figures: Vec<String> = res
                        .samples
                        .iter()
                        .map(|s| format!("{}={}", s.key, num(s.value)))
                        .collect();
                    eprintln!(
                        "  {} ({:.1} s)",
                        figures.join(" "),
                        t.elapsed().as_secs_f64()
                    );
                    for s in res.samples {
                        match r.metrics.iter_mut().find(|m| m.key == s.key) {
                            Some(m) => m.values.push(s.value),
                            None => r.metrics.push(Metric {
                                key: s.key,
                                label: s.label,
                                target: s.target,
                                values: vec![s.value],
                            }),
                        }
                    }
                    r.extras.push(res.extra);
                }
                Err(e) => {
                    eprintln!("  FAILED: {e}");
                    r.failures.push(e.to_string());
                }
            }
        }
        results.push(r);
    }
    println!(
        "\nekos-log-monitor {} benchmark; machine: {} x {} ({} GiB, Linux {}); \
         files in {} ({}); median of {} run(s){}\n",
        env!("CARGO_PKG_VERSION"),
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["mem_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        opts.tmpdir.display(),
        filesystem(&opts.tmpdir),
        opts.runs,
        if opts.quick { " (--quick)" } else { "" }
    );
    print!("{}", table(&results));
    println!();
    for r in &results {
        println!("{}", json_line(r, &opts, &machine));
    }
    if results.iter().any(|r| !r.failures.is_empty()) {
        std::process::exit(1);
    }
}
