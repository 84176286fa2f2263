//! Actor tests: `Sender::run` on a thread, driven over in-memory channels,
//! with a scripted fake sink per route (answers, hangs); no network.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender as Tx, bounded};

use super::*;
use crate::checkpoint::{FileId, FileRecord};
use crate::discord::{RateInfo, classify};
use crate::tail::Line;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Req {
    route: usize,
    /// Sent as an attachment.
    file: bool,
    lines: Vec<String>,
    /// On a forum route: the thread (`open:<name>` for a new post).
    thread: Option<String>,
    /// The JSON payload as sent (empty for an attachment).
    json: String,
}

enum Reply {
    /// Status and body, classified like a real answer.
    Answer(u16, String),
    /// Block until the test releases (or ends), then answer.
    Hang(u16, String),
}

fn ok() -> Reply {
    Reply::Answer(204, String::new())
}

type Script = Box<dyn FnMut(&Req) -> Reply + Send>;

#[derive(Default)]
struct World {
    requests: Mutex<Vec<Req>>,
    accepted: Mutex<Vec<Req>>,
}

impl World {
    fn requests(&self, route: usize) -> Vec<Req> {
        let all = self.requests.lock().unwrap();
        all.iter().filter(|r| r.route == route).cloned().collect()
    }

    fn accepted_lines(&self, route: usize) -> Vec<String> {
        let all = self.accepted.lock().unwrap();
        all.iter()
            .filter(|r| r.route == route)
            .flat_map(|r| r.lines.clone())
            .collect()
    }
}

struct Fake {
    route: usize,
    script: Script,
    world: Arc<World>,
    release: Receiver<()>,
}

/// The lines a payload carries: code-block lines of the content, or the
/// attached file's lines.
fn decode(p: &Payload) -> (bool, Vec<String>) {
    if p.content_type.starts_with("multipart/") {
        let body = String::from_utf8_lossy(&p.body).into_owned();
        let at = body.find("filename=").expect("a file part");
        let data_start = at + body[at..].find("\r\n\r\n").unwrap() + 4;
        let data_end = data_start + body[data_start..].find("\r\n--").unwrap();
        let lines = body[data_start..data_end]
            .lines()
            .filter(|l| !l.starts_with("==> "))
            .map(String::from)
            .collect();
        return (true, lines);
    }
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    let content = v["content"].as_str().unwrap_or("");
    let lines = content
        .lines()
        .filter(|l| !l.starts_with("```"))
        .map(|l| l.replace('\u{200b}', ""))
        .collect();
    (false, lines)
}

impl Sink for Fake {
    fn post(&mut self, payload: &Payload, _timeout: Duration) -> Outcome {
        let (file, lines) = decode(payload);
        let json = match file {
            true => String::new(),
            false => String::from_utf8_lossy(&payload.body).into_owned(),
        };
        let req = Req {
            route: self.route,
            file,
            lines,
            thread: None,
            json,
        };
        self.world.requests.lock().unwrap().push(req.clone());
        let (status, body) = match (self.script)(&req) {
            Reply::Answer(s, b) => (s, b),
            Reply::Hang(s, b) => {
                let _ = self.release.recv();
                (s, b)
            }
        };
        let outcome = classify(status, RateInfo::default(), None, &body);
        if matches!(outcome, Outcome::Delivered(_)) {
            self.world.accepted.lock().unwrap().push(req);
        }
        outcome
    }

    fn send(
        &mut self,
        req: &crate::discord::Request,
        payload: &Payload,
        timeout: Duration,
    ) -> crate::discord::Reply {
        use crate::discord::{Request, Thread};
        // Lines go as plain posts, through `post`, except on a forum
        // route; notices come here.
        assert_ne!(*req, Request::PLAIN, "lines use post");
        let v: serde_json::Value = serde_json::from_slice(&payload.printable).unwrap();
        let what = match req {
            Request::Edit { id, .. } => format!("EDIT {id}"),
            _ => "POST".to_string(),
        };
        let thread = match req {
            Request::Post {
                thread: Thread::In(t),
                ..
            }
            | Request::Edit {
                thread: Some(t), ..
            } => Some(t.to_string()),
            Request::Post {
                thread: Thread::Open(name),
                ..
            } => {
                assert_eq!(v["thread_name"], name.as_str(), "the body names the post");
                Some(format!("open:{name}"))
            }
            _ => None,
        };
        let text = v["content"].as_str().unwrap_or("").to_string();
        let (file, lines) = if text.starts_with("```") {
            decode(payload)
        } else {
            (v.get("files").is_some(), vec![format!("{what} {text}")])
        };
        let r = Req {
            route: self.route,
            file,
            lines,
            thread: thread.clone(),
            json: String::from_utf8_lossy(&payload.printable).into_owned(),
        };
        self.world.requests.lock().unwrap().push(r.clone());
        let (status, body) = match (self.script)(&r) {
            Reply::Answer(s, b) | Reply::Hang(s, b) => (s, b),
        };
        let _ = timeout;
        // A request naming a thread is read as the client reads it (Gone).
        let outcome = match &thread {
            Some(_) => {
                crate::discord::read_reply(req, status, RateInfo::default(), None, &body).outcome
            }
            None => classify(status, RateInfo::default(), None, &body),
        };
        let delivered = matches!(outcome, Outcome::Delivered(_));
        if delivered {
            self.world.accepted.lock().unwrap().push(r);
        }
        let n = self.world.requests.lock().unwrap().len();
        let id = format!("{}{n}", self.route + 1);
        // A new forum post's thread has the id of its first message.
        let channel = match &thread {
            Some(t) if t.starts_with("open:") => id.clone(),
            Some(t) => t.clone(),
            None => "1".into(),
        };
        crate::discord::Reply {
            outcome,
            message: (delivered && what == "POST").then(|| crate::discord::Posted {
                id: crate::discord::Snowflake::parse(&id).unwrap(),
                channel_id: crate::discord::Snowflake::parse(&channel).unwrap(),
                attachments: vec![],
            }),
        }
    }

    fn describe(&self) -> String {
        format!("fake-{}", self.route)
    }
}

struct Harness {
    world: Arc<World>,
    store: Arc<Store>,
    stats: Arc<Stats>,
    lines: Vec<Tx<Chunk>>,
    notices: Tx<crate::notice::Notice>,
    ctl: Tx<Control>,
    release: Tx<()>,
    /// One file per route, and where its next line starts.
    files: Vec<(FileId, u64)>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn settings() -> Settings {
    Settings {
        batch_size: 1000,
        batch_timeout: Duration::ZERO,
        rate_limit_delay: Duration::ZERO,
        max_retries: 3,
        fold: Fold::Never,
        alerts: None,
        grace: Duration::from_millis(300),
        notice_file: None,
        route_ids: vec!["r0".into(), "r1".into()],
        forums: Vec::new(),
        night_start: crate::localtime::TimeOfDay(12 * 3600),
    }
}

fn start(scripts: Vec<Script>, s: Settings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), false).unwrap());
    let stats = Arc::new(Stats::default());
    let world = Arc::new(World::default());
    let (release, release_rx) = bounded(0);
    let mut files = Vec::new();
    let sinks: Vec<Box<dyn Sink>> = scripts
        .into_iter()
        .enumerate()
        .map(|(route, script)| -> Box<dyn Sink> {
            files.push((
                store.track(FileRecord {
                    source: "s".into(),
                    path: format!("/logs/{route}.log").into(),
                    dev: 1,
                    ino: route as u64 + 1,
                    fp_len: 0,
                    fp_hash: 0,
                    offset: 0,
                    seen: 0,
                }),
                0,
            ));
            Box::new(Fake {
                route,
                script,
                world: world.clone(),
                release: release_rx.clone(),
            })
        })
        .collect();
    // Tiny backoffs: 10 ms, 20 ms, 40 ms...
    let sender = Sender::with_settings(s, sinks, store.clone(), stats.clone(), |_| {
        Box::new(|| 0.01)
    })
    .unwrap();
    let (notices, notice_rx) = bounded(16);
    let sender = sender.with_notices(notice_rx);
    let (tx, rx): (Vec<_>, Vec<_>) = files.iter().map(|_| bounded(8)).unzip();
    let (ctl, ctl_rx) = bounded(16);
    let thread = std::thread::spawn(move || sender.run(rx, ctl_rx));
    Harness {
        world,
        store,
        stats,
        lines: tx,
        notices,
        ctl,
        release,
        files,
        thread: Some(thread),
        _dir: dir,
    }
}

impl Harness {
    /// Lines for route `route`'s file, as the watcher would read them.
    fn chunk(&mut self, route: usize, texts: &[&str]) -> Chunk {
        let (file, start) = self.files[route];
        let mut end = start;
        let lines: Vec<Line> = texts
            .iter()
            .map(|t| {
                end += t.len() as u64 + 1;
                Line {
                    text: t.to_string(),
                    end,
                }
            })
            .collect();
        self.files[route].1 = end;
        Chunk {
            file,
            source: 0,
            route,
            label: None,
            start,
            shown: lines.iter().map(|_| Some(None)).collect(),
            lines,
        }
    }

    fn send(&mut self, route: usize, texts: &[&str]) {
        let c = self.chunk(route, texts);
        self.lines[route].send(c).unwrap();
    }

    fn offset(&self, route: usize) -> u64 {
        self.store.offset(self.files[route].0).unwrap()
    }

    /// Asks to stop, and closes the line channels as the watcher does
    /// when it stops; waits for `run` to return; how long it took.
    fn shutdown(&mut self) -> Duration {
        let t = Instant::now();
        self.ctl.send(Control::Shutdown).unwrap();
        self.lines.clear();
        let h = self.thread.take().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || h.is_finished()),
            "run did not return"
        );
        h.join().unwrap();
        t.elapsed()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::Abort);
    }
}

/// Polls `cond` until it holds or `timeout` passed.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

const LONG: Duration = Duration::from_secs(5);

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_404_route_does_not_stop_another_routes_lines() {
    let mut h = start(
        vec![
            Box::new(|_: &Req| Reply::Answer(404, r#"{"code":10015}"#.into())),
            Box::new(|_: &Req| ok()),
        ],
        settings(),
    );
    // Route 0 stops; its channel fills up (backpressure on its files only).
    let big = "x".repeat(200 * 1024);
    let mut filled = false;
    for _ in 0..200 {
        let c = h.chunk(0, &[&big, &big]);
        if h.lines[0]
            .send_timeout(c, Duration::from_millis(200))
            .is_err()
        {
            filled = true;
            break;
        }
    }
    assert!(filled, "route 0 keeps taking lines beyond its budget");
    let want = texts("healthy", 10);
    for t in &want {
        h.send(1, &[t]);
    }
    assert!(wait_until(LONG, || h.world.accepted_lines(1) == want));
    // Accepted by the fake just before the sender hears of it.
    assert!(wait_until(LONG, || h.offset(1) == h.files[1].1));
    assert_eq!(h.offset(0), 0, "nothing of the stopped route is committed");
    assert_eq!(
        h.world.requests(0).len(),
        1,
        "stopped: one request, then a long pause"
    );
}

#[test]
fn a_hanging_post_does_not_stop_another_route_nor_pings() {
    let mut h = start(
        vec![
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
            Box::new(|_: &Req| ok()),
        ],
        settings(),
    );
    h.send(0, &["stuck"]);
    assert!(wait_until(LONG, || h.world.requests(0).len() == 1));
    let want = texts("free", 20);
    for t in &want {
        h.send(1, &[t]);
    }
    assert!(wait_until(LONG, || h.world.accepted_lines(1) == want));
    h.ctl.send(Control::Ping(7)).unwrap();
    assert!(wait_until(LONG, || h
        .stats
        .sender_pong
        .load(Ordering::Relaxed)
        == 7));
    assert_eq!(h.offset(0), 0);
    // Released, the hung POST is accepted and committed.
    h.release.send(()).unwrap();
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
}

#[test]
fn shutdown_with_a_hanging_post_returns_within_the_grace() {
    let mut h = start(
        vec![
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
            Box::new(|_: &Req| ok()),
        ],
        settings(),
    );
    h.send(0, &["in flight"]);
    h.send(1, &["fine"]);
    assert!(wait_until(LONG, || h.world.requests(0).len() == 1
        && h.offset(1) == h.files[1].1));
    let took = h.shutdown();
    let grace = settings().grace;
    assert!(took >= grace, "gave up before the grace: {took:?}");
    assert!(took < grace + Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        h.offset(0),
        0,
        "the abandoned POST's lines stay uncommitted"
    );
}

#[test]
fn shutdown_posts_what_is_queued_then_returns_at_once() {
    let mut s = settings();
    s.batch_timeout = Duration::from_secs(30);
    s.grace = Duration::from_secs(5);
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    h.send(0, &["a", "b", "c"]);
    // Not due for 30 s; a stop posts it at once and returns when done.
    assert!(!wait_until(Duration::from_millis(100), || !h
        .world
        .requests(0)
        .is_empty()));
    let took = h.shutdown();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(h.world.accepted_lines(0), ["a", "b", "c"]);
    assert_eq!(h.offset(0), h.files[0].1);
}

#[test]
fn a_400_not_about_the_body_is_retried_unchanged_and_never_commits() {
    let answers = Arc::new(Mutex::new(VecDeque::from([
        (400, "<html><body>400 Bad Request</body></html>".to_string()),
        (
            400,
            r#"{"message": "400: Bad Request", "code": 0}"#.to_string(),
        ),
        (409, "{}".to_string()),
        (408, String::new()),
    ])));
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let mut h = start(
        vec![Box::new({
            let answers = answers.clone();
            move |_: &Req| match answers.lock().unwrap().pop_front() {
                Some((s, b)) => Reply::Answer(s, b),
                None => ok(),
            }
        })],
        settings(),
    );
    let want = texts("line", 5);
    h.send(0, &refs(&want));
    let store = h.store.clone();
    let file = h.files[0].0;
    assert!(wait_until(LONG, || {
        offsets.lock().unwrap().push(store.offset(file).unwrap());
        h.world.accepted_lines(0) == want
    }));
    let reqs = h.world.requests(0);
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|r| r.lines == want && !r.file), "{reqs:?}");
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
    // Before the acceptance nothing was committed.
    let seen = offsets.lock().unwrap();
    assert!(seen.iter().all(|o| *o == 0 || *o == h.files[0].1));
}

#[test]
fn a_400_about_size_splits_until_it_fits() {
    // Discord's answer for content over its limit, here: over 2 lines.
    let too_long = r#"{"code": 50035, "message": "Invalid Form Body", "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}"#;
    let mut h = start(
        vec![Box::new(move |r: &Req| {
            if r.lines.len() > 2 {
                Reply::Answer(400, too_long.into())
            } else {
                ok()
            }
        })],
        settings(),
    );
    let want = texts("part", 11);
    h.send(0, &refs(&want));
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() >= want.len()));
    assert_eq!(h.world.accepted_lines(0), want, "every line once, in order");
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
    let reqs = h.world.requests(0);
    assert!(reqs.iter().all(|r| !r.file), "no line needed an attachment");
}

#[test]
fn a_line_rejected_for_its_content_goes_as_an_attachment_and_commits_after() {
    let automod = r#"{"code": 200000, "message": "Message was blocked by automatic moderation"}"#;
    let mut h = start(
        vec![Box::new(move |r: &Req| {
            let bad = r.lines.iter().any(|l| l.contains("BADWORD"));
            match (bad, r.file) {
                (true, false) => Reply::Answer(400, automod.into()),
                // The attachment is accepted only once the test says so.
                (true, true) => Reply::Hang(200, "{}".into()),
                _ => ok(),
            }
        })],
        settings(),
    );
    h.send(0, &["before one", "before two"]);
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
    let bad_start = h.files[0].1;
    h.send(0, &["BADWORD here", "after"]);
    assert!(wait_until(LONG, || h
        .world
        .requests(0)
        .iter()
        .any(|r| r.file)));
    // In flight as an attachment: not committed past the line's start.
    assert_eq!(h.offset(0), bad_start);
    assert!(!h.world.accepted_lines(0).contains(&"after".to_string()));
    h.release.send(()).unwrap();
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
    assert_eq!(
        h.world.accepted_lines(0),
        ["before one", "before two", "BADWORD here", "after"]
    );
    let files: Vec<Req> = h.world.requests(0).into_iter().filter(|r| r.file).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].lines, ["BADWORD here"]);
}

#[test]
fn a_line_refused_even_as_an_attachment_stops_the_route_uncommitted() {
    let automod = r#"{"code": 200000, "message": "Message was blocked by automatic moderation"}"#;
    let mut h = start(
        vec![
            Box::new(move |r: &Req| {
                if r.lines.iter().any(|l| l.contains("BADWORD")) {
                    Reply::Answer(400, automod.into())
                } else {
                    ok()
                }
            }),
            Box::new(|_: &Req| ok()),
        ],
        settings(),
    );
    h.send(0, &["first", "BADWORD", "later"]);
    assert!(wait_until(LONG, || h
        .world
        .requests(0)
        .iter()
        .any(|r| r.file)));
    assert!(wait_until(LONG, || h.world.accepted_lines(0) == ["first"]));
    assert!(wait_until(LONG, || h.offset(0) == "first\n".len() as u64));
    let n = h.world.requests(0).len();
    // The other route goes on; this one waits ten minutes, uncommitted
    // past "first".
    h.send(1, &["other"]);
    assert!(wait_until(LONG, || h.offset(1) == h.files[1].1));
    assert_eq!(h.world.requests(0).len(), n);
    assert_eq!(h.offset(0), "first\n".len() as u64);
}

#[test]
fn alert_copies_hold_the_checkpoint_until_accepted() {
    use crate::ekos::Severity;
    use crate::format::EventPart;
    let mut s = settings();
    s.alerts = Some((1, Severity::Warning));
    let mut h = start(
        vec![
            Box::new(|_: &Req| ok()),
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
        ],
        s,
    );
    let mut c = h.chunk(0, &["plain", "ALERT", "after"]);
    c.shown[1] = Some(Some(EventPart {
        severity: Severity::Error,
        title: "Guiding failed".into(),
        footer: None,
        mention: None,
        alert_mention: None,
        covered: false,
        rule: "guide-aborted".into(),
        more: 0,
    }));
    h.lines[0].send(c).unwrap();
    assert!(wait_until(LONG, || h.world.accepted.lock().unwrap().len()
        >= 2
        && h.world.requests(1).len() == 1));
    // Lines route delivered everything; the alert copy hangs: the
    // checkpoint stays at the alert line's start.
    assert!(wait_until(LONG, || h.offset(0) == "plain\n".len() as u64));
    assert!(!wait_until(Duration::from_millis(100), || h.offset(0)
        > "plain\n".len() as u64));
    h.release.send(()).unwrap();
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
}

/// Embeds in the requests of `route`.
fn embeds(world: &World, route: usize) -> usize {
    (world.requests(route).iter())
        .filter(|r| !r.file)
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
            v["embeds"].as_array().map_or(0, Vec::len)
        })
        .sum()
}

/// An event an incident stands for (`covered`: the night watch posts the
/// incident to the alerts route itself) has no copy there, and holds
/// nothing: with the alerts webhook hanging the line still commits; an
/// event not covered (its copy to the night watch was dropped) in the
/// same chunk still has its copy, pinging as its rule says.
#[test]
fn covered_events_have_no_alert_copy_and_do_not_hold_the_checkpoint() {
    use crate::ekos::{Mention, Severity};
    use crate::format::EventPart;
    let event = |covered: bool| {
        Some(Some(EventPart {
            severity: Severity::Error,
            title: "Capture failed".into(),
            footer: None,
            mention: None,
            alert_mention: Some(Mention::Role(7)),
            covered,
            rule: "capture-failed".into(),
            more: 0,
        }))
    };
    let mut s = settings();
    s.alerts = Some((1, Severity::Warning));
    // The alerts webhook never answers: a copy would hold the checkpoint.
    let mut h = start(
        vec![
            Box::new(|_: &Req| ok()),
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
        ],
        s.clone(),
    );
    let mut c = h.chunk(0, &["plain", "FAILED 1", "FAILED 2", "after"]);
    c.shown[1] = event(true);
    c.shown[2] = event(true);
    h.lines[0].send(c).unwrap();
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1));
    assert_eq!(h.world.accepted_lines(0), ["plain", "after"]);
    assert_eq!(embeds(&h.world, 0), 2, "the events, in the logs channel");
    assert!(h.world.requests(1).is_empty(), "no copy, no request");

    // Covered and not covered in one chunk: only the latter is copied.
    let mut h = start(vec![Box::new(|_: &Req| ok()), Box::new(|_: &Req| ok())], s);
    let mut c = h.chunk(0, &["FAILED 1", "FAILED 2", "FAILED 3", "after"]);
    c.shown[0] = event(true);
    c.shown[1] = event(false);
    c.shown[2] = event(true);
    h.lines[0].send(c).unwrap();
    assert!(wait_until(LONG, || h.offset(0) == h.files[0].1
        && !h.world.requests(1).is_empty()));
    let copy = h.world.requests(1);
    assert_eq!(copy.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&copy[0].json).unwrap();
    assert_eq!(
        v["content"].as_str().map(str::trim),
        Some("<@&7>"),
        "the copy pings: {v}"
    );
    let copied = v["embeds"].as_array().unwrap();
    assert_eq!(copied.len(), 1, "{v}");
    assert!(
        copied[0]["description"]
            .as_str()
            .unwrap()
            .contains("FAILED 2")
    );
    assert_eq!(embeds(&h.world, 0), 3, "the logs channel has every event");
}

#[test]
fn no_post_starts_while_the_state_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), false).unwrap());
    let world = Arc::new(World::default());
    let (_release, release_rx) = bounded(0);
    let sink = Box::new(Fake {
        route: 0,
        script: Box::new(|_: &Req| ok()),
        world: world.clone(),
        release: release_rx,
    });
    let trouble = Arc::new(Mutex::new(Some("disk full".to_string())));
    let t = trouble.clone();
    let sender = Sender::with_settings(
        settings(),
        vec![sink],
        store,
        Arc::new(Stats::default()),
        |_| Box::new(|| 0.5),
    )
    .unwrap()
    .pause_while(move || t.lock().unwrap().clone());
    let (tx, rx) = bounded(8);
    let (ctl, ctl_rx) = bounded(4);
    let th = std::thread::spawn(move || sender.run(vec![rx], ctl_rx));
    let line = Line {
        text: "held".into(),
        end: 5,
    };
    tx.send(Chunk {
        file: FileId(0),
        source: 0,
        route: 0,
        label: None,
        start: 0,
        lines: vec![line],
        shown: vec![Some(None)],
    })
    .unwrap();
    assert!(!wait_until(Duration::from_millis(300), || !world
        .requests
        .lock()
        .unwrap()
        .is_empty()));
    *trouble.lock().unwrap() = None;
    assert!(wait_until(LONG, || world.accepted_lines(0) == ["held"]));
    ctl.send(Control::Abort).unwrap();
    th.join().unwrap();
}

#[test]
fn the_watcher_ending_closes_the_sender_after_posting() {
    let mut s = settings();
    s.batch_timeout = Duration::from_secs(30);
    s.grace = Duration::from_secs(5);
    let mut h = start(vec![Box::new(|_: &Req| ok()), Box::new(|_: &Req| ok())], s);
    h.send(0, &["zero"]);
    h.send(1, &["one"]);
    let t = Instant::now();
    h.lines.clear();
    let th = h.thread.take().unwrap();
    assert!(wait_until(LONG, || th.is_finished()));
    th.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(h.world.accepted_lines(0), ["zero"]);
    assert_eq!(h.world.accepted_lines(1), ["one"]);
}

/// Seeded random answers on two routes (accepted, 5xx, 429, a proxy's
/// 400, a 408, a size 400 for messages over a random number of lines, an
/// AutoMod 400 for marked lines as code blocks): every line is accepted
/// exactly once, in order, on its own route, a marked line alone as an
/// attachment, and each file is committed to its end.
#[test]
fn random_answers_deliver_every_line_once_in_order() {
    for seed in 1..=8u64 {
        let scripts: Vec<Script> = (0..2u64)
            .map(|route| -> Script {
                let mut rng = xorshift_jitter(seed * 31 + route);
                let max_lines = 1 + (rng() * 16.0) as usize % 8;
                Box::new(move |r: &Req| {
                    if !r.file && r.lines.iter().any(|l| l.contains("BAD")) {
                        return Reply::Answer(
                            400,
                            r#"{"code": 200000, "message": "AutoMod"}"#.into(),
                        );
                    }
                    if r.lines.len() > max_lines {
                        return Reply::Answer(413, String::new());
                    }
                    // rng() is in [0.5, 1): spread it over [0, 1).
                    let x = (rng() - 0.5) * 2.0;
                    match (x * 20.0) as u32 {
                        0 => Reply::Answer(502, String::new()),
                        1 => Reply::Answer(429, r#"{"retry_after": 0.005}"#.into()),
                        2 => Reply::Answer(400, "<html>proxy</html>".into()),
                        3 => Reply::Answer(408, String::new()),
                        _ => ok(),
                    }
                })
            })
            .collect();
        let mut s = settings();
        s.batch_size = 5;
        let mut h = start(scripts, s);
        let mut rng = xorshift_jitter(seed);
        let mut want: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
        for i in 0..60 {
            let route = usize::from(rng() < 0.75);
            let n = 1 + (rng() * 10.0) as usize % 4;
            let lines: Vec<String> = (0..n)
                .map(|k| {
                    let bad = if rng() < 0.55 { "BAD " } else { "" };
                    format!("{bad}s{seed}-r{route}-{i}-{k}")
                })
                .collect();
            want[route].extend(lines.iter().cloned());
            h.send(route, &refs(&lines));
        }
        for (route, want) in want.iter().enumerate() {
            assert!(
                wait_until(Duration::from_secs(20), || h
                    .world
                    .accepted_lines(route)
                    .len()
                    >= want.len()),
                "seed {seed} route {route}: {:?}",
                h.world.accepted_lines(route)
            );
            assert_eq!(&h.world.accepted_lines(route), want, "seed {seed}");
            assert!(wait_until(LONG, || h.offset(route) == h.files[route].1));
            let accepted = h.world.accepted.lock().unwrap();
            for r in accepted.iter().filter(|r| r.route == route) {
                let bad = r.lines.iter().any(|l| l.contains("BAD"));
                assert!(!bad || (r.file && r.lines.len() == 1), "seed {seed}: {r:?}");
            }
        }
    }
}

/// A reload aborts the sender: a POST Discord answers within
/// [`ABORT_SETTLE`] is committed (the next pipeline does not post it
/// again); one that never answers is abandoned in time, uncommitted.
#[test]
fn abort_commits_an_in_flight_post_answered_in_time_and_abandons_a_hung_one() {
    let mut h = start(
        vec![
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
            Box::new(|_: &Req| Reply::Hang(204, String::new())),
        ],
        settings(),
    );
    h.send(0, &["answered late"]);
    h.send(1, &["never answered"]);
    assert!(wait_until(LONG, || h.world.requests(0).len() == 1
        && h.world.requests(1).len() == 1));
    let t = Instant::now();
    h.ctl.send(Control::Abort).unwrap();
    // One of the two hung POSTs is answered now.
    h.release.send(()).unwrap();
    let thread = h.thread.take().unwrap();
    assert!(
        wait_until(ABORT_SETTLE + Duration::from_secs(2), || thread
            .is_finished()),
        "abort did not return"
    );
    thread.join().unwrap();
    let took = t.elapsed();
    assert!(took >= ABORT_SETTLE, "gave up early: {took:?}");
    assert!(took < ABORT_SETTLE + Duration::from_secs(1), "{took:?}");
    let committed: Vec<bool> = (0..2).map(|r| h.offset(r) == h.files[r].1).collect();
    let none: Vec<bool> = (0..2).map(|r| h.offset(r) == 0).collect();
    assert!(
        committed.iter().filter(|c| **c).count() == 1 && none.iter().filter(|c| **c).count() == 1,
        "one POST answered and committed, the other uncommitted: {committed:?}"
    );
}

fn notice(
    route: usize,
    key: &str,
    text: &str,
    policy: crate::notice::Policy,
) -> crate::notice::Notice {
    crate::notice::Notice {
        route,
        key: key.into(),
        body: serde_json::json!({ "content": text }),
        files: vec![],
        policy,
    }
}

fn upsert(route: usize, key: &str, text: &str) -> crate::notice::Notice {
    notice(
        route,
        key,
        text,
        crate::notice::Policy::Upsert {
            min_interval: Duration::from_millis(100),
        },
    )
}

#[test]
fn a_notice_jumps_a_backlog_of_lines_which_stay_complete_and_in_order() {
    let mut s = settings();
    s.batch_size = 1;
    s.rate_limit_delay = Duration::from_millis(20);
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    // About three lines per message: a backlog of a dozen messages.
    let lines: Vec<String> = texts("l", 40)
        .into_iter()
        .map(|t| format!("{t} {}", "x".repeat(600)))
        .collect();
    h.send(0, &refs(&lines));
    assert!(wait_until(LONG, || h.world.requests(0).len() >= 3));
    h.notices
        .send(notice(0, "n", "silence", crate::notice::Policy::New))
        .unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 41));
    let all = h.world.accepted_lines(0);
    let at = all.iter().position(|l| l == "POST silence").unwrap();
    assert!(at < 10, "the notice waited behind {at} line messages");
    let only_lines: Vec<String> = all.into_iter().filter(|l| l.starts_with("l-")).collect();
    assert_eq!(only_lines, lines, "no line lost, repeated or reordered");
    h.shutdown();
}

#[test]
fn upserts_edit_the_posted_message_and_a_final_gets_out_at_shutdown() {
    let mut h = start(vec![Box::new(|_: &Req| ok())], settings());
    // An interval long enough that the four updates below all arrive
    // within it even on a loaded machine (100 ms was not).
    let upsert = |key: &str, text: &str| {
        notice(
            0,
            key,
            text,
            crate::notice::Policy::Upsert {
                min_interval: Duration::from_secs(1),
            },
        )
    };
    h.notices.send(upsert("inc", "count 1")).unwrap();
    assert!(wait_until(LONG, || h.world.requests(0).len() == 1));
    for i in 2..=5 {
        h.notices
            .send(upsert("inc", &format!("count {i}")))
            .unwrap();
    }
    assert!(wait_until(LONG, || h.world.requests(0).len() == 2));
    let sent: Vec<String> = h
        .world
        .requests(0)
        .iter()
        .map(|r| r.lines[0].clone())
        .collect();
    assert_eq!(sent[0], "POST count 1");
    assert!(
        sent[1].starts_with("EDIT ") && sent[1].ends_with(" count 5"),
        "{sent:?}"
    );
    h.notices.send(upsert("inc", "count 6")).unwrap();
    // Held by the interval, it goes anyway when the daemon stops.
    h.shutdown();
    let last = h.world.requests(0).last().unwrap().lines[0].clone();
    assert!(last.ends_with(" count 6"), "{last}");
}

#[test]
fn a_notices_answer_counts_for_the_heartbeat_like_a_lines() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let mut h = start(
        vec![Box::new(move |_: &Req| {
            if f.load(Ordering::SeqCst) {
                Reply::Answer(500, String::new())
            } else {
                ok()
            }
        })],
        settings(),
    );
    // Only a notice is sent: its failure alone marks the route failing.
    h.notices
        .send(notice(0, "x", "alone", crate::notice::Policy::New))
        .unwrap();
    assert!(wait_until(LONG, || h
        .stats
        .health
        .snapshot()
        .failing_since
        .is_some()));
    fail.store(false, Ordering::SeqCst);
    assert!(wait_until(LONG, || h.world.accepted_lines(0) == ["POST alone"]));
    // The fake world counts the line before the sender reads the answer.
    assert!(
        wait_until(LONG, || h.stats.health.snapshot().failing_since.is_none()),
        "its delivery proves the route works again"
    );
    h.shutdown();
}

#[test]
fn a_failing_route_delays_neither_another_routes_notices_nor_loses_its_own() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let mut h = start(
        vec![
            Box::new(move |_: &Req| {
                if f.load(Ordering::SeqCst) {
                    Reply::Answer(500, String::new())
                } else {
                    ok()
                }
            }),
            Box::new(|_: &Req| ok()),
        ],
        settings(),
    );
    h.send(0, &["a", "b"]);
    h.notices
        .send(notice(0, "x", "on-0", crate::notice::Policy::Final))
        .unwrap();
    h.notices
        .send(notice(1, "y", "on-1", crate::notice::Policy::Final))
        .unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(1) == ["POST on-1"]));
    fail.store(false, Ordering::SeqCst);
    assert!(wait_until(LONG, || {
        let got = h.world.accepted_lines(0);
        got.contains(&"POST on-0".to_string()) && got.contains(&"b".to_string())
    }));
    h.shutdown();
}

#[test]
fn a_restart_edits_the_open_message_instead_of_posting_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.notice_file = Some(dir.path().join(notices::FILE));
    let mut h = start(vec![Box::new(|_: &Req| ok())], s.clone());
    h.notices.send(upsert(0, "inc", "first")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 1));
    h.shutdown();
    let saved = notices::load(&dir.path().join(notices::FILE));
    let id = saved.kept["r0"]["inc"].id.clone().expect("the id is kept");
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    h.notices.send(upsert(0, "inc", "after restart")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 1));
    assert_eq!(
        h.world.accepted_lines(0),
        [format!("EDIT {id} after restart")]
    );
    h.shutdown();
}

#[test]
fn a_forum_route_opens_the_nights_post_keeps_it_and_reopens_a_deleted_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.forums = vec![true];
    s.notice_file = Some(dir.path().join(notices::FILE));
    // Threads the fake deleted: a post into one is refused with 10003.
    let deleted: Arc<Mutex<Vec<String>>> = Arc::default();
    let gone = deleted.clone();
    let script: Script = Box::new(move |r: &Req| {
        assert!(r.thread.is_some(), "a forum route names a thread: {r:?}");
        match &r.thread {
            Some(t) if gone.lock().unwrap().contains(t) => {
                Reply::Answer(400, r#"{"code":10003,"message":"Unknown Channel"}"#.into())
            }
            _ => ok(),
        }
    });
    let mut h = start(vec![script], s);
    h.send(0, &["a-0", "a-1"]);
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 2));
    h.send(0, &["a-2"]);
    h.notices
        .send(notice(0, "k", "note", crate::notice::Policy::New))
        .unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 4));
    let reqs = h.world.requests(0);
    let first = reqs[0].thread.clone().unwrap();
    assert!(first.starts_with("open:Night of "), "{first}");
    // Every later request goes into the thread the first one opened.
    let accepted: Vec<Req> = h.world.accepted.lock().unwrap().clone();
    let thread = {
        let saved = notices::load(&dir.path().join(notices::FILE));
        let (k, kept) = saved.kept["r0"].iter().next().unwrap();
        assert!(k.starts_with(forum::KEY_PREFIX), "{k}");
        kept.id.clone().unwrap().to_string()
    };
    assert!(
        accepted[1..]
            .iter()
            .all(|r| r.thread.as_deref() == Some(thread.as_str())),
        "{accepted:?}"
    );
    let offset = h.offset(0);
    // The post is deleted: the next message is refused, kept, and goes
    // again in a new post; nothing is committed before it is accepted.
    deleted.lock().unwrap().push(thread.clone());
    h.send(0, &["b-0"]);
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 5));
    h.send(0, &["b-1"]);
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 6));
    let reqs = h.world.requests(0);
    let n = reqs.len();
    assert_eq!(
        reqs[n - 3].thread.as_deref(),
        Some(thread.as_str()),
        "refused"
    );
    assert!(reqs[n - 2].thread.as_ref().unwrap().starts_with("open:"));
    assert_eq!(reqs[n - 2].lines, ["b-0"]);
    assert_ne!(reqs[n - 1].thread.as_deref(), Some(thread.as_str()));
    assert!(h.offset(0) > offset);
    assert_eq!(
        h.offset(0),
        h.files[0].1,
        "everything accepted is committed"
    );
    let got = h.world.accepted_lines(0);
    assert!(got.contains(&"POST note".to_string()), "{got:?}");
    let lines: Vec<&String> = got.iter().filter(|l| !l.starts_with("POST")).collect();
    assert_eq!(
        lines,
        ["a-0", "a-1", "a-2", "b-0", "b-1"],
        "in order, once each"
    );
    h.shutdown();
}

#[test]
fn a_storm_of_notices_and_a_backlog_of_lines_take_turns() {
    let mut s = settings();
    s.batch_size = 1;
    s.rate_limit_delay = Duration::from_millis(1);
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    // About three lines per message: a backlog of a dozen messages.
    let lines: Vec<String> = texts("l", 36)
        .into_iter()
        .map(|t| format!("{t} {}", "x".repeat(600)))
        .collect();
    // A producer that never stops: many rules storming at once (each an
    // incident of its own key) and New notices.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let tx = h.notices.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut n = if i % 2 == 0 {
                    upsert(0, &format!("incident/{i}"), &format!("n-{i}"))
                } else {
                    let key = format!("silence/{i}");
                    notice(0, &key, &format!("n-{i}"), crate::notice::Policy::New)
                };
                loop {
                    match tx.send_timeout(n, Duration::from_millis(20)) {
                        Ok(()) => break,
                        Err(e) if !stop.load(Ordering::SeqCst) => n = e.into_inner(),
                        Err(_) => return,
                    }
                }
                i += 1;
            }
        })
    };
    assert!(wait_until(LONG, || h.world.requests(0).len() >= 4));
    h.send(0, &refs(&lines));
    let line_count = |h: &Harness| {
        h.world
            .accepted_lines(0)
            .iter()
            .filter(|l| l.starts_with("l-"))
            .count()
    };
    let done = wait_until(Duration::from_secs(20), || line_count(&h) == lines.len());
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    assert!(done, "the lines starved behind the notices");
    let got = h.world.accepted_lines(0);
    let only_lines: Vec<&String> = got.iter().filter(|l| l.starts_with("l-")).collect();
    assert_eq!(only_lines, refs(&lines), "in order, once each");
    // Both wait a bounded number of slots: between two line messages one
    // notice at least and two at most.
    let accepted = h.world.accepted.lock().unwrap().clone();
    let is_line = |r: &Req| r.lines.iter().any(|l| l.starts_with("l-"));
    let first = accepted.iter().position(is_line).unwrap();
    let last = accepted.iter().rposition(is_line).unwrap();
    let mut between = 0;
    let mut messages = 1;
    for r in &accepted[first + 1..=last] {
        if is_line(r) {
            assert!(
                (1..=notices::NOTICE_BURST).contains(&between),
                "{between} notices between two line messages: {accepted:?}"
            );
            between = 0;
            messages += 1;
        } else {
            between += 1;
        }
    }
    assert!(messages >= 8, "a backlog of line messages: {messages}");
}

#[test]
fn notices_waiting_at_a_reload_are_saved_and_sent_once_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(notices::FILE);
    let mut s = settings();
    s.notice_file = Some(file.clone());
    let mut h = start(
        vec![Box::new(|_: &Req| Reply::Answer(503, String::new()))],
        s.clone(),
    );
    let mut alert = notice(0, "silence/1", "silence", crate::notice::Policy::New);
    alert.files = vec![crate::notice::context_file("ekos.txt", ["a", "b"])];
    h.notices.send(alert).unwrap();
    h.notices
        .send(notice(
            0,
            "night/summary",
            "summary",
            crate::notice::Policy::Final,
        ))
        .unwrap();
    assert!(wait_until(LONG, || h.world.requests(0).len() >= 3));
    // A reload: the workers are aborted.
    h.ctl.send(Control::Abort).unwrap();
    let t = h.thread.take().unwrap();
    assert!(wait_until(LONG, || t.is_finished()));
    t.join().unwrap();
    let saved = notices::load(&file);
    let keys: Vec<&str> = saved.pending["r0"].iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"silence/1") && keys.contains(&"night/summary"));

    let mut h = start(vec![Box::new(|_: &Req| ok())], s.clone());
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 2));
    // Sent, they leave the file within a save gap: a crash after that
    // sends nothing twice.
    assert!(wait_until(LONG, || notices::load(&file).pending.is_empty()));
    h.shutdown();
    let got = h.world.accepted_lines(0);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&"POST silence".to_string()), "{got:?}");
    assert!(got.contains(&"POST summary".to_string()), "{got:?}");
    let first = h.world.requests(0);
    assert!(
        first.iter().any(|r| r.file),
        "the alert keeps its context file"
    );
    // A third run has nothing to send.
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    h.send(0, &["after"]);
    assert!(wait_until(LONG, || h.world.accepted_lines(0) == ["after"]));
    h.shutdown();
    assert_eq!(h.world.accepted_lines(0), ["after"]);
}

#[test]
fn on_a_forum_route_an_incident_is_edited_in_the_post_it_was_posted_in() {
    let mut s = settings();
    s.forums = vec![true];
    // A post whose thread is "gone" for new messages (as last night's
    // post is no longer the night's): lines open a new post, but the
    // message already in it is still there to edit.
    let old: Arc<Mutex<Vec<String>>> = Arc::default();
    let o = old.clone();
    let script: Script = Box::new(move |r: &Req| match &r.thread {
        Some(t) if o.lock().unwrap().contains(t) && !r.lines[0].starts_with("EDIT") => {
            Reply::Answer(400, r#"{"code":10003,"message":"Unknown Channel"}"#.into())
        }
        _ => ok(),
    });
    let mut h = start(vec![script], s);
    h.notices.send(upsert(0, "incident/a", "first")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 1));
    let reqs = h.world.requests(0);
    assert!(reqs[0].thread.as_ref().unwrap().starts_with("open:"));
    // The post opened by the first message has that message's id.
    let id = reqs.len().to_string();
    let first_thread = format!("1{id}");
    old.lock().unwrap().push(first_thread.clone());
    h.send(0, &["line"]);
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 2));
    h.notices.send(upsert(0, "incident/a", "second")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 3));
    let got = h.world.accepted.lock().unwrap().clone();
    let edit = got.last().unwrap();
    assert!(
        edit.lines[0].starts_with("EDIT ") && edit.lines[0].ends_with(" second"),
        "{got:?}"
    );
    assert_eq!(
        edit.thread.as_deref(),
        Some(first_thread.as_str()),
        "edited where the message lives: {got:?}"
    );
    let line = &got[1];
    assert_ne!(
        line.thread.as_deref(),
        Some(first_thread.as_str()),
        "{got:?}"
    );
    h.shutdown();
}

/// A notice is on disk before it is first sent: a `kill -9` or a power
/// cut at any moment after the sender took it loses nothing (the next
/// start sends it), and once Discord accepted it, it leaves the file
/// before anything else is sent (a crash does not send it twice).
#[test]
fn a_notice_is_saved_before_it_is_first_sent_and_leaves_the_file_once_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(notices::FILE);
    let mut s = settings();
    s.notice_file = Some(file.clone());
    // Each request checks the file: what keys were pending as it was made.
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let script: Script = Box::new({
        let (seen, file) = (seen.clone(), file.clone());
        move |_: &Req| {
            let saved = notices::load(&file);
            let keys = saved
                .pending
                .get("r0")
                .map(|p| p.iter().map(|p| p.key.clone()).collect())
                .unwrap_or_default();
            seen.lock().unwrap().push(keys);
            ok()
        }
    });
    let mut h = start(vec![script], s);
    for i in 0..5 {
        let key = format!("alert/{i}");
        h.notices
            .send(notice(0, &key, &key, crate::notice::Policy::New))
            .unwrap();
        assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == i + 1));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    for (i, keys) in seen.iter().enumerate() {
        assert!(
            keys.contains(&format!("alert/{i}")),
            "request {i} went out before its notice was saved: {keys:?}"
        );
        // The ones accepted before left the file: a crash now would not
        // send them again.
        assert_eq!(keys.len(), 1, "request {i}: {keys:?}");
    }
    assert!(wait_until(LONG, || notices::load(&file).pending.is_empty()));
    h.shutdown();
}

/// The notice state cannot be written when Discord accepts an incident
/// (a full disk): the message id learnt is written by the next save that
/// works, here the one at the stop, so the next start edits the message
/// rather than posting the incident again.
#[test]
fn a_message_id_learnt_while_the_state_cannot_be_written_is_saved_when_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(notices::FILE);
    let mut s = settings();
    s.notice_file = Some(file.clone());
    // A directory in the way: every write of the file fails.
    std::fs::create_dir_all(file.join("in-the-way")).unwrap();
    let mut h = start(vec![Box::new(|_: &Req| ok())], s.clone());
    h.notices.send(upsert(0, "inc", "first")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 1));
    // Accepted; the id could not be written. The disk has room again.
    std::fs::remove_dir_all(&file).unwrap();
    h.shutdown();
    let saved = notices::load(&file);
    assert!(saved.kept["r0"]["inc"].id.is_some(), "{saved:?}");
    assert!(saved.pending.is_empty(), "accepted: {saved:?}");
    assert!(
        !file.with_extension("tmp").exists(),
        "no part of a failed write is left"
    );
    let mut h = start(vec![Box::new(|_: &Req| ok())], s);
    h.notices.send(upsert(0, "inc", "again")).unwrap();
    assert!(wait_until(LONG, || h.world.accepted_lines(0).len() == 1));
    h.shutdown();
    assert!(
        h.world.accepted_lines(0)[0].starts_with("EDIT "),
        "{:?}",
        h.world.accepted_lines(0)
    );
}

/// A request is given 30 s for Discord's answer on top of its body's time
/// at 256 kbit/s: a message's 30 s, a 1 MiB attachment's 62 s, the largest
/// file Discord takes (8 MiB) under 5 min.
#[test]
fn a_request_is_given_time_for_its_body_on_a_slow_uplink() {
    assert_eq!(request_timeout(0), ANSWER_TIMEOUT);
    assert_eq!(request_timeout(2_000), Duration::from_millis(30_061));
    assert_eq!(request_timeout(1 << 20), Duration::from_secs(62));
    assert!(request_timeout(crate::limits::FILE_BYTES) < Duration::from_secs(300));
}
