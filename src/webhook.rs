//! The Discord webhook URL: parsed, checked and kept secret.
//!
//! A webhook URL carries its own credential (the token after the id), so it
//! is handled like a password: [`Webhook`] prints itself with the token
//! replaced by `****`, and [`Webhook::redact`] scrubs the token out of any
//! text (such as an HTTP library's error message) before it is logged.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "{shown:?} is not a Discord webhook URL: expected https://discord.com/api/webhooks/ID/TOKEN"
    )]
    Shape { shown: String },
    #[error(
        "{shown:?} uses http://: expected https:// (plain http is only accepted for loopback hosts)"
    )]
    Insecure { shown: String },
}

/// A validated webhook URL. `Debug` and `Display` never show the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    url: String,
    id: String,
    token: String,
}

const DISCORD_HOSTS: &[&str] = &[
    "discord.com",
    "discordapp.com",
    "ptb.discord.com",
    "canary.discord.com",
    "ptb.discordapp.com",
    "canary.discordapp.com",
];

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

impl Webhook {
    /// Accepts `https://{,ptb.,canary.}discord{,app}.com/api[/vN]/webhooks/ID/TOKEN`
    /// (an optional query string is kept) and the same path on a loopback
    /// host over http or https, which is what tests use.
    pub fn parse(raw: &str) -> Result<Webhook, WebhookError> {
        let raw = raw.trim();
        let shape = || WebhookError::Shape {
            shown: redact_guess(raw),
        };
        let (scheme, rest) = raw.split_once("://").ok_or_else(shape)?;
        let (authority, path) = rest.split_once('/').ok_or_else(shape)?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let host = host.to_ascii_lowercase();
        let loopback = is_loopback(&host);
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(WebhookError::Insecure {
                    shown: redact_guess(raw),
                });
            }
            _ => return Err(shape()),
        }
        if !loopback && !DISCORD_HOSTS.contains(&host.as_str()) {
            return Err(shape());
        }
        let path_only = path.split(['?', '#']).next().unwrap_or("");
        let mut parts = path_only.split('/').filter(|s| !s.is_empty());
        if parts.next() != Some("api") {
            return Err(shape());
        }
        let mut next = parts.next();
        if let Some(v) = next {
            if v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()) {
                next = parts.next();
            }
        }
        if next != Some("webhooks") {
            return Err(shape());
        }
        let id = parts.next().ok_or_else(shape)?;
        let token = parts.next().ok_or_else(shape)?;
        if parts.next().is_some()
            || id.is_empty()
            || !id.bytes().all(|b| b.is_ascii_digit())
            || token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(shape());
        }
        Ok(Webhook {
            url: raw.to_string(),
            id: id.to_string(),
            token: token.to_string(),
        })
    }

    /// A placeholder destination for `--dry-run` without a configured webhook.
    pub fn dry_run() -> Webhook {
        Webhook {
            url: "dry-run:".to_string(),
            id: "0".to_string(),
            token: String::new(),
        }
    }

    /// The full URL, token included: only for making the request.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the token in `text` by `****`: wherever it follows the
    /// webhook id, and, for tokens long enough not to be ordinary words
    /// (Discord's are 68 characters), wherever it appears.
    pub fn redact(&self, text: &str) -> String {
        if self.token.is_empty() {
            return text.to_string();
        }
        let out = text.replace(
            &format!("{}/{}", self.id, self.token),
            &format!("{}/****", self.id),
        );
        if self.token.len() >= 16 {
            out.replace(&self.token, "****")
        } else {
            out
        }
    }
}

/// Best effort for messages about a URL that did not parse: hide whatever
/// follows `webhooks/ID/`, and anything long after the last slash.
fn redact_guess(raw: &str) -> String {
    if let Some(i) = raw.find("/webhooks/") {
        let after = &raw[i + "/webhooks/".len()..];
        let id_end = after.find('/').map(|j| j + 1).unwrap_or(after.len());
        return format!("{}/webhooks/{}****", &raw[..i], &after[..id_end]);
    }
    // Anything else: keep the scheme and host; hide the path, the query,
    // the fragment and any user:password@ (a heartbeat URL may carry its
    // token in any of them).
    let start = raw.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &raw[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hidden = end < rest.len() || host.len() < authority.len();
    format!(
        "{}{host}{}",
        &raw[..start],
        if hidden { "/****" } else { "" }
    )
}

/// Scrubs whatever looks like a credential out of free text that is about
/// to be shown (a configuration error, a `STATUS=` line): every URL keeps
/// only its scheme and host (a webhook URL also its id), and every long run
/// of token characters mixing letters and digits (Discord's tokens are 68
/// of `[A-Za-z0-9_-]`) becomes `****`. Used where the text is not known to
/// be safe and no [`Webhook`] is at hand to redact precisely.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters (and `+.-`) just before `://`.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || "\"'`<>()[]{}|\\^".contains(c))
            .map_or(rest.len(), |j| i + j);
        // Sentence punctuation after a URL is not part of it.
        let end = i + rest[i..end]
            .trim_end_matches([':', ',', '.', ';', '!', '?'])
            .len();
        out.push_str(&rest[..start]);
        out.push_str(&redact_guess(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    redact_long_tokens(&out)
}

/// Replaces runs of at least 40 token characters that mix letters and
/// digits: too long and too random to be a word, a key or a number.
fn redact_long_tokens(text: &str) -> String {
    let is_tok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut run_start: Option<usize> = None;
    let flush = |out: &mut String, run: &str| {
        let secret = run.len() >= 40
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic());
        out.push_str(if secret { "****" } else { run });
    };
    for (i, c) in text.char_indices() {
        match (is_tok(c), run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                flush(&mut out, &text[s..i]);
                run_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(s) = run_start {
        flush(&mut out, &text[s..]);
    }
    out
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redact(&self.url))
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_discord_forms() {
        for u in [
            "https://discord.com/api/webhooks/123/abc-DEF_9",
            "https://discordapp.com/api/webhooks/123/abc",
            "https://ptb.discord.com/api/v10/webhooks/123/abc",
            "https://canary.discord.com/api/v9/webhooks/123/abc?thread_id=5",
            "http://127.0.0.1:8080/api/webhooks/123/abc",
            "http://localhost:1/api/webhooks/1/t",
            "http://[::1]:99/api/webhooks/1/t",
        ] {
            let w = Webhook::parse(u).unwrap_or_else(|e| panic!("{u}: {e}"));
            assert!(!w.to_string().contains("abc") || w.token != "abc", "{w}");
        }
    }

    #[test]
    fn rejects_other_forms_without_leaking_the_token() {
        for u in [
            "http://discord.com/api/webhooks/123/s3cr3t",
            "https://example.com/api/webhooks/123/s3cr3t",
            "https://discord.com/webhooks/123/s3cr3t",
            "https://discord.com/api/webhooks/abc/s3cr3t",
            "discord.com/api/webhooks/123/s3cr3t",
            "",
        ] {
            let e = Webhook::parse(u).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn display_and_debug_hide_the_token() {
        let w = Webhook::parse("https://discord.com/api/webhooks/123/s3cr3t").unwrap();
        assert_eq!(w.to_string(), "https://discord.com/api/webhooks/123/****");
        assert!(!format!("{w:?}").contains("s3cr3t"));
        assert_eq!(
            w.redact("error: https://x/123/s3cr3t: boom"),
            "error: https://x/123/****: boom"
        );
    }

    const TOKEN68: &str = "aB3dEfGh1jKlMnOpQrStUvWxYz0123456789-_aB3dEfGh1jKlMnOpQrStUvWxYz0123";

    /// A heartbeat URL (healthchecks.io, Uptime Kuma) may carry its secret
    /// in the path, the query or user:password@; only scheme and host stay.
    #[test]
    fn redact_guess_keeps_only_scheme_and_host() {
        for (raw, want) in [
            ("https://hc-ping.com/abc-secret", "https://hc-ping.com/****"),
            ("https://kuma.lan?token=secret", "https://kuma.lan/****"),
            ("https://kuma.lan#secret", "https://kuma.lan/****"),
            ("https://user:secret@kuma.lan", "https://kuma.lan/****"),
            (
                "https://user:secret@kuma.lan/api/push/x",
                "https://kuma.lan/****",
            ),
            ("http://kuma.lan:3001", "http://kuma.lan:3001"),
        ] {
            assert_eq!(redact_guess(raw), want, "{raw}");
            assert!(!redact_secrets(&format!("x {raw} y")).contains("secret"));
        }
    }

    #[test]
    fn redact_secrets_hides_urls_and_long_tokens() {
        assert_eq!(TOKEN68.len(), 68);
        let url = format!("https://discord.com/api/webhooks/123456789012345678/{TOKEN68}");
        for text in [
            format!("value \"{url}\" is bad"),
            format!("{url}?thread_id=5"),
            format!("a = '{url}'"),
            format!("token {TOKEN68} alone"),
            format!("x={TOKEN68}"),
            format!("http://example.com/path/{TOKEN68}"),
        ] {
            let r = redact_secrets(&text);
            assert!(!r.contains(TOKEN68), "{r}");
            assert!(!r.contains(&TOKEN68[..20]), "{r}");
        }
        assert_eq!(
            redact_secrets(&format!("bad: \"{url}\"!")),
            "bad: \"https://discord.com/api/webhooks/123456789012345678/****\"!"
        );
        // Ordinary words, keys, numbers and paths are kept.
        let plain = "BATCH_SIZE = \"ten\": expected a whole number, see /etc/ekos-log-monitor/config.toml line 12";
        assert_eq!(redact_secrets(plain), plain);
    }
}
