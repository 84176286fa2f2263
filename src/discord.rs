//! Talking to Discord: one request, and what its answer means for the caller.
//!
//! [`Client::post`] sends one body to the webhook and [`classify`] turns
//! the answer into an [`Outcome`] the sender acts on without knowing HTTP.
//! [`Sink::send`] does the same for any [`Request`]: a post that asks for
//! the created message (`?wait=true`), into a thread or opening a forum
//! post, or an edit of an earlier message (`PATCH`); [`read_reply`] reads
//! its answer into a [`Reply`], the same outcome plus the message Discord
//! returned ([`Posted`]: its id, to edit it later). Every answer has
//! exactly one outcome, decided by this table (the README repeats it); the
//! unit tests below check every row:
//!
//! | Discord's answer | Outcome | What the sender does |
//! |---|---|---|
//! | 2xx | `Delivered` | commit the lines; if `X-RateLimit-Remaining` is 0, wait `X-RateLimit-Reset-After` |
//! | 2xx whose body is not JSON (a captive portal's or proxy's page: Discord answers 204) | `Retry` | as for 5xx |
//! | 429 | `RateLimited` | wait the JSON `retry_after`, else `Retry-After`, else the bucket's reset; at least 60 s for a 429 with neither (Cloudflare's ban page) |
//! | 5xx, 408, 425, a timeout, a connection or DNS error | `Retry` | send the same body again, backoff 1 s doubling to 5 min, with jitter |
//! | 413; a 4xx whose JSON names a size limit: code 40005 or 50045, a 50035 error `BASE_TYPE_MAX_LENGTH`, `BASE_TYPE_BAD_LENGTH` or `MAX_EMBED_SIZE_EXCEEDED`, or a message "… too large" | `Rejected` | split the message in halves; a single line is posted again as a `.log` attachment (`Message::fallback`) |
//! | a 4xx whose JSON names this body's content: 50035 on a field we send (`content`, `embeds`, `files`, `attachments`, `allowed_mentions`, `username`, `payload_json`), 50006 (empty message), 50109 (invalid JSON), 200000/200001 (AutoMod), 240000 (harmful link), 20009 (explicit content) | `Rejected` | as above |
//! | 401, 403, 404; a 4xx that no smaller body can fix: 220001–220004 (forum channel webhook without `thread_name`…), 40058, 40067, 50008, 50024, 50083 (channel type, archived thread), 10003, 10015, 50001, 50013, 50027 (unknown channel or webhook, missing access, bad token), a 50035 error only on fields not in `OUR_FIELDS` (`thread_name`, which only a forum post's first request sends, cut to its limit by [`thread_name`]) | `Stop` | keep the message; the route stops and tries again every 10 min; logged once |
//! | any other 4xx (400, 409, 422… whose JSON names neither size nor content, or a proxy's HTML page), 3xx | `Retry` | as for 5xx: nothing in the body is to blame, so it is never split or changed; a notice (a message the daemon writes itself) is tried 3 times, then dropped ([`Outcome::unexplained_refusal`]) |
//! | only for a [`Request`] other than a plain post: an edit's 404 code 10008 (Unknown Message, the message was deleted); code 10003 (Unknown Channel) or 50083 (archived thread) to a request naming its own thread | `Gone` | the webhook works, the message or thread it named does not exist: post the message anew (in a new thread if the thread is gone); never send the same request again |
//!
//! The log lines' plain posts never get `Gone`: for them the table is the
//! rows above it, unchanged.
//!
//! Only `Rejected` ever changes what is posted, and only down to a single
//! line posted as an attachment: a line is never skipped. Every error text
//! is passed through [`Webhook::redact`], because HTTP libraries like to
//! quote the URL, and the URL holds the token.

use std::io::Write;
use std::time::Duration;

use crate::format::Payload;
use crate::webhook::Webhook;

mod request;

pub use request::{
    MessageId, NewFile, Posted, Request, RequestError, Snowflake, THREAD_NAME_MAX, Thread,
    ThreadId, payload, request_url, thread_name, with_thread_name,
};

/// What Discord said about the webhook's rate-limit bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateInfo {
    pub remaining: Option<u32>,
    pub reset_after: Option<Duration>,
}

/// What one answer means; see the table in the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Discord accepted the message.
    Delivered(RateInfo),
    /// Too many requests: send the same body after `wait`.
    RateLimited {
        wait: Duration,
        info: RateInfo,
        cloudflare: bool,
    },
    /// Nothing wrong with the body: send it again after a backoff.
    Retry { why: String },
    /// Discord refused this body for its size or its content: send it in
    /// smaller pieces, a single line as an attachment.
    Rejected { status: u16, why: String },
    /// Discord refuses every message to this webhook until someone fixes
    /// it (deleted webhook, wrong token, forum channel): stop the route.
    Stop { status: u16, why: String },
    /// The message an edit names, or the thread a request names, does not
    /// exist (any more): the webhook works, so the route goes on; the
    /// caller posts the message anew instead (opening a new thread if the
    /// thread is gone). Never the answer to a plain post.
    Gone { info: RateInfo, why: String },
}

impl Outcome {
    /// Whether this is the table's "any other 4xx" row: Discord (or a
    /// proxy before it) refused the request with a client error that names
    /// neither the body nor the webhook. Lines retry it as long as it
    /// lasts (a line is never skipped); a notice gives up after a few
    /// tries, as the same request may never be taken. 408 and 425 (retry
    /// later) and 429 are not refusals.
    pub fn unexplained_refusal(&self) -> bool {
        match self {
            Outcome::Retry { why } => refusal_status(why).is_some(),
            _ => false,
        }
    }
}

/// The status of a `Retry` that [`classify`] made of a refusing 4xx: its
/// `why` is `HTTP <status> <body>`.
fn refusal_status(why: &str) -> Option<u16> {
    let rest = why.strip_prefix("HTTP ")?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let whole = rest[3..].is_empty() || rest[3..].starts_with(' ');
    (whole && (400..=499).contains(&status) && !matches!(status, 408 | 425 | 429)).then_some(status)
}

/// Discord's answer to one [`Request`], read by [`read_reply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// What it means; see the table in the module documentation.
    pub outcome: Outcome,
    /// The message Discord returned, with a `Delivered` outcome to a
    /// request that asks for it ([`Request::answers_message`]); `None` when
    /// the answer held none (a proxy that strips bodies): the message was
    /// posted, but cannot be edited.
    pub message: Option<Posted>,
}

/// Where messages go: Discord, or stdout in dry-run mode.
pub trait Sink: Send {
    /// A plain post ([`Request::PLAIN`]): what the log lines use.
    fn post(&mut self, payload: &Payload, timeout: Duration) -> Outcome;
    /// Any request: a post that asks for the message, one into a thread or
    /// opening a forum post, or an edit of an earlier message.
    fn send(&mut self, req: &Request, payload: &Payload, timeout: Duration) -> Reply;
    /// The destination for log messages (token redacted).
    fn describe(&self) -> String;
    /// Called before the sender waits: buffered output goes out now.
    fn idle(&mut self) {}
    /// Whether `post` returns at once, whatever the network does (dry
    /// run): then the sender calls it on its own thread rather than
    /// handing it to a poster thread.
    fn answers_at_once(&self) -> bool {
        false
    }
}

/// Minimum wait after a 429 that carries no usable rate-limit information
/// (Cloudflare's ban page): Discord documents bans of an hour for IPs that
/// keep hitting it, so back off hard.
pub const CLOUDFLARE_WAIT: Duration = Duration::from_secs(60);

pub struct Client {
    agent: ureq::Agent,
    webhook: Webhook,
}

impl Client {
    pub fn new(webhook: Webhook) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .user_agent(concat!("ekos-log-monitor/", env!("CARGO_PKG_VERSION")))
            .max_redirects(0)
            .build()
            .into();
        Client { agent, webhook }
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn secs(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Reads the rate-limit headers of an answer.
pub fn rate_info(resp: &ureq::http::Response<ureq::Body>) -> RateInfo {
    RateInfo {
        remaining: header(resp, "x-ratelimit-remaining").and_then(|v| v.trim().parse().ok()),
        reset_after: header(resp, "x-ratelimit-reset-after").and_then(secs),
    }
}

/// Discord error codes that mean "this body is too large".
const SIZE_CODES: &[u64] = &[40005, 50045];
/// Nested `_errors` codes of a 50035 that name a length or size limit.
const SIZE_ERRORS: &[&str] = &[
    "BASE_TYPE_MAX_LENGTH",
    "BASE_TYPE_BAD_LENGTH",
    "MAX_EMBED_SIZE_EXCEEDED",
];
/// Error codes about what this body says (a smaller or different body of
/// the same lines may pass): empty message, invalid JSON, explicit
/// content, AutoMod, harmful links.
const CONTENT_CODES: &[u64] = &[50006, 50109, 20009, 200000, 200001, 240000];
/// Error codes no body can fix: the webhook or its channel must change.
const STOP_CODES: &[u64] = &[
    10003, 10015, 50001, 50013, 50027, 40058, 40067, 50008, 50024, 50083, 220001, 220002, 220003,
    220004,
];
/// Top-level fields of the bodies we send: a 50035 error under one of them
/// is about this body.
const OUR_FIELDS: &[&str] = &[
    "content",
    "embeds",
    "files",
    "attachments",
    "allowed_mentions",
    "username",
    "payload_json",
];
/// The 429 `retry_after` honoured at most (a broken proxy cannot stop a
/// route for a day).
const MAX_RATE_WAIT: Duration = Duration::from_secs(3600);

/// What a 4xx answer's JSON body blames, as far as it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// Something outside this body, or nothing that can be recognized.
    Unknown,
    /// This body: its size or its content.
    Body,
    /// The webhook or its channel.
    Webhook,
}

/// Collects `(top-level field, code)` of every `_errors` entry of a
/// 50035's nested `errors` object.
fn form_errors(v: &serde_json::Value, top: Option<&str>, out: &mut Vec<(String, String)>) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (key, val) in obj {
        if key == "_errors" {
            for e in val.as_array().into_iter().flatten() {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                out.push((top.unwrap_or("").to_string(), code.to_string()));
            }
        } else {
            form_errors(val, Some(top.unwrap_or(key)), out);
        }
    }
}

/// Reads a 4xx answer's body the way Discord writes errors:
/// `{"code": 50035, "message": "Invalid Form Body", "errors": {...}}`.
fn blame(body: &str) -> Blame {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        // A proxy's page, or nothing: not Discord's judgement of the body.
        return Blame::Unknown;
    };
    let code = json.get("code").and_then(|c| c.as_u64());
    let message = json
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match code {
        Some(c) if STOP_CODES.contains(&c) => return Blame::Webhook,
        Some(c) if SIZE_CODES.contains(&c) || CONTENT_CODES.contains(&c) => return Blame::Body,
        Some(50035) => {
            let mut errs = Vec::new();
            if let Some(e) = json.get("errors") {
                form_errors(e, None, &mut errs);
            }
            let ours = |f: &str| f.is_empty() || OUR_FIELDS.contains(&f);
            if errs.is_empty()
                || errs
                    .iter()
                    .any(|(f, c)| ours(f) || SIZE_ERRORS.contains(&c.as_str()))
            {
                return Blame::Body;
            }
            // Only fields we never send (a forum's `thread_name`): no
            // body of ours can satisfy it.
            return Blame::Webhook;
        }
        _ => {}
    }
    if message.contains("too large") || message.contains("too long") {
        return Blame::Body;
    }
    Blame::Unknown
}

/// Whether an answer's body is JSON, as every body Discord sends is.
fn looks_like_json(body: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok()
}

/// Classifies an HTTP answer; `body` is the answer's text (maybe empty).
/// See the table in the module documentation.
pub fn classify(
    status: u16,
    info: RateInfo,
    retry_after_header: Option<Duration>,
    body: &str,
) -> Outcome {
    match status {
        // Discord answers a webhook POST with 204 and no body (or JSON
        // with `?wait=true`). A 2xx whose body is not JSON is somebody
        // else's page (a captive portal, a misconfigured proxy): the
        // message never reached Discord, so it must not be committed.
        200..=299 if !body.trim().is_empty() && !looks_like_json(body) => Outcome::Retry {
            why: format!(
                "HTTP {status} with a page that is not Discord's: {}",
                short(body)
            ),
        },
        200..=299 => Outcome::Delivered(info),
        429 => {
            let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
            let from_body = json
                .as_ref()
                .and_then(|j| j.get("retry_after"))
                .and_then(|v| v.as_f64())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_RATE_WAIT.as_secs_f64())));
            let cloudflare =
                json.is_none() && info.remaining.is_none() && info.reset_after.is_none();
            let mut wait = from_body
                .or(retry_after_header)
                .or(info.reset_after)
                .unwrap_or(CLOUDFLARE_WAIT);
            if cloudflare {
                wait = wait.max(CLOUDFLARE_WAIT);
            }
            Outcome::RateLimited {
                wait: wait.min(MAX_RATE_WAIT),
                info,
                cloudflare,
            }
        }
        401 | 403 | 404 => Outcome::Stop {
            status,
            why: short(body),
        },
        408 | 425 => Outcome::Retry {
            why: format!("HTTP {status} {}", short(body)),
        },
        413 => Outcome::Rejected {
            status,
            why: short(body),
        },
        400..=499 => match blame(body) {
            Blame::Body => Outcome::Rejected {
                status,
                why: short(body),
            },
            Blame::Webhook => Outcome::Stop {
                status,
                why: short(body),
            },
            Blame::Unknown => Outcome::Retry {
                why: format!("HTTP {status} {}", short(body)),
            },
        },
        _ => Outcome::Retry {
            why: format!("HTTP {status} {}", short(body)),
        },
    }
}

/// Reads the answer to `req`: [`classify`], except where the request names
/// a message or a thread that Discord no longer has (`Gone`, see the
/// table), and the message Discord answered with. A plain post reads
/// exactly as [`classify`] says.
pub fn read_reply(
    req: &Request,
    status: u16,
    info: RateInfo,
    retry_after_header: Option<Duration>,
    body: &str,
) -> Reply {
    if let Some(why) = gone(req, status, body) {
        return Reply {
            outcome: Outcome::Gone { info, why },
            message: None,
        };
    }
    let outcome = classify(status, info, retry_after_header, body);
    let message = match outcome {
        Outcome::Delivered(_) if req.answers_message() => Posted::parse(body),
        _ => None,
    };
    Reply { outcome, message }
}

/// Why the message or thread `req` names is gone, if this answer says so.
fn gone(req: &Request, status: u16, body: &str) -> Option<String> {
    if !(400..=499).contains(&status) {
        return None;
    }
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("code")?
        .as_u64()?;
    let edit = matches!(req, Request::Edit { .. });
    let thread = req.thread().is_some();
    let what = match code {
        10008 if edit && status == 404 => "the message was deleted",
        10003 if thread => "the thread was deleted",
        50083 if thread => "the thread is archived",
        _ => return None,
    };
    Some(format!("{what}: HTTP {status} {}", short(body)))
}

/// Discord's error bodies are short JSON; anything else (an HTML page) is
/// cut so one answer cannot flood the journal.
fn short(body: &str) -> String {
    let b = body.trim();
    if b.starts_with('<') {
        return "(HTML page)".to_string();
    }
    let mut s: String = b.chars().take(300).collect();
    if b.chars().count() > 300 {
        s.push('…');
    }
    s
}

impl Client {
    /// Makes one request and reads its answer; every error text redacted.
    fn exchange(&self, req: &Request, payload: &Payload, timeout: Duration) -> Reply {
        let url = request_url(self.webhook.url(), req);
        let named;
        let payload = match req {
            Request::Post {
                thread: Thread::Open(name),
                ..
            } => match with_thread_name(payload, name) {
                Ok(p) => {
                    named = p;
                    &named
                }
                // Our own bodies are always readable: a bug, to be fixed.
                Err(e) => {
                    return Reply {
                        outcome: Outcome::Stop {
                            status: 0,
                            why: e.to_string(),
                        },
                        message: None,
                    };
                }
            },
            _ => payload,
        };
        let builder = match req {
            Request::Post { .. } => self.agent.post(&url),
            Request::Edit { .. } => self.agent.patch(&url),
        };
        let result = builder
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", &payload.content_type)
            .send(&payload.body[..]);
        let mut reply = match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let info = rate_info(&resp);
                let retry_after = header(&resp, "retry-after").and_then(secs);
                // A 2xx body is read too (Discord's is empty, or the
                // message): a page in it means the request never reached
                // Discord; see `classify`.
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                read_reply(req, status, info, retry_after, &text)
            }
            Err(e) => Reply {
                outcome: Outcome::Retry {
                    why: describe_error(&e),
                },
                message: None,
            },
        };
        if let Outcome::Rejected { why, .. }
        | Outcome::Stop { why, .. }
        | Outcome::Retry { why }
        | Outcome::Gone { why, .. } = &mut reply.outcome
        {
            *why = self.webhook.redact(why);
        }
        reply
    }
}

impl Sink for Client {
    fn post(&mut self, payload: &Payload, timeout: Duration) -> Outcome {
        self.exchange(&Request::PLAIN, payload, timeout).outcome
    }

    fn send(&mut self, req: &Request, payload: &Payload, timeout: Duration) -> Reply {
        self.exchange(req, payload, timeout)
    }

    fn describe(&self) -> String {
        self.webhook.to_string()
    }
}

/// A short description of a transport error, without the URL.
fn describe_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection error: {io}"),
        ureq::Error::HostNotFound => "host not found (DNS)".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        other => other.to_string(),
    }
}

/// `--dry-run`: each request body becomes one JSON line on stdout.
pub struct DryRun {
    out: Box<dyn Write + Send>,
    /// The last made-up message id: a dry run answers requests that ask
    /// for the message with ids of its own, so editing goes on as live.
    last_id: u64,
}

impl DryRun {
    /// Buffered: a backlog is printed in large writes, and whatever is
    /// buffered is flushed as soon as the sender has nothing more to do.
    pub fn stdout() -> DryRun {
        DryRun {
            out: Box::new(std::io::BufWriter::with_capacity(
                256 * 1024,
                std::io::stdout(),
            )),
            last_id: 0,
        }
    }

    /// Writes one line: the body, as for a plain post.
    fn print(&mut self, line: &[u8]) -> Outcome {
        let ok = self
            .out
            .write_all(line)
            .and_then(|_| self.out.write_all(b"\n"));
        match ok {
            Ok(()) => Outcome::Delivered(RateInfo::default()),
            Err(e) => Outcome::Retry {
                why: format!("cannot write to stdout: {e}"),
            },
        }
    }
}

/// The `--dry-run` line of a request other than a plain post: what it
/// asks (`method`, `message_id`, `thread_id`, `thread_name`, `wait`) and
/// the body as printed for a plain post.
fn dry_run_line(req: &Request, printable: &[u8]) -> Vec<u8> {
    let mut what = serde_json::json!({ "method": req.method() });
    match req {
        Request::Post { thread, wait } => {
            what["wait"] = (*wait).into();
            match thread {
                Thread::Channel => {}
                Thread::In(t) => what["thread_id"] = t.as_str().into(),
                Thread::Open(name) => what["thread_name"] = thread_name(name).into(),
            }
        }
        Request::Edit { id, thread } => {
            what["message_id"] = id.as_str().into();
            if let Some(t) = thread {
                what["thread_id"] = t.as_str().into();
            }
        }
    }
    let body: serde_json::Value =
        serde_json::from_slice(printable).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({ "request": what, "body": body }))
        .expect("a JSON value always serializes")
}

impl Sink for DryRun {
    fn post(&mut self, payload: &Payload, _timeout: Duration) -> Outcome {
        self.print(&payload.printable)
    }

    fn send(&mut self, req: &Request, payload: &Payload, _timeout: Duration) -> Reply {
        if *req == Request::PLAIN {
            return Reply {
                outcome: self.print(&payload.printable),
                message: None,
            };
        }
        let outcome = self.print(&dry_run_line(req, &payload.printable));
        let delivered = matches!(outcome, Outcome::Delivered(_));
        let message = (delivered && req.answers_message()).then(|| {
            let id = match req {
                Request::Edit { id, .. } => id.clone(),
                Request::Post { .. } => {
                    self.last_id += 1;
                    Snowflake::parse(&self.last_id.to_string()).expect("digits")
                }
            };
            let channel_id = match req {
                Request::Post {
                    thread: Thread::In(t),
                    ..
                }
                | Request::Edit {
                    thread: Some(t), ..
                } => t.clone(),
                // A new forum post's thread has its first message's id.
                Request::Post {
                    thread: Thread::Open(_),
                    ..
                } => id.clone(),
                _ => Snowflake::parse("0").expect("digits"),
            };
            Posted {
                id,
                channel_id,
                attachments: Vec::new(),
            }
        });
        Reply { outcome, message }
    }

    fn idle(&mut self) {
        let _ = self.out.flush();
    }

    fn describe(&self) -> String {
        "stdout (dry run)".to_string()
    }

    fn answers_at_once(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: RateInfo = RateInfo {
        remaining: None,
        reset_after: None,
    };

    fn kind(status: u16, body: &str) -> &'static str {
        match classify(status, NONE, None, body) {
            Outcome::Delivered(_) => "delivered",
            Outcome::RateLimited { .. } => "rate limited",
            Outcome::Retry { .. } => "retry",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Stop { .. } => "stop",
            Outcome::Gone { .. } => "gone",
        }
    }

    #[test]
    fn only_an_unexplained_4xx_is_a_refusal_a_notice_gives_up_on() {
        let refusal =
            |status: u16, body: &str| classify(status, NONE, None, body).unexplained_refusal();
        assert!(refusal(400, ""));
        assert!(refusal(409, "<html>proxy</html>"));
        assert!(refusal(422, r#"{"code": 0, "message": "x"}"#));
        for status in [408, 425, 429, 500, 502, 503, 302, 204] {
            assert!(!refusal(status, ""), "{status}");
        }
        // Rejected (the body) and Stop (the webhook) are not retried at all.
        assert!(!refusal(413, ""));
        assert!(!refusal(404, ""));
        let network = Outcome::Retry {
            why: "HTTP 4 connection reset".into(),
        };
        assert!(!network.unexplained_refusal());
        assert!(
            !Outcome::Retry {
                why: "timed out".into()
            }
            .unexplained_refusal()
        );
    }

    /// The body Discord sends for a 50035 with one nested error.
    fn form_error(path: &str, code: &str) -> String {
        let mut inner = serde_json::json!({"_errors": [{"code": code, "message": "m"}]});
        for key in path.rsplit('.') {
            inner = serde_json::json!({ key: inner });
        }
        serde_json::json!({"code": 50035, "message": "Invalid Form Body", "errors": inner})
            .to_string()
    }

    fn coded(code: u64, message: &str) -> String {
        serde_json::json!({"code": code, "message": message}).to_string()
    }

    #[test]
    fn row_2xx_is_delivered_with_the_bucket() {
        let hdr = RateInfo {
            remaining: Some(0),
            reset_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(classify(204, hdr, None, ""), Outcome::Delivered(hdr));
        assert_eq!(kind(200, "{}"), "delivered");
        assert_eq!(kind(200, " {\"id\": \"1\"}\n"), "delivered");
        assert_eq!(kind(204, "  "), "delivered");
    }

    /// A 200 with an HTML page (a captive portal, a proxy) is not
    /// Discord's acceptance: the lines are posted again, never committed.
    #[test]
    fn row_2xx_with_a_page_that_is_not_json_is_retried() {
        assert_eq!(kind(200, "<html><body>Welcome</body></html>"), "retry");
        assert_eq!(kind(202, "OK"), "retry");
    }

    #[test]
    fn row_429_waits_what_discord_asked() {
        let hdr = RateInfo {
            remaining: Some(0),
            reset_after: Some(Duration::from_millis(1500)),
        };
        let wait = |info, header, body| match classify(429, info, header, body) {
            Outcome::RateLimited {
                wait, cloudflare, ..
            } => (wait, cloudflare),
            o => panic!("{o:?}"),
        };
        let two = Some(Duration::from_secs(2));
        let json = r#"{"retry_after": 0.75, "global": false}"#;
        assert_eq!(wait(hdr, two, json), (Duration::from_millis(750), false));
        assert_eq!(wait(hdr, two, ""), (Duration::from_secs(2), false));
        assert_eq!(wait(hdr, None, ""), (Duration::from_millis(1500), false));
        // Cloudflare's HTML page: no JSON, no headers.
        let (w, cf) = wait(NONE, None, "<html>error 1015</html>");
        assert!(cf && w >= CLOUDFLARE_WAIT);
        let (w, cf) = wait(NONE, Some(Duration::from_secs(5)), "<html></html>");
        assert!(cf && w >= CLOUDFLARE_WAIT);
        // A silly retry_after is capped.
        let (w, _) = wait(hdr, None, r#"{"retry_after": 1e12}"#);
        assert_eq!(w, MAX_RATE_WAIT);
    }

    #[test]
    fn row_transient_answers_retry() {
        for status in [500, 502, 503, 504, 520, 408, 425] {
            assert_eq!(kind(status, ""), "retry", "{status}");
            assert_eq!(
                kind(status, &coded(40005, "too large")),
                "retry",
                "{status}"
            );
        }
    }

    #[test]
    fn row_size_rejections_split() {
        assert_eq!(kind(413, ""), "rejected");
        assert_eq!(kind(413, "<html>nginx</html>"), "rejected");
        assert_eq!(
            kind(400, &coded(40005, "Request entity too large")),
            "rejected"
        );
        assert_eq!(
            kind(400, &coded(50045, "File uploaded exceeds the maximum size")),
            "rejected"
        );
        for (path, code) in [
            ("content", "BASE_TYPE_MAX_LENGTH"),
            ("embeds.0.footer.text", "BASE_TYPE_MAX_LENGTH"),
            ("embeds", "MAX_EMBED_SIZE_EXCEEDED"),
            ("embeds.0.description", "BASE_TYPE_BAD_LENGTH"),
            // A size error on a field we do not know is still about size.
            ("poll.question", "BASE_TYPE_MAX_LENGTH"),
        ] {
            assert_eq!(kind(400, &form_error(path, code)), "rejected", "{path}");
        }
        // Not Discord's code, but says so.
        assert_eq!(
            kind(400, r#"{"message": "Request entity too large"}"#),
            "rejected"
        );
    }

    #[test]
    fn row_content_rejections_split() {
        for code in [50006, 50109, 20009, 200000, 200001, 240000] {
            assert_eq!(kind(400, &coded(code, "m")), "rejected", "{code}");
        }
        assert_eq!(
            kind(400, &form_error("content", "BASE_TYPE_STRING")),
            "rejected"
        );
        assert_eq!(
            kind(400, &form_error("embeds.0.title", "BASE_TYPE_REQUIRED")),
            "rejected"
        );
        assert_eq!(
            kind(400, r#"{"code": 50035, "message": "Invalid Form Body"}"#),
            "rejected"
        );
    }

    #[test]
    fn row_webhook_problems_stop_the_route() {
        for status in [401, 403, 404] {
            assert_eq!(kind(status, ""), "stop");
            assert_eq!(kind(status, &coded(10015, "Unknown Webhook")), "stop");
        }
        let forum = "Webhooks posted to forum channels must have a thread_name or thread_id";
        assert_eq!(kind(400, &coded(220001, forum)), "stop");
        for code in [
            10003, 10015, 50001, 50013, 50027, 40058, 40067, 50008, 50024, 50083, 220002, 220003,
            220004,
        ] {
            assert_eq!(kind(400, &coded(code, "m")), "stop", "{code}");
        }
        assert_eq!(
            kind(400, &form_error("thread_name", "BASE_TYPE_REQUIRED")),
            "stop"
        );
    }

    #[test]
    fn row_other_4xx_retry_without_touching_the_body() {
        assert_eq!(kind(400, ""), "retry");
        assert_eq!(
            kind(400, "<html><body>400 Bad Request</body></html>"),
            "retry"
        );
        assert_eq!(kind(400, "Bad Request"), "retry");
        assert_eq!(kind(400, &coded(0, "400: Bad Request")), "retry");
        assert_eq!(kind(409, &coded(0, "conflict")), "retry");
        assert_eq!(kind(422, "{}"), "retry");
        assert_eq!(kind(405, &coded(0, "405: Method Not Allowed")), "retry");
        assert_eq!(kind(301, ""), "retry");
    }

    fn sf(s: &str) -> Snowflake {
        Snowflake::parse(s).unwrap()
    }

    fn edit(thread: Option<&str>) -> Request {
        Request::Edit {
            id: sf("99"),
            thread: thread.map(sf),
        }
    }

    fn post_in(thread: Option<&str>, wait: bool) -> Request {
        let thread = thread.map_or(Thread::Channel, |t| Thread::In(sf(t)));
        Request::Post { thread, wait }
    }

    fn reply_kind(req: &Request, status: u16, body: &str) -> &'static str {
        match read_reply(req, status, NONE, None, body).outcome {
            Outcome::Gone { .. } => "gone",
            Outcome::Delivered(_) => "delivered",
            Outcome::RateLimited { .. } => "rate limited",
            Outcome::Retry { .. } => "retry",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Stop { .. } => "stop",
        }
    }

    const MESSAGE: &str = r#"{"id":"1300000000000000005","channel_id":"1300000000000000004","content":"x","embeds":[],"attachments":[{"id":"1300000000000000006"}]}"#;

    #[test]
    fn row_gone_an_edit_of_a_deleted_message() {
        let unknown = coded(10008, "Unknown Message");
        assert_eq!(reply_kind(&edit(None), 404, &unknown), "gone");
        assert_eq!(reply_kind(&edit(Some("7")), 404, &unknown), "gone");
        // The webhook itself gone, or a 404 page: as for a post.
        assert_eq!(
            reply_kind(&edit(None), 404, &coded(10015, "Unknown Webhook")),
            "stop"
        );
        assert_eq!(
            reply_kind(&edit(None), 404, "<html>not found</html>"),
            "stop"
        );
        assert_eq!(
            reply_kind(&edit(None), 401, &coded(50027, "Invalid Webhook Token")),
            "stop"
        );
        // Everything else reads as for a post.
        assert_eq!(
            reply_kind(&edit(None), 400, &coded(50035, "Invalid Form Body")),
            "rejected"
        );
        assert_eq!(reply_kind(&edit(None), 503, ""), "retry");
        assert_eq!(reply_kind(&edit(None), 200, MESSAGE), "delivered");
        let r = read_reply(&edit(None), 404, NONE, None, &unknown);
        match r.outcome {
            Outcome::Gone { why, .. } => assert!(
                why.starts_with("the message was deleted: HTTP 404"),
                "{why}"
            ),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn row_gone_a_thread_that_is_no_more() {
        let unknown = coded(10003, "Unknown Channel");
        let archived = coded(50083, "Operation cannot be performed on an archived thread");
        for req in [
            post_in(Some("7"), true),
            post_in(Some("7"), false),
            edit(Some("7")),
        ] {
            assert_eq!(reply_kind(&req, 400, &unknown), "gone", "{req:?}");
            assert_eq!(reply_kind(&req, 404, &unknown), "gone", "{req:?}");
            assert_eq!(reply_kind(&req, 400, &archived), "gone", "{req:?}");
        }
        // Without a thread of its own, the channel is the webhook's: stop.
        for req in [post_in(None, true), edit(None), Request::PLAIN] {
            assert_eq!(reply_kind(&req, 400, &unknown), "stop", "{req:?}");
            assert_eq!(reply_kind(&req, 400, &archived), "stop", "{req:?}");
        }
        let open = Request::Post {
            thread: Thread::Open("n".into()),
            wait: true,
        };
        assert_eq!(reply_kind(&open, 400, &unknown), "stop");
        let forum = coded(220003, "Webhooks can only create threads in forum channels");
        assert_eq!(reply_kind(&open, 400, &forum), "stop");
    }

    /// A plain post reads exactly as `classify` says, for every row.
    #[test]
    fn a_plain_post_reads_as_the_table_says() {
        let bodies = [
            String::new(),
            MESSAGE.to_string(),
            coded(10008, "Unknown Message"),
            coded(10003, "Unknown Channel"),
            coded(50083, "archived"),
            coded(40005, "too large"),
            r#"{"retry_after": 1.5}"#.to_string(),
            "<html></html>".to_string(),
        ];
        for status in [200, 204, 400, 401, 403, 404, 413, 429, 500] {
            for body in &bodies {
                let r = read_reply(&Request::PLAIN, status, NONE, None, body);
                assert_eq!(
                    r.outcome,
                    classify(status, NONE, None, body),
                    "{status} {body}"
                );
                assert_eq!(r.message, None);
            }
        }
    }

    #[test]
    fn the_message_comes_back_when_asked_for() {
        let r = read_reply(&post_in(None, true), 200, NONE, None, MESSAGE);
        assert_eq!(r.outcome, Outcome::Delivered(NONE));
        let m = r.message.unwrap();
        assert_eq!(
            (m.id.as_str(), m.channel_id.as_str()),
            ("1300000000000000005", "1300000000000000004")
        );
        assert_eq!(m.attachments, [sf("1300000000000000006")]);
        assert!(
            read_reply(&edit(None), 200, NONE, None, MESSAGE)
                .message
                .is_some()
        );
        // Not asked for, or not a message: none.
        assert_eq!(
            read_reply(&post_in(Some("4"), false), 200, NONE, None, MESSAGE).message,
            None
        );
        let r = read_reply(&post_in(None, true), 204, NONE, None, "");
        assert_eq!((r.outcome, r.message), (Outcome::Delivered(NONE), None));
        assert_eq!(
            read_reply(&post_in(None, true), 500, NONE, None, MESSAGE).message,
            None
        );
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn dry_run_prints_each_request_and_makes_up_message_ids() {
        let out = Shared::default();
        let mut dry = DryRun {
            out: Box::new(out.clone()),
            last_id: 0,
        };
        let body = payload(&serde_json::json!({"content": "card"}), &[], None);
        let t = Duration::from_secs(1);
        let plain = dry.send(&Request::PLAIN, &body, t);
        assert_eq!(
            (plain.outcome, plain.message),
            (Outcome::Delivered(RateInfo::default()), None)
        );
        let open = Request::Post {
            thread: Thread::Open("Night 1".into()),
            wait: true,
        };
        let first = dry.send(&open, &body, t).message.unwrap();
        assert_eq!(first.id, first.channel_id);
        let into = post_in(Some(first.channel_id.as_str()), true);
        let second = dry.send(&into, &body, t).message.unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(second.channel_id, first.channel_id);
        let edited = Request::Edit {
            id: second.id.clone(),
            thread: Some(first.channel_id.clone()),
        };
        assert_eq!(dry.send(&edited, &body, t).message.unwrap().id, second.id);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], serde_json::json!({"content": "card"}));
        assert_eq!(
            lines[1],
            serde_json::json!({"request": {"method": "POST", "wait": true, "thread_name": "Night 1"}, "body": {"content": "card"}})
        );
        assert_eq!(lines[2]["request"]["thread_id"], first.channel_id.as_str());
        assert_eq!(lines[3]["request"]["method"], "PATCH");
        assert_eq!(lines[3]["request"]["message_id"], second.id.as_str());
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn errors_quote_a_short_body() {
        match classify(404, NONE, None, &"x".repeat(1000)) {
            Outcome::Stop { status, why } => {
                assert_eq!(status, 404);
                assert_eq!(why.chars().count(), 301);
            }
            o => panic!("{o:?}"),
        }
        match classify(400, NONE, None, "<html>long page</html>") {
            Outcome::Retry { why } => assert_eq!(why, "HTTP 400 (HTML page)"),
            o => panic!("{o:?}"),
        }
    }
}
