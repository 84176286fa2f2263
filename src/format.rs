//! Pure text handling between a file's bytes and a Discord message.
//!
//! Log files hold whatever programs wrote: invalid UTF-8, NUL bytes, colour
//! escapes, CRLF line ends, triple backticks, `@everyone`. [`sanitize`] turns
//! a raw line into text that displays as written (control characters become
//! their visible Unicode "control pictures"), and [`escape_fence`] keeps a
//! line from closing the code block it is shown in. [`Message`] renders the
//! packed lines into `content` and the JSON body, always with
//! `allowed_mentions` set so that nothing in a log line can ping anyone.

use std::borrow::Cow;
use std::sync::Arc;

use crate::checkpoint::FileId;
use crate::ekos::{self, Filter, Mention, Rules, Severity};

/// Discord's limit on `content`, in Unicode code points.
pub const CONTENT_LIMIT: usize = 2000;

const FENCE_OPEN: &str = "```\n";
const FENCE_CLOSE: &str = "\n```";
const ZWSP: char = '\u{200b}';

/// Makes one raw line (without its `\n`) displayable: invalid UTF-8 becomes
/// U+FFFD, a trailing `\r` is dropped, and C0 controls other than tab, and
/// DEL, become the matching symbols of the Control Pictures block (NUL is
/// shown as `␀`), so they neither vanish nor upset a client.
pub fn sanitize(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    // Most log lines are printable ASCII: one scan, one copy.
    // (A fold without early exit, which the compiler vectorizes.)
    let special = raw.iter().fold(false, |acc, &b| {
        acc | ((b < 0x20 && b != b'\t') || b >= 0x7f)
    });
    if !special {
        return String::from_utf8(raw.to_vec()).expect("ASCII is UTF-8");
    }
    let text = String::from_utf8_lossy(raw);
    if !text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return text.into_owned();
    }
    text.chars()
        .map(|c| match c {
            '\t' => c,
            '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
            '\u{7f}' => '\u{2421}',
            _ => c,
        })
        .collect()
}

/// Inserts a zero-width space between adjacent backticks, so a log line can
/// never contain the ```` ``` ```` that would end its code block.
pub fn escape_fence(text: &str) -> Cow<'_, str> {
    if !text.contains("``") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut prev_tick = false;
    for c in text.chars() {
        if c == '`' && prev_tick {
            out.push(ZWSP);
        }
        prev_tick = c == '`';
        out.push(c);
    }
    Cow::Owned(out)
}

/// The header line naming the file a group of lines came from. Backticks
/// in a file name are replaced so the header stays one inline code span.
pub fn header(label: &str) -> String {
    // A very deep path is shortened from the left: a header must leave
    // room for lines in a 2000-code-point message.
    let n = label.chars().count();
    let label: String = if n > 200 {
        std::iter::once('…')
            .chain(label.chars().skip(n - 199))
            .collect()
    } else {
        label.to_string()
    };
    format!("`{}`\n", label.replace('`', "'"))
}

/// Whether a source's notable lines become embeds, and whether its other
/// lines are posted at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// Every line in code blocks, no embeds.
    Off,
    /// Notable lines as embeds, the others in code blocks (the default).
    On,
    /// Only notable lines, as embeds.
    Only,
}

/// A notable line, shown as an embed coloured by severity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPart {
    pub severity: Severity,
    pub title: String,
    /// Module and time, when the line had them.
    pub footer: Option<String>,
    pub mention: Option<Mention>,
}

/// Longest line shown as an embed description; a longer notable line is
/// posted as an ordinary line rather than cut.
pub const EMBED_TEXT_MAX: usize = 3900;
const EMBEDS_PER_MESSAGE: usize = 10;
const EMBED_TOTAL_MAX: usize = 6000;

/// Decides how one line is posted: `None` drops it (filtered out, or an
/// ordinary line in events-only mode), `Some(None)` is an ordinary line,
/// `Some(Some(e))` an event.
pub fn classify_line(
    rules: &Rules,
    filter: &Filter,
    mode: EventMode,
    text: &str,
) -> Option<Option<EventPart>> {
    let rec = ekos::parse(text);
    let ev = if mode == EventMode::Off {
        None
    } else {
        rules.classify(&rec)
    };
    if !filter.keep_with_event(&rec, ev.as_ref()) {
        return None;
    }
    match ev {
        Some(e) if text.chars().count() <= EMBED_TEXT_MAX => {
            // The severity is spelled out too, not only shown as a colour.
            let mut footer = e.severity.as_str().to_string();
            for part in [rec.module, rec.time].into_iter().flatten() {
                footer.push_str(" · ");
                footer.push_str(part);
            }
            let footer = Some(footer);
            Some(Some(EventPart {
                severity: e.severity,
                title: e.title.chars().take(250).collect(),
                footer,
                mention: e.mention,
            }))
        }
        // Notable but too long for an embed: posted as an ordinary line,
        // even in events-only mode, rather than cut or dropped.
        Some(_) => Some(None),
        None if mode == EventMode::Only => None,
        None => Some(None),
    }
}

/// One line (or one piece of a line too long for a message) in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub label: Option<Arc<str>>,
    /// Already sanitized and fence-escaped.
    pub text: String,
    /// Set when the line is notable: it is shown as an embed.
    pub event: Option<Box<EventPart>>,
    /// Set on the part that ends a line: once Discord accepted it, the file
    /// is delivered up to this offset.
    pub commit: Option<(FileId, u64)>,
}

/// What one request carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub parts: Vec<Part>,
    /// Post the lines as one attached `.log` file with a one-line summary
    /// instead of code blocks (a burst too big for a few messages).
    pub as_file: bool,
}

/// The largest attachment built; Discord accepts 10 MiB per file.
pub const FILE_MAX: usize = 8 * 1024 * 1024;

/// A request body ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub content_type: String,
    pub body: Vec<u8>,
    /// One JSON line describing exactly what is posted, for `--dry-run`:
    /// the JSON body itself, or for an upload its `payload_json` plus the
    /// attached files' names and sizes.
    pub printable: Vec<u8>,
}

impl Message {
    /// Code points that `parts` occupy once rendered; see [`Message::content`].
    pub fn cost_of_adding(&self, label: &Option<Arc<str>>, cp: usize) -> usize {
        match self.parts.last() {
            Some(last) if &last.label == label => cp + 1,
            Some(_) => cp + 1 + group_overhead(label),
            None => cp + group_overhead(label),
        }
    }

    /// The `content` field: groups of consecutive lines from the same file,
    /// each group a code block under an optional header.
    pub fn content(&self) -> String {
        if self.as_file {
            return self.file_summary();
        }
        let mut out = String::new();
        for m in self.mentions() {
            out.push_str(&m.to_string());
            out.push(' ');
        }
        let lines: Vec<&Part> = self.parts.iter().filter(|p| p.event.is_none()).collect();
        let mut i = 0;
        while i < lines.len() {
            let label = &lines[i].label;
            if i > 0 || !out.is_empty() {
                out.push('\n');
            }
            if let Some(l) = label {
                out.push_str(&header(l));
            }
            out.push_str(FENCE_OPEN);
            let mut first = true;
            while i < lines.len() && &lines[i].label == label {
                if !first {
                    out.push('\n');
                }
                out.push_str(&lines[i].text);
                first = false;
                i += 1;
            }
            out.push_str(FENCE_CLOSE);
        }
        out
    }

    /// The JSON request body. `allowed_mentions.parse = []` disables every
    /// ping, whatever the text contains.
    pub fn body(&self) -> Vec<u8> {
        let plain = !self.as_file && self.parts.iter().all(|p| p.event.is_none());
        if plain {
            // The common case, lines only: no JSON tree, one escaping pass.
            let content = self.content();
            let mut out = Vec::with_capacity(content.len() + 96);
            out.extend_from_slice(
                br#"{"allowed_mentions":{"parse":[],"roles":[],"users":[]},"content":"#,
            );
            json_string(&mut out, &content);
            out.push(b'}');
            return out;
        }
        let mentions = self.mentions();
        let mut v = serde_json::json!({
            "allowed_mentions": ekos::Mention::allowed_mentions(mentions.first()),
        });
        let content = self.content();
        if !content.is_empty() {
            v["content"] = content.into();
        }
        let embeds: Vec<serde_json::Value> = if self.as_file {
            Vec::new()
        } else {
            self.parts.iter().filter_map(embed).collect()
        };
        if !embeds.is_empty() {
            v["embeds"] = embeds.into();
        }
        serde_json::to_vec(&v).expect("a JSON value always serializes")
    }

    /// The request: JSON, or multipart with `payload_json` and `files[0]`
    /// when the lines go as an attachment.
    pub fn payload(&self) -> Payload {
        let json = self.body();
        if !self.as_file {
            return Payload {
                content_type: "application/json".into(),
                printable: json.clone(),
                body: json,
            };
        }
        let (name, data) = self.file();
        let mut meta: serde_json::Value = serde_json::from_slice(&json).expect("own JSON");
        meta["attachments"] = serde_json::json!([{ "id": 0, "filename": name }]);
        let payload_json = serde_json::to_vec(&meta).expect("JSON");
        // A boundary that cannot occur in the data (checked, then varied).
        let mut boundary = format!(
            "ekos-log-monitor-{:016x}",
            crate::checkpoint::fingerprint(&data)
        );
        while data
            .windows(boundary.len())
            .any(|w| w == boundary.as_bytes())
        {
            boundary.push('x');
        }
        let mut body = Vec::with_capacity(data.len() + payload_json.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&payload_json);
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"{name}\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        meta["files"] = serde_json::json!([{ "name": name, "size": data.len() }]);
        Payload {
            content_type: format!("multipart/form-data; boundary={boundary}"),
            body,
            printable: serde_json::to_vec(&meta).expect("JSON"),
        }
    }

    /// The attached file: the lines as written (fence escaping undone),
    /// with a `==> file <==` header where the file changes, like `tail`.
    fn file(&self) -> (String, Vec<u8>) {
        let mut data = String::new();
        let mut label: Option<&Arc<str>> = None;
        for (i, p) in self.parts.iter().enumerate() {
            if p.label.as_ref() != label || (i == 0 && p.label.is_some()) {
                if let Some(l) = &p.label {
                    data.push_str(&format!("==> {l} <==\n"));
                }
                label = p.label.as_ref();
            }
            data.push_str(
                &p.text
                    .replace("`\u{200b}`", "``")
                    .replace("`\u{200b}`", "``"),
            );
            // A piece of a long line continues on the same line.
            if p.commit.is_some() {
                data.push('\n');
            }
        }
        let base: String = match self.parts.first().and_then(|p| p.label.as_deref()) {
            Some(l) => l
                .rsplit('/')
                .next()
                .unwrap_or(l)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
            None => "ekos".to_string(),
        };
        let name = if base.ends_with(".log") {
            base
        } else {
            format!("{base}.log")
        };
        (name, data.into_bytes())
    }

    fn file_summary(&self) -> String {
        let lines = self.parts.iter().filter(|p| p.commit.is_some()).count();
        let events = self.parts.iter().filter(|p| p.event.is_some()).count();
        let bytes: usize = self.parts.iter().map(|p| p.text.len() + 1).sum();
        let mut s = format!(
            "{lines} lines ({:.1} KiB) in the attached file",
            bytes as f64 / 1024.0
        );
        if events > 0 {
            s.push_str(&format!(", {events} of them notable"));
        }
        s
    }

    /// The rule mentions of this message's events (at most one, so that a
    /// message never pings two groups; see [`Message::can_take_event`]).
    fn mentions(&self) -> Vec<Mention> {
        let mut v: Vec<Mention> = Vec::new();
        if self.as_file {
            return v;
        }
        for m in self.parts.iter().filter_map(|p| p.event.as_ref()?.mention) {
            if !v.contains(&m) {
                v.push(m);
            }
        }
        v
    }

    /// Whether one more event fits: embeds come after the code block, so
    /// an event may follow lines but no line may follow an event; at most
    /// 10 embeds and 6000 characters of embeds; one mention per message.
    pub fn can_take_event(&self, text_cp: usize, ev: &EventPart) -> bool {
        let events: Vec<&EventPart> = self
            .parts
            .iter()
            .filter_map(|p| p.event.as_deref())
            .collect();
        let total: usize = self
            .parts
            .iter()
            .filter(|p| p.event.is_some())
            .map(embed_chars)
            .sum();
        let mention_ok = match ev.mention {
            None => true,
            Some(m) => self.mentions().iter().all(|x| *x == m),
        };
        events.len() < EMBEDS_PER_MESSAGE
            && total
                + ev.title.chars().count()
                + text_cp
                + ev.footer.as_ref().map_or(0, |f| f.chars().count())
                + 8
                <= EMBED_TOTAL_MAX
            && mention_ok
    }

    /// Whether the last part is an event (then no ordinary line may follow).
    pub fn ends_with_event(&self) -> bool {
        self.parts.last().is_some_and(|p| p.event.is_some())
    }

    /// Highest delivered offset per file once this message is accepted.
    pub fn commits(&self) -> impl Iterator<Item = (FileId, u64)> + '_ {
        self.parts.iter().filter_map(|p| p.commit)
    }

    /// Cuts the message in two halves by parts (for a request Discord
    /// rejected as too large); `None` if it holds a single part.
    pub fn split(mut self) -> Option<(Message, Message)> {
        if self.parts.len() < 2 {
            return None;
        }
        let tail = self.parts.split_off(self.parts.len() / 2);
        let as_file = self.as_file;
        Some((
            self,
            Message {
                parts: tail,
                as_file,
            },
        ))
    }

    pub fn lines(&self) -> usize {
        self.parts.len()
    }

    /// For a message Discord rejected that cannot be split further: the
    /// same line(s) as a `.log` attachment with a one-line note, so that
    /// nothing is skipped; `None` if it already is an attachment.
    pub fn fallback(self) -> Option<Message> {
        if self.as_file {
            return None;
        }
        let parts = self
            .parts
            .into_iter()
            .map(|p| Part { event: None, ..p })
            .collect();
        Some(Message {
            parts,
            as_file: true,
        })
    }
}

/// Appends `s` as a JSON string. Runs that need no escaping are copied
/// whole: a backlog is megabytes of text where only newlines need it.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    // Sanitized text holds no control character but newline and tab: then
    // the only bytes to escape are found with a vectorized search.
    let other_controls = b
        .iter()
        .fold(false, |acc, &c| acc | (c < 0x20 && c != b'\n'));
    if !other_controls {
        let mut start = 0;
        for i in memchr::memchr3_iter(b'"', b'\\', b'\n', b) {
            out.extend_from_slice(&b[start..i]);
            out.extend_from_slice(match b[i] {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                _ => b"\\n",
            });
            start = i + 1;
        }
        out.extend_from_slice(&b[start..]);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn embed_chars(p: &Part) -> usize {
    let ev = p.event.as_ref().expect("an event part");
    ev.title.chars().count()
        + p.text.chars().count()
        + ev.footer.as_ref().map_or(0, |f| f.chars().count())
        + 8
}

/// The embed of an event part (`None` for an ordinary line). The line is
/// shown whole in the description, in a code block like ordinary lines.
fn embed(p: &Part) -> Option<serde_json::Value> {
    let ev = p.event.as_ref()?;
    let mut e = serde_json::json!({
        "title": ev.title,
        "description": format!("```\n{}\n```", p.text),
        "color": ev.severity.color(),
    });
    if let Some(f) = &ev.footer {
        e["footer"] = serde_json::json!({ "text": f });
    }
    Some(e)
}

/// Code points a code block costs besides its lines: header, both fences
/// and the newline that separates it from a previous block.
fn group_overhead(label: &Option<Arc<str>>) -> usize {
    let h = label
        .as_ref()
        .map(|l| header(l).chars().count())
        .unwrap_or(0);
    h + FENCE_OPEN.len() + FENCE_CLOSE.len()
}

/// The largest piece of one line that fits in an otherwise empty message.
pub fn max_piece(label: &Option<Arc<str>>) -> usize {
    CONTENT_LIMIT
        .saturating_sub(group_overhead(label) + 1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_text_readable() {
        assert_eq!(sanitize(b"plain"), "plain");
        assert_eq!(sanitize(b"crlf\r"), "crlf");
        assert_eq!(sanitize(b"nul\0here\ttab"), "nul\u{2400}here\ttab");
        assert_eq!(sanitize(b"\x1b[31mred"), "\u{241b}[31mred");
        assert_eq!(sanitize(b"bad \xff utf8"), "bad \u{fffd} utf8");
    }

    #[test]
    fn fences_cannot_be_closed_from_a_line() {
        let e = escape_fence("a ``` b ```` c");
        assert!(!e.contains("``"));
        assert_eq!(e.replace(ZWSP, ""), "a ``` b ```` c");
        assert!(matches!(escape_fence("one ` tick"), Cow::Borrowed(_)));
    }

    #[test]
    fn content_groups_by_file() {
        let a: Option<Arc<str>> = Some("deploy/deploy.log".into());
        let b: Option<Arc<str>> = Some("error.log".into());
        let m = Message {
            parts: vec![
                Part {
                    label: a.clone(),
                    text: "1".into(),
                    commit: None,
                    event: None,
                },
                Part {
                    label: a,
                    text: "2".into(),
                    commit: None,
                    event: None,
                },
                Part {
                    label: b,
                    text: "3".into(),
                    commit: None,
                    event: None,
                },
            ],
            as_file: false,
        };
        assert_eq!(
            m.content(),
            "`deploy/deploy.log`\n```\n1\n2\n```\n`error.log`\n```\n3\n```"
        );
        let body: serde_json::Value = serde_json::from_slice(&m.body()).unwrap();
        assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
    }

    #[test]
    fn a_file_message_is_multipart_with_the_lines_as_written() {
        let a: Option<Arc<str>> = Some("deploy/deploy.log".into());
        let part = |t: &str, end| Part {
            label: a.clone(),
            text: escape_fence(t).into_owned(),
            commit: Some((FileId(1), end)),
            event: None,
        };
        let m = Message {
            parts: vec![part("one ``` two", 12), part("three", 18)],
            as_file: true,
        };
        let p = m.payload();
        assert!(p.content_type.starts_with("multipart/form-data; boundary="));
        let body = String::from_utf8(p.body).unwrap();
        assert!(body.contains("name=\"payload_json\""));
        assert!(body.contains("name=\"files[0]\"; filename=\"deploy.log\""));
        assert!(body.contains("==> deploy/deploy.log <==\none ``` two\nthree\n"));
        let printable: serde_json::Value = serde_json::from_slice(&p.printable).unwrap();
        assert_eq!(printable["files"][0]["name"], "deploy.log");
        assert!(
            printable["content"]
                .as_str()
                .unwrap()
                .starts_with("2 lines")
        );
        assert_eq!(
            printable["allowed_mentions"]["parse"],
            serde_json::json!([])
        );
    }

    #[test]
    fn json_strings_match_serde() {
        for t in [
            "plain",
            "a \"q\" \\ b\nc\td\r\u{1}e",
            "é漢\u{2400}`\u{200b}`",
            "",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, t);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn a_huge_file_name_still_leaves_room_for_lines() {
        let label: Option<Arc<str>> = Some("d/".repeat(3000).into());
        assert!(header(label.as_deref().unwrap()).chars().count() <= 203);
        assert!(max_piece(&label) > 1700);
    }
}
