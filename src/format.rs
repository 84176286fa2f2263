//! Pure text handling between a file's bytes and a Discord message.
//!
//! Log files hold whatever programs wrote: invalid UTF-8, NUL bytes, colour
//! escapes, CRLF line ends, triple backticks, `@everyone`. [`sanitize`] turns
//! a raw line into text that displays as written (control characters become
//! their visible Unicode "control pictures"), and [`escape_fence`] keeps a
//! line from closing the code block it is shown in. [`Message`] renders the
//! packed lines into `content`, event embeds and the JSON body, always with
//! `allowed_mentions` set so that nothing in a log line can ping anyone.
//! Every field is sized through [`crate::limits`]: a rendered message is
//! within Discord's limits whatever the lines, modules and rules hold.

use std::borrow::Cow;
use std::sync::Arc;

use crate::checkpoint::FileId;
use crate::ekos::{self, Filter, Mention, Rules, Severity};
use crate::limits;

/// Discord's limit on `content`, in Unicode code points.
pub const CONTENT_LIMIT: usize = limits::CONTENT;

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

/// Inserts a zero-width space after a backtick that is followed by another
/// backtick, so a log line can never contain the ```` ``` ```` that would
/// end its code block. A zero-width space that already follows a backtick
/// gets one too, so that [`unescape_fence`] gives back the line exactly.
pub fn escape_fence(text: &str) -> Cow<'_, str> {
    if !needs_fence_escape(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut prev_tick = false;
    for c in text.chars() {
        if prev_tick && (c == '`' || c == ZWSP) {
            out.push(ZWSP);
        }
        prev_tick = c == '`';
        out.push(c);
    }
    Cow::Owned(out)
}

/// Whether some backtick of `b` is followed by a backtick or a zero-width
/// space. Backticks are rare in logs: `memchr` jumps from one to the next,
/// where comparing a two-byte window at every offset cost more than the
/// rest of a line's batching.
fn needs_fence_escape(b: &[u8]) -> bool {
    const ZWSP_UTF8: &[u8] = "\u{200b}".as_bytes();
    memchr::memchr_iter(b'`', b).any(|i| {
        let after = &b[i + 1..];
        after.first() == Some(&b'`') || after.starts_with(ZWSP_UTF8)
    })
}

/// Whether some backtick of `b` is followed by a zero-width space (an
/// escape to undo), found with `memchr` like [`needs_fence_escape`].
fn escaped_tick(b: &[u8]) -> bool {
    const ZWSP_UTF8: &[u8] = "\u{200b}".as_bytes();
    memchr::memchr_iter(b'`', b).any(|i| b[i + 1..].starts_with(ZWSP_UTF8))
}

/// Undoes [`escape_fence`]: drops the zero-width space after each backtick.
pub fn unescape_fence(text: &str) -> Cow<'_, str> {
    if !escaped_tick(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut prev_tick = false;
    for c in text.chars() {
        if !(prev_tick && c == ZWSP) {
            out.push(c);
        }
        prev_tick = c == '`';
    }
    Cow::Owned(out)
}

/// The byte index at which to cut `text` so that the first piece holds at
/// most `max` code points. The cut never falls between a backtick and the
/// zero-width space escaping it, so each piece unescapes on its own; it may
/// then hold one code point less (or, with `max` = 1, none).
pub fn cut_at(text: &str, max: usize) -> usize {
    let Some((i, c)) = text.char_indices().nth(max) else {
        return text.len();
    };
    if c == ZWSP && text[..i].ends_with('`') {
        return i - 1;
    }
    i
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
    /// The rule's mention, kept for a copy to the alerts webhook when the
    /// night watch takes `mention` off the line's embed (its incident
    /// pings in the logs channel instead; the alerts channel still must).
    pub alert_mention: Option<Mention>,
    /// An incident of the night watch stands for this event (set by
    /// [`crate::nightwatch::Tap::offer`] once the night watch has its copy):
    /// the incident is posted to the alerts webhook too, so the line's own
    /// copy there is not (a storm would be a storm of pings).
    pub covered: bool,
    /// The rule that matched (the night watch folds repeats of one rule
    /// into an incident); not shown.
    pub rule: String,
    /// Code points of the line that did not fit in the embed: they follow
    /// as ordinary line pieces (the embed says so). Set by the packer.
    pub more: usize,
}

/// Decides how one line is posted: `None` drops it (filtered out, or an
/// ordinary line in events-only mode), `Some(None)` is an ordinary line,
/// `Some(Some(e))` an event. An event keeps its embed and mention however
/// long its line: what does not fit the embed follows as ordinary pieces.
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
        Some(e) => {
            // The severity is spelled out too, not only shown as a colour.
            let mut footer = e.severity.as_str().to_string();
            for part in [rec.module, rec.time].into_iter().flatten() {
                footer.push_str(" · ");
                footer.push_str(part);
            }
            Some(Some(EventPart {
                severity: e.severity,
                title: limits::cap(&e.title, limits::TITLE).into_owned(),
                footer: Some(limits::cap(&footer, FOOTER_MAX).into_owned()),
                alert_mention: e.mention,
                covered: false,
                mention: e.mention,
                rule: e.rule,
                more: 0,
            }))
        }
        None if mode == EventMode::Only => None,
        None => Some(None),
    }
}

/// Footers are capped well below Discord's 2,048: a footer is a module
/// name and a time, and its room is taken from the line in the embed.
const FOOTER_MAX: usize = 256;
/// In an attachment message the whole line is in the file: an embed shows
/// only its start, so that ten of them fit in one message.
const FILE_EMBED_DESCRIPTION: usize = 600;
/// Content code points reserved for the one mention of a message
/// (`<@&18446744073709551615> ` is 25) and the newline after it.
pub const MENTION_COST: usize = 32;

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
    /// instead of code blocks (a flood too big for a minute of posting).
    /// Events still get their embeds and their mention.
    pub as_file: bool,
}

/// The largest attachment built.
pub const FILE_MAX: usize = limits::FILE_BYTES;

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

/// What an event's embed shows, every field within its limit and the sum
/// within [`limits::EMBED_TOTAL`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct EmbedText {
    title: String,
    description: String,
    footer: Option<String>,
}

impl EmbedText {
    fn chars(&self) -> usize {
        limits::chars(&self.title)
            + limits::chars(&self.description)
            + self.footer.as_deref().map_or(0, limits::chars)
    }
}

const DESC_FENCES: usize = FENCE_OPEN.len() + FENCE_CLOSE.len();
/// Room for the longest marker after a shortened embed line,
/// `\n… (N more characters not shown, M in the next message)` with
/// 20-digit numbers.
const MARKER_MAX: usize = 100;

/// The description room of an event's embed (fences included).
fn description_max(ev: &EventPart, in_file: bool) -> usize {
    let title = limits::chars(&limits::cap(&ev.title, limits::TITLE));
    let footer = ev
        .footer
        .as_deref()
        .map_or(0, |f| limits::chars(&limits::cap(f, limits::FOOTER)));
    let max = limits::DESCRIPTION.min(limits::EMBED_TOTAL - title - footer);
    if in_file {
        max.min(FILE_EMBED_DESCRIPTION)
    } else {
        max
    }
}

/// How many code points of an event's line its embed shows in an ordinary
/// message: `(whole, cut)`. A line of at most `whole` code points is shown
/// whole; a longer one shows its first `cut` and a marker, and the rest
/// must follow as ordinary pieces (see [`EventPart::more`]).
pub fn embed_room(ev: &EventPart) -> (usize, usize) {
    let max = description_max(ev, false);
    (max - DESC_FENCES, max - DESC_FENCES - MARKER_MAX)
}

/// The embed of an event part (`None` for an ordinary line): the line in a
/// code block like ordinary lines, cut with a visible marker when it does
/// not fit (in an attachment message the file has it whole).
fn embed_text(p: &Part, in_file: bool) -> Option<EmbedText> {
    let ev = p.event.as_ref()?;
    let max = description_max(ev, in_file);
    let cp = limits::chars(&p.text);
    let whole_fits = cp + DESC_FENCES <= max;
    let description = if whole_fits && (ev.more == 0 || in_file) {
        format!("{FENCE_OPEN}{}{FENCE_CLOSE}", p.text)
    } else {
        let room = (max - DESC_FENCES - MARKER_MAX).min(cp);
        let shown = &p.text[..cut_at(&p.text, room)];
        let dropped = cp - limits::chars(shown);
        let more = ev.more;
        let marker = if in_file {
            "… (the whole line is in the attached file)".to_string()
        } else if dropped == 0 {
            format!("… ({more} more characters in the next message)")
        } else if more == 0 {
            format!("… ({dropped} more characters not shown)")
        } else {
            format!("… ({dropped} more characters not shown, {more} in the next message)")
        };
        format!("{FENCE_OPEN}{shown}{FENCE_CLOSE}\n{marker}")
    };
    Some(EmbedText {
        title: limits::cap(&ev.title, limits::TITLE).into_owned(),
        description,
        footer: ev
            .footer
            .as_deref()
            .map(|f| limits::cap(f, limits::FOOTER).into_owned()),
    })
}

/// An upper bound of [`embed_text`]'s size for a line of `text_cp` code
/// points, without building it.
fn embed_cost(text_cp: usize, ev: &EventPart, in_file: bool) -> usize {
    let title = limits::chars(&limits::cap(&ev.title, limits::TITLE));
    let footer = ev
        .footer
        .as_deref()
        .map_or(0, |f| limits::chars(&limits::cap(f, limits::FOOTER)));
    let max = description_max(ev, in_file);
    title + footer + max.min(text_cp + DESC_FENCES + MARKER_MAX)
}

impl Message {
    /// Code points that `parts` occupy once rendered; see [`Message::content`].
    pub fn cost_of_adding(&self, label: &Option<Arc<str>>, cp: usize) -> usize {
        match self.parts.iter().rev().find(|p| p.event.is_none()) {
            Some(last) if &last.label == label => cp + 1,
            Some(_) => cp + 1 + group_overhead(label),
            None => cp + group_overhead(label),
        }
    }

    /// The `content` field: groups of consecutive lines from the same file,
    /// each group a code block under an optional header; for an attachment,
    /// a one-line summary. A rule's mention comes first.
    pub fn content(&self) -> String {
        let mut out = String::new();
        for m in self.mentions() {
            out.push_str(&m.to_string());
            out.push(' ');
        }
        if self.as_file {
            let room = CONTENT_LIMIT - limits::chars(&out);
            out.push_str(&limits::cap(&self.file_summary(), room));
            return out;
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
        let embeds: Vec<serde_json::Value> = self
            .parts
            .iter()
            .filter_map(|p| {
                let e = embed_text(p, self.as_file)?;
                let mut j = serde_json::json!({
                    "title": e.title,
                    "description": e.description,
                    "color": p.event.as_ref()?.severity.color(),
                });
                if let Some(f) = e.footer {
                    j["footer"] = serde_json::json!({ "text": f });
                }
                Some(j)
            })
            .collect();
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
            #[cfg(debug_assertions)]
            debug_check(&json);
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
        // Seeded by the data's start and length, not a hash of all of it,
        // and checked with memmem: a byte-by-byte window compare and hash
        // of a 10 MiB attachment took a third of the sender's time in a
        // catch-up (`bench catchup`).
        let head = &data[..data.len().min(4096)];
        let mut boundary = format!(
            "ekos-log-monitor-{:016x}",
            crate::checkpoint::fingerprint(head) ^ data.len() as u64
        );
        while memchr::memmem::find(&data, boundary.as_bytes()).is_some() {
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
        let printable = serde_json::to_vec(&meta).expect("JSON");
        #[cfg(debug_assertions)]
        debug_check(&printable);
        Payload {
            content_type: format!("multipart/form-data; boundary={boundary}"),
            body,
            printable,
        }
    }

    /// The attached file: the lines as written (fence escaping undone),
    /// with a `==> file <==` header where the file changes, like `tail`.
    fn file(&self) -> (String, Vec<u8>) {
        // Sized for the lines at once: megabytes grown by doubling cost
        // copies and fresh pages at each step.
        let lines: usize = self.parts.iter().map(|p| p.text.len() + 1).sum();
        let mut data = String::with_capacity(lines);
        let mut label: Option<&Arc<str>> = None;
        for (i, p) in self.parts.iter().enumerate() {
            if p.label.as_ref() != label || (i == 0 && p.label.is_some()) {
                if let Some(l) = &p.label {
                    data.push_str(&file_header(l));
                }
                label = p.label.as_ref();
            }
            data.push_str(&unescape_fence(&p.text));
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
                .take(100)
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

    /// One line: how many lines, from which files, over what time, and how
    /// many of them are shown as embeds below.
    fn file_summary(&self) -> String {
        let lines = self.parts.iter().filter(|p| p.commit.is_some()).count();
        let events = self.parts.iter().filter(|p| p.event.is_some()).count();
        let bytes: usize = self.parts.iter().map(|p| p.text.len() + 1).sum();
        let mut s = format!(
            "{lines} {} ({:.1} KiB)",
            if lines == 1 { "line" } else { "lines" },
            bytes as f64 / 1024.0
        );
        let mut files: Vec<&str> = Vec::new();
        for l in self.parts.iter().filter_map(|p| p.label.as_deref()) {
            if !files.contains(&l) {
                files.push(l);
            }
        }
        if !files.is_empty() {
            let names: Vec<String> = files
                .iter()
                .take(3)
                .map(|f| limits::cap(&f.replace('`', "'"), 80).into_owned())
                .collect();
            s.push_str(&format!(" from `{}`", names.join("`, `")));
            if files.len() > 3 {
                s.push_str(&format!(" and {} more files", files.len() - 3));
            }
        }
        let time = |p: &Part| {
            ekos::parse(&p.text)
                .time
                .map(|t| limits::cap(t, 40).into_owned())
        };
        let first = self.parts.iter().take(50).find_map(time);
        let last = self.parts.iter().rev().take(50).find_map(time);
        match (first, last) {
            (Some(a), Some(b)) if a != b => s.push_str(&format!(", {a} to {b}")),
            (Some(a), _) => s.push_str(&format!(", {a}")),
            _ => {}
        }
        s.push_str(" in the attached file");
        if events > 0 {
            s.push_str(&format!(
                ", {events} notable {} shown below",
                if events == 1 { "line" } else { "lines" }
            ));
        }
        s
    }

    /// The rule mentions of this message's events (at most one, so that a
    /// message never pings two groups; see [`Message::can_take_event`]).
    fn mentions(&self) -> Vec<Mention> {
        let mut v: Vec<Mention> = Vec::new();
        for m in self.parts.iter().filter_map(|p| p.event.as_ref()?.mention) {
            if !v.contains(&m) {
                v.push(m);
            }
        }
        v
    }

    /// Whether one more event with a line of `text_cp` code points fits:
    /// embeds come after the code block, so an event may follow lines but
    /// no line may follow an event; at most 10 embeds and 6000 characters
    /// of embeds; one mention per message. An empty message takes any
    /// event (its embed alone is within the limits by construction).
    pub fn can_take_event(&self, text_cp: usize, ev: &EventPart) -> bool {
        let mut embeds = 0;
        let mut total = 0;
        for p in &self.parts {
            if let Some(e) = embed_text(p, self.as_file) {
                embeds += 1;
                total += e.chars();
            }
        }
        let mention_ok = match ev.mention {
            None => true,
            Some(m) => self.mentions().iter().all(|x| *x == m),
        };
        embeds < limits::EMBEDS
            && total + embed_cost(text_cp, ev, self.as_file) <= limits::EMBED_TOTAL
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

    /// For a message Discord rejected for its content that cannot be split
    /// further: the same lines as a `.log` attachment whose summary says
    /// so, with the same commits. The embeds are left out (they may be
    /// what Discord refused; the file has their lines whole). `None` when
    /// the message already is a plain attachment.
    pub fn fallback(self) -> Option<Message> {
        if self.as_file && self.parts.iter().all(|p| p.event.is_none()) {
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

    pub fn lines(&self) -> usize {
        self.parts.len()
    }
}

/// Debug builds check every payload against Discord's limits before it
/// leaves: the tests that drive the real binary then catch any renderer
/// that breaks one.
#[cfg(debug_assertions)]
fn debug_check(json: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(json).expect("own JSON");
    if let Err(e) = limits::check(&v) {
        panic!("a payload breaks Discord's limits: {e}");
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

/// The `==> file <==` line before a file's lines in an attachment.
fn file_header(label: &str) -> String {
    format!("==> {label} <==\n")
}

/// Bytes an attachment needs for a part of `text_bytes` bytes of `label`
/// after parts of `prev` (an upper bound: the fence escaping is counted).
pub fn file_cost(
    prev: Option<&Option<Arc<str>>>,
    label: &Option<Arc<str>>,
    text_bytes: usize,
) -> usize {
    let header = match (prev, label) {
        (Some(p), _) if p == label => 0,
        (_, Some(l)) => file_header(l).len(),
        (_, None) => 0,
    };
    header + text_bytes + 1
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
    use crate::ekos::Mention;

    #[test]
    fn fence_escape_is_needed_exactly_where_the_window_scan_said() {
        let texts = [
            "",
            "`",
            "``",
            "a`b",
            "a``b",
            "`\u{200b}",
            "x`\u{200b}y",
            "\u{200b}`",
            "`a`",
            "``` code",
            "é`é",
            "`é`",
            "tail`",
            "`\u{200c}",
            "plain log line",
        ];
        for t in texts {
            let b = t.as_bytes();
            let old = b.windows(2).any(|w| w == b"``") || t.contains("`\u{200b}");
            assert_eq!(needs_fence_escape(b), old, "{t:?}");
            assert_eq!(escaped_tick(b), t.contains("`\u{200b}"), "{t:?}");
            assert_eq!(unescape_fence(&escape_fence(t)), t);
        }
    }

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

    proptest::proptest! {
        /// Escaping is exactly undone, and pieces cut with [`cut_at`]
        /// unescape on their own to the same text.
        #[test]
        fn fence_escaping_round_trips(text in "[`\u{200b}a]{0,40}", max in 0usize..50) {
            let e = escape_fence(&text);
            proptest::prop_assert!(!e.contains("``"));
            proptest::prop_assert_eq!(unescape_fence(&e), text.as_str());
            let at = cut_at(&e, max);
            proptest::prop_assert!(e[..at].chars().count() <= max);
            let joined = format!("{}{}", unescape_fence(&e[..at]), unescape_fence(&e[at..]));
            proptest::prop_assert_eq!(joined, text);
        }
    }

    fn ev(title: &str, footer: &str, mention: Option<Mention>) -> Box<EventPart> {
        Box::new(EventPart {
            severity: Severity::Critical,
            title: title.into(),
            footer: Some(footer.into()),
            mention,
            covered: false,
            alert_mention: mention,
            rule: "r".into(),
            more: 0,
        })
    }

    fn json(m: &Message) -> serde_json::Value {
        let p = m.payload();
        serde_json::from_slice(&p.printable).unwrap()
    }

    /// A message built outside the packer (the sender's alert copies) is
    /// still within the limits: each field is capped when rendered, and a
    /// line longer than its embed says how much is not shown.
    #[test]
    fn an_alert_copy_of_a_huge_line_is_capped_with_a_marker() {
        let m = Message {
            parts: vec![Part {
                label: None,
                text: "z".repeat(60_000),
                event: Some(ev(
                    &"t".repeat(400),
                    &"f".repeat(5000),
                    Some(Mention::Role(3)),
                )),
                commit: Some((FileId(1), 0)),
            }],
            as_file: false,
        };
        let v = json(&m);
        assert_eq!(limits::check(&v), Ok(()));
        let e = &v["embeds"][0];
        assert_eq!(limits::chars(e["title"].as_str().unwrap()), limits::TITLE);
        assert_eq!(
            limits::chars(e["footer"]["text"].as_str().unwrap()),
            limits::FOOTER
        );
        let d = e["description"].as_str().unwrap();
        let shown = d.matches('z').count();
        assert!(d.ends_with(&format!("… ({} more characters not shown)", 60_000 - shown)));
        assert!(v["content"].as_str().unwrap().starts_with("<@&3>"));
        // Ten of them are not ten times 6000: the packer's check says no.
        assert!(!m.can_take_event(60_000, &ev("t", "f", None)));
        assert!(Message::default().can_take_event(60_000, &ev("t", "f", None)));
    }

    #[test]
    fn a_file_summary_names_files_lines_time_span_and_events() {
        let a: Option<Arc<str>> = Some("2026-11-22/log_22-00-00.txt".into());
        let line = |t: &str, event: Option<Box<EventPart>>| Part {
            label: a.clone(),
            text: format!("[2026-11-22T{t} UTC INFO ][org.kde.kstars] - x"),
            event,
            commit: Some((FileId(1), 1)),
        };
        let m = Message {
            parts: vec![
                line("22:00:01.000", None),
                line("22:00:02.000", Some(ev("E", "f", Some(Mention::User(4))))),
                line("22:03:12.930", None),
            ],
            as_file: true,
        };
        let v = json(&m);
        assert_eq!(limits::check(&v), Ok(()));
        let c = v["content"].as_str().unwrap();
        assert!(c.starts_with("<@4> 3 lines ("), "{c}");
        assert!(c.contains("from `2026-11-22/log_22-00-00.txt`"), "{c}");
        assert!(
            c.contains("2026-11-22T22:00:01.000 UTC to 2026-11-22T22:03:12.930 UTC"),
            "{c}"
        );
        assert!(
            c.ends_with("in the attached file, 1 notable line shown below"),
            "{c}"
        );
        assert_eq!(v["embeds"][0]["title"], "E");
        assert_eq!(v["files"][0]["name"], "log_22-00-00.txt.log");
    }
}
