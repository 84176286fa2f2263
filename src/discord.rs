//! Talking to Discord: one POST, and what its answer means for the caller.
//!
//! [`Client::post`] sends one JSON body to the webhook and [`classify`]
//! turns the answer into an [`Outcome`] the sender acts on without knowing
//! HTTP. Every answer has exactly one outcome, decided by this table (the
//! README repeats it); the unit tests below check every row:
//!
//! | Discord's answer | Outcome | What the sender does |
//! |---|---|---|
//! | 2xx | `Delivered` | commit the lines; if `X-RateLimit-Remaining` is 0, wait `X-RateLimit-Reset-After` |
//! | 2xx whose body is not JSON (a captive portal's or proxy's page: Discord answers 204) | `Retry` | as for 5xx |
//! | 429 | `RateLimited` | wait the JSON `retry_after`, else `Retry-After`, else the bucket's reset; at least 60 s for a 429 with neither (Cloudflare's ban page) |
//! | 5xx, 408, 425, a timeout, a connection or DNS error | `Retry` | send the same body again, backoff 1 s doubling to 5 min, with jitter |
//! | 413; a 4xx whose JSON names a size limit: code 40005 or 50045, a 50035 error `BASE_TYPE_MAX_LENGTH`, `BASE_TYPE_BAD_LENGTH` or `MAX_EMBED_SIZE_EXCEEDED`, or a message "… too large" | `Rejected` | split the message in halves; a single line is posted again as a `.log` attachment (`Message::fallback`) |
//! | a 4xx whose JSON names this body's content: 50035 on a field we send (`content`, `embeds`, `files`, `attachments`, `allowed_mentions`, `username`, `payload_json`), 50006 (empty message), 50109 (invalid JSON), 200000/200001 (AutoMod), 240000 (harmful link), 20009 (explicit content) | `Rejected` | as above |
//! | 401, 403, 404; a 4xx that no smaller body can fix: 220001–220004 (forum channel webhook without `thread_name`…), 40058, 40067, 50008, 50024, 50083 (channel type, archived thread), 10003, 10015, 50001, 50013, 50027 (unknown channel or webhook, missing access, bad token), a 50035 error only on fields we never send (`thread_name`…) | `Stop` | keep the message; the route stops and tries again every 10 min; logged once |
//! | any other 4xx (400, 409, 422… whose JSON names neither size nor content, or a proxy's HTML page), 3xx | `Retry` | as for 5xx: nothing in the body is to blame, so it is never split or changed |
//!
//! Only `Rejected` ever changes what is posted, and only down to a single
//! line posted as an attachment: a line is never skipped. Every error text
//! is passed through [`Webhook::redact`], because HTTP libraries like to
//! quote the URL, and the URL holds the token.

use std::io::Write;
use std::time::Duration;

use crate::format::Payload;
use crate::webhook::Webhook;

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
}

/// Where messages go: Discord, or stdout in dry-run mode.
pub trait Sink: Send {
    fn post(&mut self, payload: &Payload, timeout: Duration) -> Outcome;
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

impl Sink for Client {
    fn post(&mut self, payload: &Payload, timeout: Duration) -> Outcome {
        let result = self
            .agent
            .post(self.webhook.url())
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", &payload.content_type)
            .send(&payload.body[..]);
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let info = rate_info(&resp);
                let retry_after = header(&resp, "retry-after").and_then(secs);
                // A 2xx body is read too (Discord's is empty): a page in
                // it means the POST never reached Discord; see `classify`.
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                let mut out = classify(status, info, retry_after, &text);
                if let Outcome::Rejected { why, .. }
                | Outcome::Stop { why, .. }
                | Outcome::Retry { why } = &mut out
                {
                    *why = self.webhook.redact(why);
                }
                out
            }
            Err(e) => Outcome::Retry {
                why: self.webhook.redact(&describe_error(&e)),
            },
        }
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
        }
    }
}

impl Sink for DryRun {
    fn post(&mut self, payload: &Payload, _timeout: Duration) -> Outcome {
        let ok = self
            .out
            .write_all(&payload.printable)
            .and_then(|_| self.out.write_all(b"\n"));
        match ok {
            Ok(()) => Outcome::Delivered(RateInfo::default()),
            Err(e) => Outcome::Retry {
                why: format!("cannot write to stdout: {e}"),
            },
        }
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
        }
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
