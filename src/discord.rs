//! Talking to Discord: one POST, and what its answer means for the caller.
//!
//! [`Client::post`] sends one JSON body to the webhook and classifies the
//! answer into an [`Outcome`] the sender loop can act on without knowing
//! HTTP: delivered (with the rate-limit bucket's state from the
//! `X-RateLimit-*` headers), rate limited (with how long to wait, taken from
//! the JSON `retry_after`, `Retry-After`, or at least 60 s for a
//! Cloudflare-style 429 with neither), worth retrying (5xx, timeouts,
//! connection errors), rejected (400/413: never resend the same body), or
//! gone (401/403/404: the webhook was deleted or its token is wrong). Every
//! error text is passed through [`Webhook::redact`], because HTTP libraries
//! like to quote the URL, and the URL holds the token.

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

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered(RateInfo),
    RateLimited {
        wait: Duration,
        info: RateInfo,
        cloudflare: bool,
    },
    Retry {
        why: String,
    },
    Rejected {
        status: u16,
        why: String,
    },
    Gone {
        status: u16,
        why: String,
    },
}

/// Where messages go: Discord, or stdout in dry-run mode.
pub trait Sink: Send {
    fn post(&mut self, payload: &Payload, timeout: Duration) -> Outcome;
    /// The destination for log messages (token redacted).
    fn describe(&self) -> String;
    /// Called before the sender waits: buffered output goes out now.
    fn idle(&mut self) {}
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

/// Classifies an HTTP answer; `body` is the answer's text (maybe empty).
pub fn classify(
    status: u16,
    info: RateInfo,
    retry_after_header: Option<Duration>,
    body: &str,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered(info),
        429 => {
            let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
            let from_body = json
                .as_ref()
                .and_then(|j| j.get("retry_after"))
                .and_then(|v| v.as_f64())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0)));
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
                wait: wait.min(Duration::from_secs(3600)),
                info,
                cloudflare,
            }
        }
        401 | 403 | 404 => Outcome::Gone {
            status,
            why: short(body),
        },
        400..=499 => Outcome::Rejected {
            status,
            why: short(body),
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
                let text = if status < 300 {
                    String::new()
                } else {
                    resp.body_mut()
                        .with_config()
                        .limit(64 * 1024)
                        .read_to_string()
                        .unwrap_or_default()
                };
                let mut out = classify(status, info, retry_after, &text);
                if let Outcome::Rejected { why, .. }
                | Outcome::Gone { why, .. }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_discord() {
        let none = RateInfo::default();
        assert!(matches!(
            classify(204, none, None, ""),
            Outcome::Delivered(_)
        ));
        let hdr = RateInfo {
            remaining: Some(0),
            reset_after: Some(Duration::from_millis(1500)),
        };
        match classify(
            429,
            hdr,
            Some(Duration::from_secs(2)),
            r#"{"retry_after": 0.75, "global": false}"#,
        ) {
            Outcome::RateLimited {
                wait, cloudflare, ..
            } => {
                assert_eq!(wait, Duration::from_millis(750));
                assert!(!cloudflare);
            }
            o => panic!("{o:?}"),
        }
        match classify(429, none, None, "<html>error 1015</html>") {
            Outcome::RateLimited {
                wait, cloudflare, ..
            } => {
                assert!(cloudflare);
                assert!(wait >= CLOUDFLARE_WAIT);
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            classify(404, none, None, "{}"),
            Outcome::Gone { .. }
        ));
        assert!(matches!(
            classify(400, none, None, "{}"),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(413, none, None, ""),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(502, none, None, ""),
            Outcome::Retry { .. }
        ));
    }
}
