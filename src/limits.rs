//! Discord's limits on a webhook message, in one place.
//!
//! Discord refuses a whole request when one field is too long, so a message
//! that breaks a limit is not "mostly delivered": it is a 400 that no retry
//! can fix. Every renderer (code blocks in `content`, event embeds, the
//! summary of an attachment) takes its sizes from here and caps its fields
//! with [`cap`]; the packer keeps a message's embeds within [`EMBED_TOTAL`]
//! by starting a new message instead. [`check`] validates a finished JSON
//! body against every rule at once: the tests run it over random input and
//! debug builds run it on every payload before it is sent.
//!
//! Lengths are counted in Unicode code points, as Discord counts them for
//! the text we send (no combining-sequence tricks here).

use std::borrow::Cow;
use std::time::Duration;

/// `content`.
pub const CONTENT: usize = 2000;
/// `username` (we do not set it, but a check must know it).
pub const USERNAME: usize = 80;
/// Embeds per message.
pub const EMBEDS: usize = 10;
/// Characters of title, description, field names and values, footer text
/// and author name, summed over all embeds of one message.
pub const EMBED_TOTAL: usize = 6000;
pub const TITLE: usize = 256;
pub const DESCRIPTION: usize = 4096;
pub const FOOTER: usize = 2048;
pub const AUTHOR: usize = 256;
pub const FIELDS: usize = 25;
pub const FIELD_NAME: usize = 256;
pub const FIELD_VALUE: usize = 1024;
/// The largest attachment we build. Discord's default cap is 10 MiB per
/// request; 8 MiB leaves room for the multipart framing and old servers'
/// 8 MiB limit.
pub const FILE_BYTES: usize = 8 * 1024 * 1024;
/// Discord's per-webhook bucket: this many requests per [`BUCKET_WINDOW`].
pub const BUCKET_REQUESTS: u32 = 5;
pub const BUCKET_WINDOW: Duration = Duration::from_secs(2);

/// The shortest average gap between two requests to one webhook: the
/// configured delay or Discord's bucket, whichever is slower.
pub fn min_gap(rate_limit_delay: Duration) -> Duration {
    rate_limit_delay.max(BUCKET_WINDOW / BUCKET_REQUESTS)
}

/// Length as Discord counts it.
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` shortened to at most `max` code points; a shortened text ends with
/// `…` so that the cut is visible.
pub fn cap(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some(_) if max == 0 => Cow::Borrowed(""),
        Some(_) => {
            let end = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &s[..end]))
        }
    }
}

/// A rule a message body breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} has {len} characters, more than {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{len} {what}, more than {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the embeds hold {0} characters in total, more than {EMBED_TOTAL}")]
    EmbedTotal(usize),
    #[error("attachment {name} has {size} bytes, more than {FILE_BYTES}")]
    FileTooLarge { name: String, size: usize },
    #[error("the message has no content, embed or file")]
    Empty,
    #[error("{0} is not a string")]
    NotText(String),
}

/// Checks a message body (the JSON of a plain request, or the
/// `payload_json` of an upload, optionally with a `files` list of
/// `{name, size}` as in a dry run's printable form) against every limit.
pub fn check(msg: &serde_json::Value) -> Result<(), LimitError> {
    let text = |v: &serde_json::Value, field: &str, max: usize| -> Result<usize, LimitError> {
        match v {
            serde_json::Value::Null => Ok(0),
            serde_json::Value::String(s) => {
                let len = chars(s);
                if len > max {
                    return Err(LimitError::TooLong {
                        field: field.to_string(),
                        len,
                        max,
                    });
                }
                Ok(len)
            }
            _ => Err(LimitError::NotText(field.to_string())),
        }
    };
    let content = text(&msg["content"], "content", CONTENT)?;
    text(&msg["username"], "username", USERNAME)?;
    let none = Vec::new();
    let embeds = msg["embeds"].as_array().unwrap_or(&none);
    if embeds.len() > EMBEDS {
        return Err(LimitError::TooMany {
            what: "embeds",
            len: embeds.len(),
            max: EMBEDS,
        });
    }
    let mut total = 0;
    for (i, e) in embeds.iter().enumerate() {
        total += text(&e["title"], &format!("embed {i} title"), TITLE)?;
        total += text(
            &e["description"],
            &format!("embed {i} description"),
            DESCRIPTION,
        )?;
        total += text(&e["footer"]["text"], &format!("embed {i} footer"), FOOTER)?;
        total += text(&e["author"]["name"], &format!("embed {i} author"), AUTHOR)?;
        let fields = e["fields"].as_array().unwrap_or(&none);
        if fields.len() > FIELDS {
            return Err(LimitError::TooMany {
                what: "fields",
                len: fields.len(),
                max: FIELDS,
            });
        }
        for (j, f) in fields.iter().enumerate() {
            total += text(&f["name"], &format!("embed {i} field {j} name"), FIELD_NAME)?;
            total += text(
                &f["value"],
                &format!("embed {i} field {j} value"),
                FIELD_VALUE,
            )?;
        }
    }
    if total > EMBED_TOTAL {
        return Err(LimitError::EmbedTotal(total));
    }
    let files = msg["files"].as_array().unwrap_or(&none);
    for f in files {
        let size = f["size"].as_u64().unwrap_or(0) as usize;
        if size > FILE_BYTES {
            return Err(LimitError::FileTooLarge {
                name: f["name"].as_str().unwrap_or("").to_string(),
                size,
            });
        }
    }
    let attachments = msg["attachments"].as_array().map_or(0, Vec::len);
    if content == 0 && embeds.is_empty() && files.is_empty() && attachments == 0 {
        return Err(LimitError::Empty);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cap_counts_code_points_and_marks_the_cut() {
        assert_eq!(cap("abc", 3), "abc");
        assert_eq!(cap("abcd", 3), "ab…");
        assert_eq!(chars(&cap(&"é".repeat(300), TITLE)), TITLE);
        assert_eq!(cap("", 0), "");
        assert_eq!(cap("ab", 0), "");
    }

    #[test]
    fn the_gap_is_the_slower_of_the_setting_and_the_bucket() {
        assert_eq!(min_gap(Duration::ZERO), Duration::from_millis(400));
        assert_eq!(min_gap(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn check_finds_each_broken_rule() {
        let ok = json!({"content": "x".repeat(CONTENT)});
        assert_eq!(check(&ok), Ok(()));
        assert!(matches!(
            check(&json!({"content": "x".repeat(CONTENT + 1)})),
            Err(LimitError::TooLong { .. })
        ));
        assert_eq!(check(&json!({"content": ""})), Err(LimitError::Empty));
        let embed = |d: usize, f: usize| json!({"title": "t", "description": "d".repeat(d), "footer": {"text": "f".repeat(f)}});
        assert_eq!(check(&json!({"embeds": [embed(4096, 1000)]})), Ok(()));
        assert!(matches!(
            check(&json!({"embeds": [embed(4097, 0)]})),
            Err(LimitError::TooLong { .. })
        ));
        assert!(matches!(
            check(&json!({"embeds": [embed(10, 2049)]})),
            Err(LimitError::TooLong { .. })
        ));
        assert_eq!(
            check(&json!({"embeds": [embed(4000, 1000), embed(1000, 0)]})),
            Err(LimitError::EmbedTotal(6002))
        );
        let eleven: Vec<_> = (0..11).map(|_| embed(1, 1)).collect();
        assert!(matches!(
            check(&json!({ "embeds": eleven })),
            Err(LimitError::TooMany { what: "embeds", .. })
        ));
        let fields: Vec<_> = (0..26)
            .map(|_| json!({"name": "n", "value": "v"}))
            .collect();
        assert!(matches!(
            check(&json!({"embeds": [{"fields": fields}]})),
            Err(LimitError::TooMany { what: "fields", .. })
        ));
        assert!(matches!(
            check(&json!({"embeds": [{"fields": [{"name": "n", "value": "v".repeat(1025)}]}]})),
            Err(LimitError::TooLong { .. })
        ));
        assert!(matches!(
            check(&json!({"content": "x", "username": "u".repeat(81)})),
            Err(LimitError::TooLong { .. })
        ));
        assert!(matches!(
            check(&json!({"content": "x", "files": [{"name": "a.log", "size": FILE_BYTES + 1}]})),
            Err(LimitError::FileTooLarge { .. })
        ));
        assert_eq!(
            check(&json!({"attachments": [{"id": 0, "filename": "a.log"}]})),
            Ok(())
        );
    }
}
