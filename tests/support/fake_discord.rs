//! Fake Discord webhook server for the integration tests, benchmarks and the
//! system test (`examples/fake_discord.rs`). Only std and serde_json.
//!
//! It enforces Discord's real limits (2000 code points of content, embed
//! limits, the empty-message rule, 10/25 MiB uploads), per-webhook rate limits
//! with Discord's headers and 429 bodies, and has failure modes switched at
//! runtime with [`FakeDiscord::set_mode`] or `POST /control/mode` (text body
//! such as `fail500 3`, see [`MODES`]). Faults can also be scripted per
//! webhook ([`Fault`]): a queue answered one per request
//! ([`FakeDiscord::push_faults`]) and a standing fault
//! ([`FakeDiscord::set_hook_fault`]), so one webhook can fail while another
//! works.
//!
//! Messages are kept, as Discord keeps them: `?wait=true` answers 200 with
//! the created message object (204 without it), and `PATCH
//! /api/webhooks/{id}/{token}/messages/{message_id}` edits one (JSON or
//! multipart; an `attachments` array says which existing files stay and
//! which new `files[n]` are added), under the same limits and the same
//! per-webhook rate-limit bucket as a POST; an unknown message is 404 code
//! 10008. A webhook can be made a forum channel's
//! ([`FakeDiscord::set_forum`]): then a POST needs `thread_name` (max 100
//! characters: a new thread whose id is the new message's `channel_id`) or
//! `?thread_id=` (an existing thread), with Discord's codes 220001–220003
//! and 10003 otherwise. Edits are recorded apart from new messages
//! ([`FakeDiscord::edits`], [`Event::Edited`]), so a test can count them.
#![allow(dead_code)]

use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: usize = 1 << 20;
const MAX_FILE: usize = 10 * MIB;
const MAX_FILES: usize = 25 * MIB;
/// Largest body read at all: the files plus form overhead.
const MAX_BODY: usize = MAX_FILES + MIB;
const MAX_LINE: usize = 16 * 1024;
const IDLE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Options {
    /// Requests per window per webhook id; `None`: no limit, no X-RateLimit-* headers.
    pub rate_limit: Option<(u32, Duration)>,
    /// Extra delay before answering `?wait=true` requests.
    pub wait_delay: Option<Duration>,
    /// Bytes per second a request body is read at (a slow uplink seen from
    /// Discord's side); `None`: as fast as it comes.
    pub uplink: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        let rate_limit = Some((5, Duration::from_secs(2)));
        Options {
            rate_limit,
            wait_delay: None,
            uplink: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Normal,
    /// 500 for the next n webhook requests, then Normal.
    Fail5xx(usize),
    /// 503 for every request until the mode changes.
    Down,
    /// Sleep this long before handling each request.
    Slow(Duration),
    /// 404 {"message": "Unknown Webhook", "code": 10015}.
    NotFound,
    /// Cloudflare HTML 429 (no headers) for the next n requests, then Normal.
    Html429(usize),
    /// Listener and connections closed; any other mode re-binds the same port.
    Refuse,
}

/// A scripted answer for one webhook's request. None of them accepts the
/// message: a client that sees one must send the lines again.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// This status with this body (sent as JSON if it parses as JSON).
    Status(u16, String),
    /// Discord's JSON 429 with `retry_after` and the `Retry-After` header.
    RateLimited(f64),
    /// Read the request, answer nothing for this long, then close.
    Hang(Duration),
    /// Read the request and close the connection without an answer.
    Close,
}

impl Fault {
    /// 400 "Invalid Form Body" of a forum channel: no smaller body fixes it.
    pub fn forum_400() -> Fault {
        Fault::Status(
            400,
            json!({"code": 220001, "message":
                "Webhooks posted to forum channels must have a thread_name or thread_id"})
            .to_string(),
        )
    }

    /// 404 "Unknown Message": what an edit of a deleted message gets.
    pub fn unknown_message() -> Fault {
        Fault::Status(
            404,
            json!({"code": 10008, "message": "Unknown Message"}).to_string(),
        )
    }

    /// 404 "Unknown Webhook".
    pub fn not_found() -> Fault {
        Fault::Status(
            404,
            json!({"code": 10015, "message": "Unknown Webhook"}).to_string(),
        )
    }
}

/// One accepted (2xx) message, or one accepted edit of a message.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub webhook_id: String,
    /// The message's id (a snowflake, as Discord writes it: a string).
    pub message_id: String,
    /// Its channel: the webhook's, or the thread (forum post) it is in.
    pub channel_id: String,
    /// An edit (`PATCH`) of message `message_id`, not a new message.
    pub edit: bool,
    /// The JSON payload of the request (`payload_json` of a multipart upload).
    pub body: Value,
    /// The message's content (after the edit, for an edit).
    pub content: String,
    /// The message's embeds (after the edit, for an edit).
    pub embeds: Vec<Value>,
    /// (filename, bytes) of each file the message has (after the edit), in order.
    pub attachments: Vec<(String, Vec<u8>)>,
    /// The payload's `allowed_mentions`, if it had one.
    pub allowed_mentions: Option<Value>,
}

/// What an observer set with [`FakeDiscord::on_event`] is told.
pub enum Event<'a> {
    Accepted(&'a Received),
    /// An accepted edit (`PATCH`) of an earlier message.
    Edited(&'a Received),
    /// A 429; `retry_after` is `None` for the Cloudflare HTML 429.
    RateLimited {
        webhook_id: &'a str,
        retry_after: Option<f64>,
    },
}

type Observer = Box<dyn Fn(Event<'_>) + Send + Sync>;

/// The server; dropping it closes the listener and all connections.
pub struct FakeDiscord {
    shared: Arc<Shared>,
}

struct Shared {
    opts: Options,
    addr: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
    /// Stop flag and thread of the running accept loop (none while refusing).
    accept: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    observer: Mutex<Option<Observer>>,
}

#[derive(Default)]
struct State {
    mode: Mode,
    messages: Vec<Received>,
    requests: usize,
    count_429: usize,
    rejected: usize,
    /// webhook id -> (window end, remaining)
    buckets: HashMap<String, (Instant, u32)>,
    /// webhook id -> faults answered one per request, before anything else.
    queued: HashMap<String, std::collections::VecDeque<Fault>>,
    /// webhook id -> fault answered to every request until cleared.
    standing: HashMap<String, Fault>,
    /// Requests answered with a scripted fault.
    faulted: usize,
    /// `GET`s of a webhook answered (its object or a 429).
    probes: usize,
    next_id: u64,
    /// Accepted edits, in order.
    edits: Vec<Received>,
    /// message id -> the message as it is now.
    stored: HashMap<String, Stored>,
    /// Webhook ids whose channel is a forum channel.
    forum: HashSet<String>,
    /// Every webhook's channel is a forum channel.
    forum_all: bool,
    /// thread id -> (webhook id that created it, its name).
    threads: HashMap<String, (String, String)>,
}

impl State {
    fn is_forum(&self, webhook_id: &str) -> bool {
        self.forum_all || self.forum.contains(webhook_id)
    }

    /// A new snowflake, for a message, a thread or an attachment.
    fn snowflake(&mut self) -> String {
        self.next_id += 1;
        (1_300_000_000_000_000_000 + self.next_id).to_string()
    }
}

/// The channel every webhook posts to (a thread aside).
pub const CHANNEL_ID: &str = "1100000000000000001";

/// A message as Discord keeps it: what a `PATCH` changes and `?wait=true`
/// returns.
#[derive(Clone, Debug)]
struct Stored {
    webhook_id: String,
    channel_id: String,
    content: String,
    embeds: Vec<Value>,
    /// (attachment id, filename, bytes), in order.
    attachments: Vec<(String, String, Vec<u8>)>,
    edited: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeDiscord {
    pub const TOKEN: &'static str = "fake-SECRET-token_abc";
    pub const WEBHOOK_ID: &'static str = "123456789012345678";

    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        Self::start_on("127.0.0.1:0", opts).expect("fake discord: bind 127.0.0.1:0")
    }

    /// Start on a given address (the example's `--listen`).
    pub fn start_on(addr: impl ToSocketAddrs, opts: Options) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let shared = Arc::new(Shared {
            opts,
            addr: listener.local_addr()?,
            state: Mutex::default(),
            changed: Condvar::new(),
            accept: Mutex::new(None),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
            observer: Mutex::new(None),
        });
        shared.spawn_accept(&mut lock(&shared.accept), listener);
        Ok(FakeDiscord { shared })
    }

    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn webhook_url(&self) -> String {
        self.webhook_url_for(Self::WEBHOOK_ID, Self::TOKEN)
    }

    pub fn webhook_url_for(&self, id: &str, token: &str) -> String {
        format!("http://127.0.0.1:{}/api/webhooks/{id}/{token}", self.port())
    }

    /// Takes effect for the next request. Panics if leaving `Refuse` cannot
    /// re-bind the port within 3 s.
    pub fn set_mode(&self, mode: Mode) {
        self.shared
            .set_mode(mode)
            .expect("fake discord: re-bind the port");
    }

    /// Queues faults for webhook `id`: each of its next requests gets the
    /// next one (after a standing fault, which wins while set).
    pub fn push_faults(&self, id: &str, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .update(|st| st.queued.entry(id.to_string()).or_default().extend(faults));
    }

    /// Sets (`Some`) or clears (`None`) the fault every request for webhook
    /// `id` gets.
    pub fn set_hook_fault(&self, id: &str, fault: Option<Fault>) {
        self.shared.update(|st| match fault {
            Some(f) => {
                st.standing.insert(id.to_string(), f);
            }
            None => {
                st.standing.remove(id);
            }
        });
    }

    /// Faults still queued for webhook `id`.
    pub fn queued_faults(&self, id: &str) -> usize {
        lock(&self.shared.state)
            .queued
            .get(id)
            .map_or(0, |q| q.len())
    }

    /// Requests answered with a scripted [`Fault`] so far.
    pub fn count_faulted(&self) -> usize {
        lock(&self.shared.state).faulted
    }

    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared.state).messages.clone()
    }

    /// The accepted messages from the `n`th on (messages are only ever
    /// appended), so a watcher of a long run reads each one once.
    pub fn messages_from(&self, n: usize) -> Vec<Received> {
        let st = lock(&self.shared.state);
        st.messages.get(n..).unwrap_or_default().to_vec()
    }

    /// Wait until more than `n` messages were accepted; false on timeout.
    pub fn wait_for_more_than(&self, n: usize, timeout: Duration) -> bool {
        self.wait_state(timeout, |st| st.messages.len() > n)
    }

    pub fn requests(&self) -> usize {
        lock(&self.shared.state).requests
    }

    pub fn count_429(&self) -> usize {
        lock(&self.shared.state).count_429
    }

    /// `GET`s of a webhook (the heartbeat's probes) answered 200 or 429.
    pub fn count_probes(&self) -> usize {
        lock(&self.shared.state).probes
    }

    pub fn count_rejected(&self) -> usize {
        lock(&self.shared.state).rejected
    }

    /// Accepted edits, in order (new messages are in [`Self::messages`]).
    pub fn edits(&self) -> Vec<Received> {
        lock(&self.shared.state).edits.clone()
    }

    /// How many times message `id` was edited.
    pub fn count_edits(&self, id: &str) -> usize {
        let st = lock(&self.shared.state);
        st.edits.iter().filter(|e| e.message_id == id).count()
    }

    /// Message `id` as it is now (after its last edit), if it exists.
    pub fn message(&self, id: &str) -> Option<Received> {
        let st = lock(&self.shared.state);
        let last_edit = st.edits.iter().rev().find(|e| e.message_id == id);
        last_edit
            .or_else(|| st.messages.iter().find(|m| m.message_id == id))
            .cloned()
    }

    /// Makes webhook `id`'s channel a forum channel (`true`) or a text
    /// channel again (`false`), from its next request.
    pub fn set_forum(&self, id: &str, forum: bool) {
        self.shared.update(|st| {
            if forum {
                st.forum.insert(id.to_string());
            } else {
                st.forum.remove(id);
            }
        });
    }

    /// Makes every webhook's channel a forum channel (the example's `--forum`).
    pub fn set_forum_all(&self, forum: bool) {
        self.shared.update(|st| st.forum_all = forum);
    }

    /// The threads (forum posts) created so far: (thread id, name), in order.
    pub fn threads(&self) -> Vec<(String, String)> {
        let st = lock(&self.shared.state);
        let mut t: Vec<_> = st
            .threads
            .iter()
            .map(|(id, v)| (id.clone(), v.1.clone()))
            .collect();
        // Snowflakes of one length sort in creation order.
        t.sort();
        t
    }

    /// Deletes message `id`, as a person in the channel can: edits of it
    /// get 404 Unknown Message from now on. False if there was none.
    pub fn delete_message(&self, id: &str) -> bool {
        let mut found = false;
        self.shared
            .update(|st| found = st.stored.remove(id).is_some());
        found
    }

    /// Deletes thread `id` (a forum post) and its messages: posts into it
    /// get 400 Unknown Channel from now on. False if there was none.
    pub fn delete_thread(&self, id: &str) -> bool {
        let mut found = false;
        self.shared.update(|st| {
            found = st.threads.remove(id).is_some();
            st.stored.retain(|_, m| m.channel_id != id);
        });
        found
    }

    /// Wait until `pred(edits)` holds; false on timeout.
    pub fn wait_for_edits(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        self.wait_state(timeout, |st| pred(&st.edits))
    }

    /// Called for each accepted message and each 429, in order.
    pub fn on_event(&self, f: impl Fn(Event<'_>) + Send + Sync + 'static) {
        *lock(&self.shared.observer) = Some(Box::new(f));
    }

    /// Wait until `pred(messages)` holds; false on timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        self.wait_state(timeout, |st| pred(&st.messages))
    }

    /// Wait until at least `n` webhook requests were seen; false on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_state(timeout, |st| st.requests >= n)
    }

    fn wait_state(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        while !pred(&st) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let step = left.min(Duration::from_millis(50));
            st = match self.shared.changed.wait_timeout(st, step) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        *lock(&self.shared.observer) = None;
        let _ = self.shared.set_mode(Mode::Refuse);
    }
}

impl Shared {
    fn spawn_accept(
        self: &Arc<Self>,
        slot: &mut Option<(Arc<AtomicBool>, JoinHandle<()>)>,
        listener: TcpListener,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stop2) = (Arc::clone(self), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(SeqCst) {
                    break;
                }
                let Ok(stream) = conn else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // Registered before the thread starts, so Refuse/Drop see it.
                let id = shared.next_conn.fetch_add(1, SeqCst);
                if let Ok(c) = stream.try_clone() {
                    lock(&shared.conns).insert(id, c);
                }
                let s = Arc::clone(&shared);
                let spawned = thread::Builder::new().spawn(move || {
                    s.serve(stream);
                    lock(&s.conns).remove(&id);
                });
                if spawned.is_err() {
                    lock(&shared.conns).remove(&id); // out of threads: drop the connection
                }
            }
        });
        *slot = Some((stop, handle));
    }

    fn set_mode(self: &Arc<Self>, mode: Mode) -> io::Result<()> {
        let mut slot = lock(&self.accept);
        if mode == Mode::Refuse {
            lock(&self.state).mode = Mode::Refuse;
            if let Some((stop, handle)) = slot.take() {
                // Wake the blocking accept() so the loop ends and drops the listener.
                stop.store(true, SeqCst);
                let mut wake = self.addr;
                if wake.ip().is_unspecified() {
                    wake.set_ip(Ipv4Addr::LOCALHOST.into());
                }
                let wait = Duration::from_millis(250);
                let _ = (0..20).find(|_| TcpStream::connect_timeout(&wake, wait).is_ok());
                let _ = handle.join();
            }
            for (_, c) in lock(&self.conns).drain() {
                let _ = c.shutdown(Shutdown::Both);
            }
            return Ok(());
        }
        if slot.is_none() {
            let deadline = Instant::now() + Duration::from_secs(3);
            let listener = loop {
                match TcpListener::bind(self.addr) {
                    Ok(l) => break l,
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(25));
                    }
                    Err(e) => return Err(e),
                }
            };
            self.spawn_accept(&mut slot, listener);
        }
        lock(&self.state).mode = mode;
        Ok(())
    }

    fn serve(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(IDLE));
        let Ok(rs) = stream.try_clone() else { return };
        let (mut r, mut w) = (BufReader::new(rs), stream);
        loop {
            let (resp, close) = match read_request(&mut r, &mut w, self.opts.uplink) {
                Ok(req) => match self.handle(&req) {
                    Some(resp) => (resp, req.close),
                    None => break,
                },
                Err(ReadErr::Bad(why)) => (Resp::text(400, format!("bad request: {why}\n")), true),
                Err(ReadErr::TooLarge) => {
                    self.update(|st| st.requests += 1);
                    self.update(|st| st.rejected += 1);
                    (too_large(), true)
                }
                Err(ReadErr::Io) => break,
            };
            if write_resp(&mut w, &resp, close).is_err() || close {
                break;
            }
        }
        // Lingering close, so the client reads our last answer rather than a RST.
        let _ = w.shutdown(Shutdown::Write);
        let _ = w.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = io::copy(&mut r.take(64 * MIB as u64), &mut io::sink());
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    fn reject(&self, resp: Resp) -> Option<Resp> {
        self.update(|st| st.rejected += 1);
        Some(resp)
    }

    fn notify(&self, ev: Event<'_>) {
        if let Some(f) = lock(&self.observer).as_ref() {
            f(ev);
        }
    }

    /// The answer to one request; `None`: close the connection without one.
    fn handle(self: &Arc<Self>, req: &Request) -> Option<Resp> {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        if let Some(cmd) = path.strip_prefix("/control/") {
            return Some(self.control(cmd, req));
        }
        let hook = webhook_path(path);
        let mut mode = Mode::Normal;
        self.update(|st| {
            st.requests += 1;
            mode = st.mode.clone();
            if let Mode::Fail5xx(n) | Mode::Html429(n) = &mut st.mode {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.mode = Mode::Normal;
                }
            }
        });
        match mode {
            Mode::Refuse => return None,
            Mode::Down => return Some(err(503, 0, "503: Service Unavailable")),
            Mode::Fail5xx(n) if n > 0 => return Some(err(500, 0, "500: Internal Server Error")),
            Mode::NotFound => return self.reject(err(404, 10015, "Unknown Webhook")),
            Mode::Html429(n) if n > 0 => {
                self.update(|st| st.count_429 += 1);
                let webhook_id = hook.as_ref().map_or("", |h| h.id);
                self.notify(Event::RateLimited {
                    webhook_id,
                    retry_after: None,
                });
                let html = Resp::text(429, CLOUDFLARE_1015.into());
                return Some(Resp {
                    ctype: Some("text/html; charset=UTF-8"),
                    ..html
                });
            }
            Mode::Slow(d) => thread::sleep(d),
            _ => {}
        }
        let Some(hook) = hook else {
            return self.reject(err(404, 0, "404: Not Found"));
        };
        let id = hook.id;
        if req.method == "GET" && hook.message.is_none() {
            return self.get_webhook(id, hook.token);
        }
        if let Some(fault) = self.take_fault(id) {
            return self.answer_fault(id, fault);
        }
        match (req.method.as_str(), hook.message) {
            ("POST", None) | ("PATCH", Some(_)) => {}
            _ => return self.reject(err(405, 0, "405: Method Not Allowed")),
        }
        // Like Discord, invalid requests count against the bucket too, and
        // edits share the webhook's bucket with new messages.
        let mut st = lock(&self.state);
        let rl = self.rate_check(&mut st, id);
        if let Some(rl) = rl.as_ref().filter(|rl| rl.limited) {
            st.count_429 += 1;
            self.changed.notify_all();
            let retry_after = ceil3(rl.reset_after);
            self.notify(Event::RateLimited {
                webhook_id: id,
                retry_after: Some(retry_after),
            });
            let body = json!({"message": "You are being rate limited.",
                "retry_after": retry_after, "global": false});
            let mut resp = Resp::json(429, body).with_rate_headers(Some(rl));
            let secs = (retry_after.ceil() as u64).max(1).to_string();
            resp.headers
                .extend([("Retry-After", secs), ("X-RateLimit-Scope", "user".into())]);
            return Some(resp);
        }
        let done = match hook.message {
            None => create(&mut st, id, query, req),
            Some(msg_id) => edit(&mut st, id, msg_id, query, req),
        };
        let rec = match done {
            Ok(rec) => rec,
            Err(resp) => {
                st.rejected += 1;
                self.changed.notify_all();
                return Some(resp.with_rate_headers(rl.as_ref()));
            }
        };
        let wait = query_flag(query, "wait");
        let answer = match (rec.edit, wait) {
            (false, false) => Resp::empty(204),
            _ => Resp::json(
                200,
                message_json(&rec.message_id, &st.stored[&rec.message_id]),
            ),
        };
        if rec.edit {
            self.notify(Event::Edited(&rec));
            st.edits.push(rec);
        } else {
            self.notify(Event::Accepted(&rec));
            st.messages.push(rec);
        }
        drop(st);
        self.changed.notify_all();
        if let Some(d) = self.opts.wait_delay.filter(|_| wait) {
            thread::sleep(d);
        }
        Some(answer.with_rate_headers(rl.as_ref()))
    }

    /// `GET /api/webhooks/{id}/{token}`: Discord's webhook object, posting
    /// nothing (what the heartbeat probes reachability with). A standing
    /// fault is the webhook's state (a deleted webhook is 404 here too);
    /// queued faults are left for the posts they were meant for. Its rate
    /// limit is its own bucket, as Discord counts per route.
    fn get_webhook(&self, id: &str, token: &str) -> Option<Resp> {
        let standing = lock(&self.state).standing.get(id).cloned();
        if let Some(fault) = standing {
            self.update(|st| st.faulted += 1);
            return self.answer_fault(id, fault);
        }
        let mut st = lock(&self.state);
        let rl = self.rate_check(&mut st, &format!("{id}/get"));
        st.probes += 1;
        self.changed.notify_all();
        if let Some(rl) = rl.as_ref().filter(|rl| rl.limited) {
            st.count_429 += 1;
            let retry_after = ceil3(rl.reset_after);
            let body = json!({"message": "You are being rate limited.",
                "retry_after": retry_after, "global": false});
            let mut resp = Resp::json(429, body).with_rate_headers(Some(rl));
            let secs = (retry_after.ceil() as u64).max(1).to_string();
            resp.headers
                .extend([("Retry-After", secs), ("X-RateLimit-Scope", "user".into())]);
            return Some(resp);
        }
        let body = json!({"type": 1, "id": id, "name": "ekos", "avatar": null,
            "channel_id": CHANNEL_ID, "guild_id": "199737254929760256",
            "application_id": null, "token": token});
        Some(Resp::json(200, body).with_rate_headers(rl.as_ref()))
    }

    /// The scripted fault for this request of webhook `id`, if any.
    fn take_fault(&self, id: &str) -> Option<Fault> {
        let mut fault = None;
        self.update(|st| {
            fault = st
                .standing
                .get(id)
                .cloned()
                .or_else(|| st.queued.get_mut(id).and_then(|q| q.pop_front()));
            if fault.is_some() {
                st.faulted += 1;
            }
        });
        fault
    }

    fn answer_fault(&self, id: &str, fault: Fault) -> Option<Resp> {
        match fault {
            Fault::Status(status, body) => Some(match serde_json::from_str(&body) {
                Ok(v) => Resp::json(status, v),
                Err(_) => Resp::text(status, body),
            }),
            Fault::RateLimited(secs) => {
                self.update(|st| st.count_429 += 1);
                self.notify(Event::RateLimited {
                    webhook_id: id,
                    retry_after: Some(secs),
                });
                let body = json!({"message": "You are being rate limited.",
                    "retry_after": secs, "global": false});
                let mut resp = Resp::json(429, body);
                let whole = (secs.ceil() as u64).max(1).to_string();
                resp.headers.push(("Retry-After", whole));
                Some(resp)
            }
            Fault::Hang(d) => {
                thread::sleep(d);
                None
            }
            Fault::Close => None,
        }
    }

    /// Discord's per-webhook bucket: the window starts with the first request
    /// after the previous window ended; a request with none remaining is 429.
    fn rate_check(&self, st: &mut State, id: &str) -> Option<RateInfo> {
        let (limit, window) = self.opts.rate_limit?;
        let now = Instant::now();
        let (reset_at, remaining) = st.buckets.entry(id.to_string()).or_insert((now, 0));
        if now >= *reset_at {
            (*reset_at, *remaining) = (now + window, limit);
        }
        let limited = *remaining == 0;
        *remaining = remaining.saturating_sub(1);
        let reset_after = (*reset_at - now).as_secs_f64();
        let bucket = format!("{:016x}{:016x}", fnv1a(id.as_bytes()), fnv1a(b"webhook"));
        Some(RateInfo {
            limit,
            remaining: *remaining,
            reset_after,
            bucket,
            limited,
        })
    }

    fn control(self: &Arc<Self>, cmd: &str, req: &Request) -> Resp {
        let mode = parse_mode(&String::from_utf8_lossy(&req.body));
        match (req.method.as_str(), cmd, mode) {
            ("POST", "mode", Some(mode)) if mode != Mode::Refuse => match self.set_mode(mode) {
                Ok(()) => Resp::text(200, "ok\n".into()),
                Err(e) => Resp::text(500, format!("{e}\n")),
            },
            ("POST", "mode", _) => Resp::text(400, format!("{MODES}\n")),
            _ => Resp::text(404, "unknown control endpoint\n".into()),
        }
    }
}

/// The control commands (`POST /control/mode`, body one of these).
pub const MODES: &str = "normal | fail500 N | down | slow MS | notfound | html429 N";

fn parse_mode(text: &str) -> Option<Mode> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let num = |w: &str| w.parse::<u64>().ok();
    Some(match words[..] {
        ["normal"] => Mode::Normal,
        ["fail500" | "fail5xx", n] => Mode::Fail5xx(num(n)? as usize),
        ["down"] => Mode::Down,
        ["slow", ms] => Mode::Slow(Duration::from_millis(num(ms)?)),
        ["notfound"] => Mode::NotFound,
        ["html429", n] => Mode::Html429(num(n)? as usize),
        _ => return None,
    })
}

/// The webhook (and message) a request path names.
struct Hook<'a> {
    id: &'a str,
    token: &'a str,
    /// `.../messages/{message_id}`: a message of the webhook.
    message: Option<&'a str>,
}

/// `/api[/vN]/webhooks/{id}/{token}[/messages/{message_id}]`.
fn webhook_path(path: &str) -> Option<Hook<'_>> {
    let mut segs: Vec<&str> = path.strip_prefix("/api/")?.split('/').collect();
    let is_version = |s: &str| {
        let n = s.strip_prefix('v').unwrap_or("");
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    };
    if segs.first().is_some_and(|v| is_version(v)) {
        segs.remove(0);
    }
    let (id, token, message) = match segs[..] {
        ["webhooks", id, token] => (id, token, None),
        ["webhooks", id, token, "messages", m] if !m.is_empty() => (id, token, Some(m)),
        _ => return None,
    };
    (!id.is_empty() && !token.is_empty()).then_some(Hook { id, token, message })
}

/// The value of `key` in a query string, if present.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// A boolean query parameter the way Discord reads one (`true`/`1`).
fn query_flag(query: &str, key: &str) -> bool {
    query_param(query, key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

struct RateInfo {
    limit: u32,
    remaining: u32,
    reset_after: f64,
    bucket: String,
    limited: bool,
}

/// Rounded up to milliseconds, so a client waiting that long is never early.
fn ceil3(secs: f64) -> f64 {
    (secs * 1000.0).ceil() / 1000.0
}

fn unix_now() -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.map_or(0.0, |d| d.as_secs_f64())
}

/// `2024-05-01T12:34:56.789000+00:00`, as Discord writes timestamps.
fn iso8601(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let micros = ((unix - unix.floor()) * 1e6) as u32;
    let (h, mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}+00:00")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, step)
}

const CLOUDFLARE_1015: &str = "<!DOCTYPE html>\n<html><head><title>Access denied | discord.com \
used Cloudflare to restrict access</title></head>\n<body><div id=\"cf-error-details\">\
<h1>Error 1015</h1>\n<h2>You are being rate limited</h2>\n<p>The owner of this website \
(discord.com) has banned you temporarily from accessing this website.</p></div></body></html>\n";

// ------------------------------------------------------------------ messages

/// Discord's JSON error body `{"message": ..., "code": ...}`.
fn err(status: u16, code: u32, message: &str) -> Resp {
    Resp::json(status, json!({"message": message, "code": code}))
}

fn bad_json() -> Resp {
    err(400, 50109, "The request body contains invalid JSON.")
}

fn too_large() -> Resp {
    err(413, 40005, "Request entity too large")
}

/// A request body as sent: its JSON and its uploaded files.
struct Body {
    json: Map<String, Value>,
    /// (n of a `files[n]` part, filename, bytes), in request order.
    files: Vec<(Option<usize>, String, Vec<u8>)>,
}

/// Reads a webhook request body (JSON, or multipart with `payload_json` and
/// files) and checks the upload sizes, the way Discord does.
fn parse_body(req: &Request) -> Result<Body, Resp> {
    let ctype = req.header("content-type").unwrap_or("");
    let lower = ctype.to_ascii_lowercase();
    let mut files = Vec::new();
    let body = if lower.starts_with("multipart/form-data") {
        let boundary = header_param(ctype, "boundary").ok_or_else(bad_json)?;
        let mut payload = None;
        let mut form = Map::new();
        for p in parse_multipart(&req.body, &boundary).ok_or_else(bad_json)? {
            if p.filename.is_some() || p.name.starts_with("files[") || p.name == "file" {
                let n = p
                    .name
                    .strip_prefix("files[")
                    .and_then(|r| r.strip_suffix(']'));
                let n = n.and_then(|n| n.parse().ok());
                files.push((n, p.filename.unwrap_or(p.name), p.data));
            } else if p.name == "payload_json" {
                payload = Some(serde_json::from_slice(&p.data).map_err(|_| bad_json())?);
            } else {
                let text = String::from_utf8_lossy(&p.data).into_owned();
                form.insert(p.name, Value::String(text));
            }
        }
        payload.unwrap_or(Value::Object(form))
    } else if lower.starts_with("application/json") {
        serde_json::from_slice(&req.body).map_err(|_| bad_json())?
    } else {
        Value::Object(Map::new()) // Discord ignores a body it cannot read
    };
    let total: usize = files.iter().map(|f| f.2.len()).sum();
    if total > MAX_FILES || files.iter().any(|f| f.2.len() > MAX_FILE) {
        return Err(too_large());
    }
    match body {
        Value::Object(json) => Ok(Body { json, files }),
        _ => Err(bad_json()),
    }
}

/// Checks what a new message and an edit have in common: `content`,
/// `username` and `embeds` within their limits.
fn check_fields(errs: &mut Errs, obj: &Map<String, Value>) {
    errs.text("content", obj.get("content"), 2000, false);
    if obj.contains_key("username") {
        errs.text("username", obj.get("username"), 80, true);
    }
    errs.embeds(obj.get("embeds"));
}

fn embeds_of(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn received(msg_id: &str, m: &Stored, body: Map<String, Value>, edit: bool) -> Received {
    Received {
        at: Instant::now(),
        webhook_id: m.webhook_id.clone(),
        message_id: msg_id.to_string(),
        channel_id: m.channel_id.clone(),
        edit,
        allowed_mentions: body.get("allowed_mentions").cloned(),
        body: Value::Object(body),
        content: m.content.clone(),
        embeds: m.embeds.clone(),
        attachments: m
            .attachments
            .iter()
            .map(|a| (a.1.clone(), a.2.clone()))
            .collect(),
    }
}

fn unknown_channel() -> Resp {
    err(400, 10003, "Unknown Channel")
}

/// Validates and stores a new message of webhook `hook` (`POST`), with
/// Discord's rules for forum channels and threads.
fn create(st: &mut State, hook: &str, query: &str, req: &Request) -> Result<Received, Resp> {
    let Body { json: obj, files } = parse_body(req)?;
    let mut errs = Errs::default();
    if files.len() > 10 {
        errs.add(
            "files",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 10 or fewer in length.",
        );
    }
    check_fields(&mut errs, &obj);
    if obj.contains_key("thread_name") {
        errs.text("thread_name", obj.get("thread_name"), 100, true);
    }
    errs.result()?;
    let content = obj.get("content").and_then(Value::as_str).unwrap_or("");
    let embeds = embeds_of(obj.get("embeds"));
    if content.trim().is_empty() && embeds.is_empty() && files.is_empty() {
        return Err(err(400, 50006, "Cannot send an empty message"));
    }
    let thread_id = query_param(query, "thread_id");
    let thread_name = obj.get("thread_name").and_then(Value::as_str);
    match (st.is_forum(hook), thread_id, thread_name) {
        (true, None, None) => {
            let m = "Webhooks posted to forum channels must have a thread_name or thread_id";
            return Err(err(400, 220001, m));
        }
        (true, Some(_), Some(_)) => {
            let m =
                "Webhooks posted to forum channels cannot have both a thread_name and thread_id";
            return Err(err(400, 220002, m));
        }
        (false, _, Some(_)) => {
            let m = "Webhooks can only create threads in forum channels";
            return Err(err(400, 220003, m));
        }
        _ => {}
    }
    if thread_id.is_some_and(|t| st.threads.get(t).is_none_or(|th| th.0 != hook)) {
        return Err(unknown_channel());
    }
    let msg_id = st.snowflake();
    // A forum post's thread has the id of its first message.
    let channel_id = match (thread_id, thread_name) {
        (Some(t), _) => t.to_string(),
        (None, Some(name)) => {
            let thread = (hook.to_string(), name.to_string());
            st.threads.insert(msg_id.clone(), thread);
            msg_id.clone()
        }
        (None, None) => CHANNEL_ID.to_string(),
    };
    let attachments = files
        .into_iter()
        .map(|(_, name, data)| (st.snowflake(), name, data));
    let stored = Stored {
        webhook_id: hook.to_string(),
        channel_id,
        content: content.to_string(),
        embeds,
        attachments: attachments.collect(),
        edited: false,
    };
    let rec = received(&msg_id, &stored, obj, false);
    st.stored.insert(msg_id, stored);
    Ok(rec)
}

/// An attachment id as a string, however the JSON wrote it.
fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Validates and applies an edit (`PATCH`) of message `msg_id` of webhook
/// `hook`: fields sent replace the message's, fields left out stay; an
/// `attachments` array lists the files that remain (existing ones by id,
/// new `files[n]` by n), and without it every file stays and new ones are
/// added.
fn edit(
    st: &mut State,
    hook: &str,
    msg_id: &str,
    query: &str,
    req: &Request,
) -> Result<Received, Resp> {
    let thread_id = query_param(query, "thread_id");
    if thread_id.is_some_and(|t| st.threads.get(t).is_none_or(|th| th.0 != hook)) {
        return Err(unknown_channel());
    }
    // A message in a thread is only found with that thread's id, as on
    // Discord (issue discord-api-docs#3519).
    let channel = thread_id.unwrap_or(CHANNEL_ID);
    let Some(old) = st
        .stored
        .get(msg_id)
        .filter(|m| m.webhook_id == hook && m.channel_id == channel)
    else {
        return Err(err(404, 10008, "Unknown Message"));
    };
    let Body { json: obj, files } = parse_body(req)?;
    let mut errs = Errs::default();
    check_fields(&mut errs, &obj);
    let mut kept: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut added: Vec<(String, Vec<u8>)> = Vec::new();
    match obj.get("attachments") {
        None | Some(Value::Null) => {
            kept = old.attachments.clone();
            added.extend(files.into_iter().map(|f| (f.1, f.2)));
        }
        Some(Value::Array(list)) => {
            let ids: Vec<String> = list.iter().filter_map(|a| id_text(a.get("id"))).collect();
            let listed = |id: &str| ids.iter().any(|i| i == id);
            kept.extend(old.attachments.iter().filter(|a| listed(&a.0)).cloned());
            for (i, (n, name, data)) in files.into_iter().enumerate() {
                if listed(&n.unwrap_or(i).to_string()) {
                    added.push((name, data));
                }
            }
        }
        Some(_) => errs.add("attachments", "BASE_TYPE_ARRAY", "Must be an array."),
    }
    if kept.len() + added.len() > 10 {
        let m = "Must be 10 or fewer in length.";
        errs.add("attachments", "BASE_TYPE_MAX_LENGTH", m);
    }
    errs.result()?;
    let mut new = old.clone();
    if let Some(c) = obj.get("content") {
        new.content = c.as_str().unwrap_or("").to_string();
    }
    if obj.contains_key("embeds") {
        new.embeds = embeds_of(obj.get("embeds"));
    }
    new.attachments = kept;
    if new.content.trim().is_empty()
        && new.embeds.is_empty()
        && new.attachments.is_empty()
        && added.is_empty()
    {
        return Err(err(400, 50006, "Cannot send an empty message"));
    }
    for (name, data) in added {
        new.attachments.push((st.snowflake(), name, data));
    }
    new.edited = true;
    let rec = received(msg_id, &new, obj, true);
    st.stored.insert(msg_id.to_string(), new);
    Ok(rec)
}

/// Discord's nested `errors` object of a 50035 "Invalid Form Body".
#[derive(Default)]
struct Errs(Map<String, Value>);

impl Errs {
    /// `path` is dotted: `embeds.0.fields.1.value`.
    fn add(&mut self, path: &str, code: &str, message: &str) {
        let mut cur = &mut self.0;
        for key in path.split('.') {
            let next = cur.entry(key).or_insert_with(|| json!({}));
            cur = next.as_object_mut().expect("error paths hold objects");
        }
        let list = cur.entry("_errors").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(json!({"code": code, "message": message}));
        }
    }

    /// A 400 "Invalid Form Body" listing the errors, if there are any.
    fn result(self) -> Result<(), Resp> {
        if self.0.is_empty() {
            return Ok(());
        }
        let body = json!({"code": 50035, "message": "Invalid Form Body", "errors": self.0});
        Err(Resp::json(400, body))
    }

    /// Length in code points of an optional string field, checked against `max`.
    fn text(&mut self, path: &str, v: Option<&Value>, max: usize, required: bool) -> usize {
        let n = match v {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => s.chars().count(),
            Some(_) => {
                self.add(path, "BASE_TYPE_STRING", "Must be a string.");
                return 0;
            }
        };
        if n > max {
            let msg = format!("Must be {max} or fewer in length.");
            self.add(path, "BASE_TYPE_MAX_LENGTH", &msg);
        } else if required && n == 0 {
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required");
        }
        n
    }

    /// An optional array of at most `max` items.
    fn array<'v>(&mut self, path: &str, v: Option<&'v Value>, max: usize) -> &'v [Value] {
        match v {
            Some(Value::Array(a)) if a.len() > max => {
                let msg = format!("Must be {max} or fewer in length.");
                self.add(path, "BASE_TYPE_MAX_LENGTH", &msg);
                a
            }
            Some(Value::Array(a)) => a,
            None | Some(Value::Null) => &[],
            Some(_) => {
                self.add(path, "BASE_TYPE_ARRAY", "Must be an array.");
                &[]
            }
        }
    }

    /// Validates `embeds`; returns whether there is at least one embed.
    fn embeds(&mut self, v: Option<&Value>) -> bool {
        let embeds = self.array("embeds", v, 10);
        let mut total = 0;
        for (i, e) in embeds.iter().enumerate() {
            let limits = [("title", 256), ("description", 4096), ("footer/text", 2048)];
            for (key, max) in limits.into_iter().chain([("author/name", 256)]) {
                let path = format!("embeds.{i}.{}", key.replace('/', "."));
                total += self.text(&path, e.pointer(&format!("/{key}")), max, false);
            }
            let fields = self.array(&format!("embeds.{i}.fields"), e.get("fields"), 25);
            for (j, f) in fields.iter().enumerate() {
                for (key, max) in [("name", 256), ("value", 1024)] {
                    let path = format!("embeds.{i}.fields.{j}.{key}");
                    total += self.text(&path, f.get(key), max, true);
                }
            }
        }
        if total > 6000 {
            let msg = "Embed size exceeds maximum size of 6000";
            self.add("embeds", "MAX_EMBED_SIZE_EXCEEDED", msg);
        }
        !embeds.is_empty()
    }
}

/// The message object Discord returns for `?wait=true` and for an edit
/// (abridged).
fn message_json(msg_id: &str, m: &Stored) -> Value {
    let attachments: Vec<Value> = m
        .attachments
        .iter()
        .map(|(id, name, data)| json!({"id": id, "filename": name, "size": data.len()}))
        .collect();
    let edited = m.edited.then(|| iso8601(unix_now()));
    json!({
        "id": msg_id, "type": 0, "channel_id": m.channel_id, "webhook_id": m.webhook_id,
        "content": m.content, "embeds": m.embeds, "attachments": attachments,
        "author": {"id": m.webhook_id, "bot": true}, "edited_timestamp": edited,
    })
}

// ----------------------------------------------------------------- multipart

struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// A parameter of a header value such as `multipart/form-data; boundary=x`.
fn header_param(value: &str, key: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        let v = v.trim().trim_matches('"');
        k.trim().eq_ignore_ascii_case(key).then(|| v.to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let last = hay.len().checked_sub(needle.len())?;
    let mut i = from;
    while i <= last {
        i += hay[i..=last].iter().position(|&b| b == needle[0])?;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delim = format!("\r\n--{boundary}").into_bytes();
    // The first delimiter may come without the CRLF (no preamble).
    let mut pos = match body.starts_with(&delim[2..]) {
        true => delim.len() - 2,
        false => find(body, &delim, 0)? + delim.len(),
    };
    let mut parts = Vec::new();
    while !body.get(pos..)?.starts_with(b"--") {
        while matches!(body.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        if boundary.is_empty() || !body.get(pos..)?.starts_with(b"\r\n") {
            return None;
        }
        let head_end = find(body, b"\r\n\r\n", pos)?;
        // No part headers at all (head_end == pos) gives an empty head.
        let head = std::str::from_utf8(body.get(pos + 2..head_end).unwrap_or(b"")).ok()?;
        let data_end = find(body, &delim, head_end + 4)?;
        let disposition = head.split("\r\n").find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(v)
        })?;
        parts.push(Part {
            name: header_param(disposition, "name")?,
            filename: header_param(disposition, "filename"),
            data: body[head_end + 4..data_end].to_vec(),
        });
        pos = data_end + delim.len();
    }
    Some(parts)
}

// ------------------------------------------------------------------ HTTP/1.1

struct Request {
    method: String,
    target: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.0 == name)
            .map(|h| h.1.as_str())
    }
}

#[derive(Clone, Copy)]
enum ReadErr {
    /// EOF, timeout or socket error: just close.
    Io,
    Bad(&'static str),
    TooLarge,
}

/// One line without its CRLF; `None` at EOF before any byte.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, ReadErr> {
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .map_err(|_| ReadErr::Io)?;
    match (n, buf.pop()) {
        (0, _) => return Ok(None),
        (_, Some(b'\n')) => {}
        _ if n >= MAX_LINE => return Err(ReadErr::Bad("line too long")),
        _ => return Err(ReadErr::Bad("truncated request")),
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadErr::Bad("not UTF-8"))
}

fn read_request(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    uplink: Option<u64>,
) -> Result<Request, ReadErr> {
    let bad = |why| Err(ReadErr::Bad(why));
    let line = loop {
        match read_line(r)? {
            None => return Err(ReadErr::Io),
            Some(l) if !l.is_empty() => break l,
            Some(_) => {}
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad("malformed request line");
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !["HTTP/1.1", "HTTP/1.0"].contains(&version) {
        return bad("malformed request line");
    }
    let mut headers = Vec::new();
    loop {
        let l = read_line(r)?.ok_or(ReadErr::Bad("truncated headers"))?;
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or(ReadErr::Bad("malformed header"))?;
        if name.is_empty() || name.contains(char::is_whitespace) || headers.len() >= 100 {
            return bad("malformed header");
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let (method, target) = (method.to_string(), target.to_string());
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
        close: false,
    };
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let has = |t: &str| conn.split(',').any(|c| c.trim() == t);
    req.close = if version == "HTTP/1.0" {
        !has("keep-alive")
    } else {
        has("close")
    };
    let lengths = req.headers.iter().filter(|h| h.0 == "content-length");
    let lengths: Vec<_> = lengths.map(|h| h.1.parse::<usize>().ok()).collect();
    let cl = match lengths[..] {
        [] => None,
        [Some(n), ..] if lengths.iter().all(|&m| m == Some(n)) => Some(n),
        _ => return bad("bad content-length"),
    };
    let chunked = match req.header("transfer-encoding") {
        None => false,
        Some(te) if te.eq_ignore_ascii_case("chunked") && cl.is_none() => true,
        Some(_) => return bad("unsupported transfer-encoding"),
    };
    if cl.is_some_and(|n| n > MAX_BODY) {
        return Err(ReadErr::TooLarge);
    }
    let expect = req.header("expect").unwrap_or("");
    if (chunked || cl.is_some_and(|n| n > 0)) && expect.eq_ignore_ascii_case("100-continue") {
        let sent = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        sent.map_err(|_| ReadErr::Io)?;
    }
    if chunked {
        req.body = read_chunked(r)?;
    } else if let Some(n) = cl {
        req.body = vec![0; n];
        match uplink {
            None => r.read_exact(&mut req.body).map_err(|_| ReadErr::Io)?,
            // 4 KiB at a time, each when the rate allows it.
            Some(rate) => {
                let start = Instant::now();
                let mut got = 0;
                while got < n {
                    let k = (n - got).min(4096);
                    r.read_exact(&mut req.body[got..got + k])
                        .map_err(|_| ReadErr::Io)?;
                    got += k;
                    let due = start + Duration::from_secs_f64(got as f64 / rate as f64);
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
        }
    }
    Ok(req)
}

fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ReadErr> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or(ReadErr::Bad("truncated chunk"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| ReadErr::Bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let trailers = ReadErr::Bad("truncated trailers");
            while !read_line(r)?.ok_or(trailers)?.is_empty() {}
            return Ok(body);
        }
        if size > MAX_BODY - body.len() {
            return Err(ReadErr::TooLarge);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(|_| ReadErr::Io)?;
        if read_line(r)?.as_deref() != Some("") {
            return Err(ReadErr::Bad("missing CRLF after chunk"));
        }
    }
}

struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    ctype: Option<&'static str>,
    body: Vec<u8>,
}

impl Resp {
    fn empty(status: u16) -> Self {
        let (headers, body) = (Vec::new(), Vec::new());
        Resp {
            status,
            headers,
            ctype: None,
            body,
        }
    }

    fn text(status: u16, body: String) -> Self {
        let ctype = Some("text/plain; charset=utf-8");
        Resp {
            ctype,
            body: body.into_bytes(),
            ..Resp::empty(status)
        }
    }

    fn json(status: u16, v: Value) -> Self {
        let ctype = Some("application/json");
        Resp {
            ctype,
            body: v.to_string().into_bytes(),
            ..Resp::empty(status)
        }
    }

    fn with_rate_headers(mut self, rl: Option<&RateInfo>) -> Self {
        if let Some(rl) = rl {
            let after = ceil3(rl.reset_after);
            self.headers.extend([
                ("X-RateLimit-Bucket", rl.bucket.clone()),
                ("X-RateLimit-Limit", rl.limit.to_string()),
                ("X-RateLimit-Remaining", rl.remaining.to_string()),
                (
                    "X-RateLimit-Reset",
                    format!("{:.3}", ceil3(unix_now() + after)),
                ),
                ("X-RateLimit-Reset-After", format!("{after:.3}")),
            ]);
        }
        self
    }
}

fn write_resp(w: &mut TcpStream, r: &Resp, close: bool) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\nServer: fake-discord\r\n", r.status);
    if r.status != 204 {
        if let Some(ct) = r.ctype {
            out += &format!("Content-Type: {ct}\r\n");
        }
        out += &format!("Content-Length: {}\r\n", r.body.len());
    }
    for (k, v) in &r.headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += if close {
        "Connection: close\r\n\r\n"
    } else {
        "\r\n"
    };
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&r.body);
    w.write_all(&bytes)?;
    w.flush()
}

// ---------------------------------------------------------- helpers for tests

/// The lines inside the ``` code blocks of a message: header lines such as
/// `**path**` outside the blocks are skipped, several blocks are concatenated,
/// and zero-width spaces next to a backtick (the escape for ``` inside a
/// block) are removed.
pub fn code_block_lines(content: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in content.lines() {
        if !in_block {
            match line
                .trim_start()
                .strip_prefix("```")
                .map(|r| r.strip_suffix("```"))
            {
                Some(Some(inner)) if !inner.is_empty() => out.push(unescape(inner)),
                Some(Some(_)) | None => {}
                Some(None) => in_block = true, // the rest is a language tag, if any
            }
        } else if line.trim_end() == "```" {
            in_block = false;
        } else if let Some(inner) = line.strip_suffix("```") {
            out.push(unescape(inner));
            in_block = false;
        } else {
            out.push(unescape(line));
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let tick = |i: usize| c.get(i) == Some(&'`');
    let escape = |i: usize| c[i] == '\u{200B}' && ((i > 0 && tick(i - 1)) || tick(i + 1));
    (0..c.len()).filter(|&i| !escape(i)).map(|i| c[i]).collect()
}

/// The title of a message's first embed ("" without one).
pub fn title(m: &Received) -> String {
    m.embeds
        .first()
        .and_then(|e| e["title"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The accepted new messages (POSTs), without the edits.
pub fn posts(fake: &FakeDiscord) -> Vec<Received> {
    fake.messages().into_iter().filter(|m| !m.edit).collect()
}

/// Messages (not edits) whose first embed's title starts with `prefix`.
pub fn titled(fake: &FakeDiscord, prefix: &str) -> Vec<Received> {
    posts(fake)
        .into_iter()
        .filter(|m| title(m).starts_with(prefix))
        .collect()
}

/// An incident message of the night watch (its footer says so), not the
/// line embed of the same event, whose title is the same.
pub fn is_incident(m: &Received) -> bool {
    m.embeds.first().is_some_and(|e| {
        e["footer"]["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("· incident")
    })
}

/// Every line the accepted messages carried in code blocks, in order.
pub fn delivered(msgs: &[Received]) -> Vec<String> {
    msgs.iter()
        .flat_map(|m| code_block_lines(&m.content))
        .collect()
}

/// Every line the accepted messages carried, in code blocks and in
/// attached files (a flood goes as one `.log` attachment).
pub fn lines_and_files(msgs: &[Received]) -> Vec<String> {
    let mut v = delivered(msgs);
    for m in msgs {
        for (_, data) in &m.attachments {
            v.extend(String::from_utf8_lossy(data).lines().map(str::to_string));
        }
    }
    v
}

/// The value of the field `name` of an embed; panics naming the embed if
/// it has none.
pub fn embed_field(embed: &serde_json::Value, name: &str) -> String {
    embed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {embed}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}
