//! Notices: the messages the daemon writes itself (a silence alert, an
//! incident and its edits, the night card), as opposed to the log lines it
//! forwards.
//!
//! A [`Notice`] names its route (webhook), a key and a [`Policy`] that says
//! whether it is a new message or the newest version of the message kept
//! under that key. Producers (the night watch, the night card) build them
//! with the pure helpers here ([`Alert::body`], [`context_file`]) and hand
//! them to the sender's notice lane, which owns delivery: edits, rate
//! limits, retries and the key → message id table (see
//! `sender::notices`). Every body built here keeps within Discord's limits
//! ([`crate::limits`]), because a refused notice cannot be split like lines.

use std::time::Duration;

use crate::discord::NewFile;
use crate::ekos::{Mention, Severity};
use crate::limits;

/// A message the daemon writes itself, for the sender's notice lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Index of the webhook (see `Config::webhooks`).
    pub route: usize,
    /// What the message is about (`incident/guide-star-lost/…`): later
    /// notices with the same key edit the same message.
    pub key: String,
    /// The message JSON: `content`, `embeds`, `allowed_mentions`.
    pub body: serde_json::Value,
    /// Files attached to the message (posted with it; an edit without
    /// files keeps the attachments already there).
    pub files: Vec<NewFile>,
    pub policy: Policy,
}

/// How a notice relates to the message kept under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Always a new message.
    New,
    /// Edit the message last posted under the key (post it if there is
    /// none, or it was deleted), at most once per `min_interval`; the
    /// newest body wins and the last one is never lost.
    Upsert { min_interval: Duration },
    /// Like `Upsert`, but sent at once, ignoring the interval; the key is
    /// then closed (a later notice under it posts a new message).
    Final,
}

/// Green, for a resolved incident or a log that is writing again.
pub const RESOLVED_COLOR: u32 = 0x2ECC71;

/// An alert embed, built into a message body by [`Alert::body`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Alert {
    pub title: String,
    pub description: String,
    /// Embed colour (see [`Severity::color`], [`RESOLVED_COLOR`]).
    pub color: u32,
    /// Inline fields: name and value.
    pub fields: Vec<(String, String)>,
    pub footer: Option<String>,
    /// Who is pinged: only on the first post; an edit never pings again.
    pub mention: Option<Mention>,
}

impl Alert {
    pub fn new(title: impl Into<String>, severity: Severity) -> Alert {
        Alert {
            title: title.into(),
            color: severity.color(),
            ..Alert::default()
        }
    }

    pub fn field(mut self, name: &str, value: impl Into<String>) -> Alert {
        self.fields.push((name.to_string(), value.into()));
        self
    }

    /// The message JSON, every field capped to Discord's limits (the total
    /// too: the description gives way first). Pings nobody but the
    /// mention, and nobody at all without one.
    pub fn body(&self) -> serde_json::Value {
        let title = limits::cap(&self.title, limits::TITLE).into_owned();
        let footer = self
            .footer
            .as_deref()
            .map(|f| limits::cap(f, 256).into_owned());
        // Discord counts title, footer, fields and description together:
        // the fields fit in what title and footer leave, the description
        // takes the rest.
        let mut room = limits::EMBED_TOTAL
            - limits::chars(&title)
            - footer.as_deref().map_or(0, limits::chars);
        let mut fields: Vec<(String, String)> = Vec::new();
        for (n, v) in self.fields.iter().take(limits::FIELDS) {
            let v = if v.trim().is_empty() { "-" } else { v };
            let n = limits::cap(n, limits::FIELD_NAME.min(room / 2)).into_owned();
            let left = room - limits::chars(&n);
            if n.is_empty() || left < 2 {
                break;
            }
            let v = limits::cap(v, limits::FIELD_VALUE.min(left)).into_owned();
            room = left - limits::chars(&v);
            fields.push((n, v));
        }
        let room = room.min(limits::DESCRIPTION);
        let description = limits::cap(&self.description, room).into_owned();
        let mut embed = serde_json::json!({
            "title": title,
            "color": self.color,
        });
        if !description.is_empty() {
            embed["description"] = description.into();
        }
        if !fields.is_empty() {
            embed["fields"] = fields
                .into_iter()
                .map(|(n, v)| serde_json::json!({ "name": n, "value": v, "inline": true }))
                .collect::<Vec<_>>()
                .into();
        }
        if let Some(f) = footer {
            embed["footer"] = serde_json::json!({ "text": f });
        }
        let mut body = serde_json::json!({
            "embeds": [embed],
            "allowed_mentions": Mention::allowed_mentions(self.mention.as_ref()),
        });
        if let Some(m) = &self.mention {
            body["content"] = m.to_string().into();
        }
        body
    }
}

/// A code block for an embed description: `text` with its fences broken,
/// capped to `max` code points in all.
pub fn quoted_line(text: &str, max: usize) -> String {
    let inner = crate::format::escape_fence(text);
    let inner = limits::cap(&inner, max.saturating_sub(8));
    format!("```\n{inner}\n```")
}

/// The `.log` attachment of an alert: `lines` (the context before it, and
/// the line itself last), cut from the front to fit Discord's file limit.
/// `name` is the followed file's name; the attachment is `<name>.log`
/// unless it already ends so.
pub fn context_file<'a>(name: &str, lines: impl IntoIterator<Item = &'a str>) -> NewFile {
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    if data.len() > limits::FILE_BYTES {
        // The end (the lines nearest the alert) is what matters.
        let cut = data.len() - limits::FILE_BYTES;
        let start = data[cut..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(cut, |p| cut + p + 1);
        data.drain(..start);
    }
    let base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let base = if base.is_empty() {
        "context".into()
    } else {
        base
    };
    let name = if base.ends_with(".log") {
        base
    } else {
        format!("{base}.log")
    };
    NewFile { name, data }
}

/// A duration for people: `45 s`, `14 min`, `2 h 5 min`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 3600 * 2 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_body_stays_within_discords_limits_and_pings_only_its_mention() {
        let long = "x".repeat(20_000);
        let a = Alert {
            title: long.clone(),
            description: long.clone(),
            color: Severity::Error.color(),
            fields: (0..40).map(|i| (format!("f{i}"), long.clone())).collect(),
            footer: Some(long.clone()),
            mention: None,
        };
        let body = a.body();
        limits::check(&body).unwrap();
        assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
        assert!(body.get("content").is_none());
        let pinged = Alert::new("Driver crashed", Severity::Critical);
        let pinged = Alert {
            mention: Some(Mention::Role(42)),
            ..pinged
        };
        let body = pinged.body();
        limits::check(&body).unwrap();
        assert_eq!(body["content"], "<@&42>");
        assert_eq!(body["allowed_mentions"]["roles"], serde_json::json!(["42"]));
        assert_eq!(body["embeds"][0]["color"], Severity::Critical.color());
    }

    #[test]
    fn an_empty_field_value_is_a_dash_as_discord_refuses_empty_ones() {
        let body = Alert::new("t", Severity::Warning)
            .field("Filter", "")
            .body();
        assert_eq!(body["embeds"][0]["fields"][0]["value"], "-");
    }

    #[test]
    fn a_context_file_keeps_the_end_and_is_named_log() {
        let f = context_file("log_21-30-00.txt", ["a", "b", "c"]);
        assert_eq!(f.name, "log_21-30-00.txt.log");
        assert_eq!(f.data, b"a\nb\nc\n");
        assert_eq!(context_file("x y/z.log", ["a"]).name, "x_y_z.log");
        let big = "y".repeat(1024 * 1024);
        let lines: Vec<&str> = std::iter::repeat_n(big.as_str(), 9)
            .chain(["last"])
            .collect();
        let f = context_file("big", lines);
        assert!(f.data.len() <= limits::FILE_BYTES);
        assert!(f.data.ends_with(b"last\n"));
        assert!(f.data.starts_with(b"y"), "cut at a line start");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_secs(14 * 60 + 10)), "14 min");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 5 * 60)), "3 h 5 min");
    }

    #[test]
    fn a_quoted_line_cannot_close_its_block_early() {
        let q = quoted_line("a ``` b", 100);
        assert!(q.starts_with("```\n") && q.ends_with("\n```"));
        assert_eq!(q.matches("```").count(), 2);
        assert!(limits::chars(&quoted_line(&"z".repeat(5000), 300)) <= 300);
    }
}
