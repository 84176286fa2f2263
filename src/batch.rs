//! When to send, and what goes into each message: a pure, clock-free struct.
//!
//! The prototype's rule decides *when*: a batch goes out as soon as
//! `BATCH_SIZE` lines wait, otherwise `BATCH_TIMEOUT` after the last line
//! arrived (each line resets the timer), and never later than twice
//! `BATCH_TIMEOUT` after the oldest waiting line arrived.
//!
//! [`Batcher::next_message`] decides *what*, in one place for the daemon
//! and `--replay`. Normally each message takes as many whole waiting lines
//! as fit in Discord's 2000 code points, so a backlog drains in the fewest
//! requests; a line longer than a message is cut into pieces, in order,
//! never truncated, and only its last piece commits its offset. Notable
//! lines go as embeds with their mention; a line too long for its embed
//! shows its start there and the rest follows as ordinary pieces.
//!
//! A *flood* is folded (see [`Fold`]): when what waits would take more than
//! [`FOLD_AFTER`] of Discord's rate to post (a 10 MiB line, a debug storm,
//! a backlog after an outage), it goes as one `.log` attachment with a
//! one-line summary. Notable lines inside it keep their embed and their
//! mention: the attachment message carries them as embeds (up to Discord's
//! 10 embeds, 6000 characters and one mention per message; the next event
//! that does not fit starts the next message), while the file holds every
//! line in order. So an event at the front, middle or back of a burst is
//! never reduced to a line in a file (issue 9, bug 11).
//!
//! Every message returned is non-empty and within [`crate::limits`] by
//! construction: the first waiting part always fits an empty message
//! (ordinary lines are cut, event embeds are sized by
//! [`format::embed_room`]). The caller passes `now` in, so tests need no
//! clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::FileId;
use crate::config::Config;
use crate::format::{self, CONTENT_LIMIT, EventPart, MENTION_COST, Message, Part};
use crate::limits;

/// Fold what waits into an attachment when posting it as messages would
/// take longer than this at the route's rate.
pub const FOLD_AFTER: Duration = Duration::from_secs(60);
/// Longest text kept as one queue entry; a longer line is cut into pieces
/// of this size (as the tailer does), so one entry always fits a file.
pub const PIECE_BYTES: usize = crate::tail::MAX_LINE;

/// When the waiting lines go as one attachment instead of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Never (`attachment_threshold = 0`, the prototype's behaviour).
    Never,
    /// When more than this many lines (or pieces of long lines) wait
    /// (a positive `attachment_threshold`).
    Lines(usize),
    /// When the messages needed, posted one per `min_gap`, would take more
    /// than [`FOLD_AFTER`] (the default).
    Time { min_gap: Duration },
}

impl Fold {
    /// The configured rule: `attachment_threshold` unset (or `auto`) folds
    /// by time at the slower of `rate_limit_delay` and Discord's bucket.
    pub fn from_config(cfg: &Config) -> Fold {
        match cfg.attachment_threshold {
            None => Fold::Time {
                min_gap: limits::min_gap(cfg.rate_limit_delay),
            },
            Some(0) => Fold::Never,
            Some(n) => Fold::Lines(n),
        }
    }
}

#[derive(Debug)]
struct Entry {
    file: FileId,
    label: Option<Arc<str>>,
    /// Sanitized and fence-escaped.
    text: String,
    cp: usize,
    end: u64,
    /// This entry ends its line: taking it commits `end`.
    last: bool,
    seq: u64,
    arrived: Instant,
    event: Option<Box<EventPart>>,
}

#[derive(Debug)]
pub struct Batcher {
    queue: VecDeque<Entry>,
    batch_size: usize,
    timeout: Duration,
    fold: Fold,
    next_seq: u64,
    /// Every entry with `seq < flush_before` is due now.
    flush_before: u64,
    last_arrival: Option<Instant>,
    queued_cp: usize,
    queued_bytes: usize,
    queued_events: usize,
}

impl Batcher {
    /// A batcher that never folds (see [`Batcher::folding`]).
    pub fn new(batch_size: usize, timeout: Duration) -> Batcher {
        Batcher {
            queue: VecDeque::new(),
            batch_size: batch_size.max(1),
            timeout,
            fold: Fold::Never,
            next_seq: 0,
            flush_before: 0,
            last_arrival: None,
            queued_cp: 0,
            queued_bytes: 0,
            queued_events: 0,
        }
    }

    /// The batcher of one route as configured: batch rule and folding.
    pub fn from_config(cfg: &Config) -> Batcher {
        Batcher::new(cfg.batch_size, cfg.batch_timeout).folding(Fold::from_config(cfg))
    }

    pub fn folding(mut self, fold: Fold) -> Batcher {
        self.fold = fold;
        self
    }

    /// Queues one sanitized line that ends at byte offset `end` of `file`.
    pub fn push(
        &mut self,
        file: FileId,
        label: Option<Arc<str>>,
        text: String,
        end: u64,
        now: Instant,
    ) {
        self.push_event(file, label, text, end, now, None);
    }

    /// Queues a line that is shown as an embed when `event` is set. A line
    /// longer than its embed, or than [`PIECE_BYTES`], is queued as pieces
    /// now; only the last piece commits `end`.
    pub fn push_event(
        &mut self,
        file: FileId,
        label: Option<Arc<str>>,
        text: String,
        end: u64,
        now: Instant,
        event: Option<EventPart>,
    ) {
        // Most lines hold no double backtick: keep their allocation.
        let mut text = match format::escape_fence(&text) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(escaped) => escaped,
        };
        if let Some(mut ev) = event {
            let cp = limits::chars(&text);
            let (whole, cut) = format::embed_room(&ev);
            let (head, rest) = if cp <= whole {
                (text, None)
            } else {
                let at = format::cut_at(&text, cut);
                let rest = text.split_off(at);
                ev.more = limits::chars(&rest);
                (text, Some(rest))
            };
            let last = rest.is_none();
            self.push_entry(file, &label, head, end, last, now, Some(Box::new(ev)));
            match rest {
                Some(r) => text = r,
                None => return,
            }
        }
        while text.len() > PIECE_BYTES {
            let mut at = PIECE_BYTES;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            if text[..at].ends_with('`') && text[at..].starts_with('\u{200b}') {
                at -= 1;
            }
            let rest = text.split_off(at);
            self.push_entry(file, &label, text, end, false, now, None);
            text = rest;
        }
        self.push_entry(file, &label, text, end, true, now, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_entry(
        &mut self,
        file: FileId,
        label: &Option<Arc<str>>,
        text: String,
        end: u64,
        last: bool,
        now: Instant,
        event: Option<Box<EventPart>>,
    ) {
        let cp = limits::chars(&text);
        self.queued_cp += cp + 1;
        self.queued_bytes += text.len();
        self.queued_events += usize::from(event.is_some());
        self.queue.push_back(Entry {
            file,
            label: label.clone(),
            text,
            cp,
            end,
            last,
            seq: self.next_seq,
            arrived: now,
            event,
        });
        self.next_seq += 1;
        self.last_arrival = Some(now);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Entries waiting (lines, and pieces of long lines).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of text waiting, so the caller can stop reading ahead.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Makes everything queued so far due at once (shutdown, reload).
    pub fn flush_all(&mut self) {
        self.flush_before = self.next_seq;
    }

    /// The batch rule, without packing: count reached or a timer expired.
    fn rule_fires(&self, now: Instant) -> bool {
        let Some(front) = self.queue.front() else {
            return false;
        };
        self.queue.len() >= self.batch_size
            || self.last_arrival.is_some_and(|t| now >= t + self.timeout)
            || now >= front.arrived + self.timeout * 2
    }

    /// Whether a message should be taken now.
    pub fn is_ready(&self, now: Instant) -> bool {
        let Some(front) = self.queue.front() else {
            return false;
        };
        front.seq < self.flush_before || self.queued_cp >= CONTENT_LIMIT || self.rule_fires(now)
    }

    /// When the batch rule will fire if no line arrives; `None` when empty.
    pub fn deadline(&self) -> Option<Instant> {
        let front = self.queue.front()?;
        let by_last = self.last_arrival? + self.timeout;
        Some(by_last.min(front.arrived + self.timeout * 2))
    }

    /// About how many messages what waits needs when not folded: its text
    /// in full messages, plus one per event (a line after an event starts
    /// a new message).
    pub fn estimated_messages(&self) -> usize {
        self.queued_cp.div_ceil(CONTENT_LIMIT) + self.queued_events
    }

    /// Whether what waits goes as an attachment (see [`Fold`]).
    pub fn should_fold(&self) -> bool {
        match self.fold {
            Fold::Never => false,
            Fold::Lines(n) => self.queue.len() > n,
            Fold::Time { min_gap } => {
                min_gap.saturating_mul(self.estimated_messages().try_into().unwrap_or(u32::MAX))
                    > FOLD_AFTER
            }
        }
    }

    /// The next message to post, if one is due: the whole decision of what
    /// goes next (batch rule, folding, packing). Never an empty message.
    pub fn next_message(&mut self, now: Instant) -> Option<Message> {
        if !self.is_ready(now) {
            return None;
        }
        if self.rule_fires(now) {
            // Everything waiting at this moment is due: it all goes out
            // back to back even if it takes several messages.
            self.flush_all();
        }
        let msg = if self.should_fold() {
            self.take_file_message()
        } else {
            self.take_message()
        };
        if self.queue.is_empty() {
            self.last_arrival = None;
        }
        debug_assert!(!msg.parts.is_empty(), "the packer made an empty message");
        Some(msg)
    }

    /// Takes the front entry whole.
    fn pop_part(&mut self) -> Part {
        let e = self.queue.pop_front().expect("front exists");
        self.queued_cp -= e.cp + 1;
        self.queued_bytes -= e.text.len();
        self.queued_events -= usize::from(e.event.is_some());
        Part {
            label: e.label,
            commit: e.last.then_some((e.file, e.end)),
            text: e.text,
            event: e.event,
        }
    }

    /// Takes up to [`format::FILE_MAX`] bytes of waiting lines as one
    /// attachment message; events ride along as embeds while the message
    /// has room for them, else the chunk ends before the next one.
    fn take_file_message(&mut self) -> Message {
        let mut msg = Message {
            parts: Vec::new(),
            as_file: true,
        };
        let mut size = 0;
        while let Some(front) = self.queue.front() {
            let cost = format::file_cost(
                msg.parts.last().map(|p| &p.label),
                &front.label,
                front.text.len(),
            );
            if !msg.parts.is_empty() {
                if size + cost > format::FILE_MAX {
                    break;
                }
                if let Some(ev) = &front.event {
                    if !msg.can_take_event(front.cp, ev) {
                        break;
                    }
                }
            }
            size += cost;
            let part = self.pop_part();
            msg.parts.push(part);
        }
        msg
    }

    /// Packs the next message of code blocks and embeds from the front of
    /// the queue.
    fn take_message(&mut self) -> Message {
        let mut msg = Message::default();
        let mut used = 0;
        while let Some(front) = self.queue.front_mut() {
            if let Some(ev) = &front.event {
                // Events ride as embeds after the code block; the mention
                // costs a few code points of content.
                let mention_cost = if ev.mention.is_some() {
                    MENTION_COST
                } else {
                    0
                };
                if !msg.can_take_event(front.cp, ev) || used + mention_cost > CONTENT_LIMIT {
                    break;
                }
                used += mention_cost;
                msg.parts.push(self.pop_part());
                continue;
            }
            if msg.ends_with_event() {
                // A line after an event goes in the next message, so the
                // channel shows everything in file order.
                break;
            }
            let cost = msg.cost_of_adding(&front.label, front.cp);
            if used + cost <= CONTENT_LIMIT {
                used += cost;
                msg.parts.push(self.pop_part());
                continue;
            }
            // The line does not fit. If it would fit in an empty message,
            // leave it for the next one; else cut off what fits here.
            let room_when_empty = format::max_piece(&front.label);
            if !msg.parts.is_empty() && front.cp <= room_when_empty {
                break;
            }
            let overhead = msg.cost_of_adding(&front.label, 0);
            let room = CONTENT_LIMIT.saturating_sub(used + overhead);
            let split_at = format::cut_at(&front.text, room);
            if split_at == 0 {
                // Only when lines already fill this message: an empty one
                // has room for more than a thousand code points.
                break;
            }
            let piece: String = front.text[..split_at].to_string();
            let taken = limits::chars(&piece);
            front.text.drain(..split_at);
            front.cp -= taken;
            self.queued_cp -= taken;
            self.queued_bytes -= piece.len();
            msg.parts.push(Part {
                label: front.label.clone(),
                text: piece,
                commit: None,
                event: None,
            });
            break;
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn drain(b: &mut Batcher, now: Instant) -> Vec<Message> {
        b.flush_all();
        let mut out = Vec::new();
        while let Some(m) = b.next_message(now) {
            assert!(out.len() < 1_000_000, "the packer does not progress");
            out.push(m);
        }
        assert!(b.is_empty());
        out
    }

    #[test]
    fn prototype_rule_size_and_timeout() {
        let now = t0();
        let mut b = Batcher::new(10, Duration::from_secs(30));
        for i in 0..5 {
            b.push(FileId(1), None, "x".into(), i, now);
        }
        assert!(!b.is_ready(now));
        assert_eq!(b.deadline(), Some(now + Duration::from_secs(30)));
        assert!(b.is_ready(now + Duration::from_secs(30)));
        for i in 5..10 {
            b.push(FileId(1), None, "x".into(), i, now);
        }
        assert!(b.is_ready(now));
        let m = b.next_message(now).unwrap();
        assert_eq!(m.lines(), 10);
        assert!(b.is_empty());
    }

    #[test]
    fn timer_resets_but_never_beyond_twice_the_timeout() {
        let now = t0();
        let t = Duration::from_secs(30);
        let mut b = Batcher::new(100, t);
        b.push(FileId(1), None, "a".into(), 1, now);
        b.push(
            FileId(1),
            None,
            "b".into(),
            2,
            now + Duration::from_secs(20),
        );
        assert!(!b.is_ready(now + Duration::from_secs(49)));
        assert!(b.is_ready(now + Duration::from_secs(50)));
        b.push(
            FileId(1),
            None,
            "c".into(),
            3,
            now + Duration::from_secs(45),
        );
        // The last line would wait until 75 s, but the first has waited 60 s.
        assert_eq!(b.deadline(), Some(now + Duration::from_secs(60)));
    }

    #[test]
    fn burst_is_packed_close_to_the_limit() {
        let now = t0();
        let mut b = Batcher::new(10, Duration::from_secs(30));
        let line = "x".repeat(99);
        for i in 0..2000 {
            b.push(FileId(1), None, line.clone(), i, now);
        }
        let msgs = drain(&mut b, now);
        let cps: Vec<usize> = msgs.iter().map(|m| m.content().chars().count()).collect();
        assert!(cps.iter().all(|&c| c <= CONTENT_LIMIT));
        let full = &cps[..cps.len() - 1];
        assert!(full.iter().all(|&c| c >= 1900), "{cps:?}");
    }

    #[test]
    fn long_line_is_split_in_order() {
        let now = t0();
        let mut b = Batcher::new(1, Duration::ZERO);
        let line: String = (0..5000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        b.push(FileId(1), None, line.clone(), 5001, now);
        let msgs = drain(&mut b, now);
        assert_eq!(msgs.len(), 3);
        let joined: String = msgs
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.text.clone()))
            .collect();
        assert_eq!(joined, line);
        assert_eq!(
            msgs[2].commits().collect::<Vec<_>>(),
            vec![(FileId(1), 5001)]
        );
        assert_eq!(msgs[0].commits().count(), 0);
    }

    fn line_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z ]{0,80}",
            "[`@<>&#*_~|\\\\ ]{0,60}",
            Just("@everyone <@123> <@&456> @here".to_string()),
            "\\PC{0,300}",
            "[\u{1F600}-\u{1F64F}é漢]{0,2500}",
            "[x`]{1900,4200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Every message respects Discord's limit, stays one code block per
        /// file, and the messages give back every line in order, once.
        #[test]
        fn packer_keeps_every_line_within_limits(
            lines in proptest::collection::vec((line_strategy(), 0u8..3), 0..60)
        ) {
            let now = t0();
            let mut b = Batcher::new(7, Duration::from_secs(1));
            let labels: Vec<Option<Arc<str>>> = vec![None, Some("a/x.log".into()), Some("b`y.log".into())];
            for (i, (l, f)) in lines.iter().enumerate() {
                b.push(FileId(*f as u64), labels[*f as usize].clone(), l.clone(), i as u64, now);
            }
            let msgs = drain(&mut b, now);
            let mut rebuilt: Vec<String> = Vec::new();
            let mut current = String::new();
            for m in &msgs {
                let content = m.content();
                prop_assert!(content.chars().count() <= CONTENT_LIMIT);
                prop_assert!(!m.parts.is_empty());
                // Fences only where the renderer put them.
                let fences = content.matches("```").count();
                let groups = 1 + m.parts.windows(2).filter(|w| w[0].label != w[1].label).count();
                prop_assert_eq!(fences, groups * 2);
                for p in &m.parts {
                    current.push_str(&p.text.replace('\u{200b}', ""));
                    if p.commit.is_some() {
                        rebuilt.push(std::mem::take(&mut current));
                    }
                }
            }
            prop_assert!(current.is_empty());
            let expected: Vec<String> = lines.iter().map(|(l, _)| l.clone()).collect();
            prop_assert_eq!(rebuilt, expected);
        }
    }

    use crate::ekos::{Filter, FilterSpec, Mention, RuleSpec, Rules, Severity};
    use crate::format::{EventMode, classify_line, unescape_fence};

    /// A message's JSON (the `payload_json` of an upload) and attached
    /// file, after checking both against every Discord limit.
    fn checked(m: &Message) -> (serde_json::Value, Option<String>) {
        assert!(!m.parts.is_empty(), "an empty message");
        let p = m.payload();
        if !m.as_file {
            assert_eq!(p.content_type, "application/json");
            let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
            limits::check(&v).unwrap_or_else(|e| panic!("{e}"));
            return (v, None);
        }
        let boundary = p.content_type.split("boundary=").nth(1).unwrap();
        let delim = format!("--{boundary}").into_bytes();
        let find = |from: usize, pat: &[u8]| {
            p.body[from..]
                .windows(pat.len())
                .position(|w| w == pat)
                .map(|i| i + from)
        };
        let data_of = |section: usize| {
            let start = find(section, b"\r\n\r\n").unwrap() + 4;
            let end = find(start, &delim).unwrap() - 2;
            &p.body[start..end]
        };
        let first = find(0, &delim).unwrap();
        let json = data_of(first);
        let second = find(first + 1, &delim).unwrap();
        let file = data_of(second);
        assert!(find(second + 1, &delim).is_some(), "closing boundary");
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        limits::check(&v).unwrap_or_else(|e| panic!("{e}"));
        assert!(file.len() <= limits::FILE_BYTES);
        assert_eq!(v["attachments"][0]["id"], 0);
        (v, Some(String::from_utf8(file.to_vec()).unwrap()))
    }

    /// Checks every message against the limits and the parts against
    /// what they render to; returns, per file, the lines rebuilt from the
    /// parts, and the commits in order.
    #[allow(clippy::type_complexity)]
    fn audit(msgs: &[Message]) -> (Vec<(FileId, String)>, Vec<(FileId, u64)>) {
        let mut lines = Vec::new();
        let mut current: std::collections::HashMap<FileId, String> = Default::default();
        let mut commits = Vec::new();
        for m in msgs {
            let (v, file) = checked(m);
            let content = v["content"].as_str().unwrap_or("");
            let embeds = v["embeds"].as_array().cloned().unwrap_or_default();
            let events: Vec<&Part> = m.parts.iter().filter(|p| p.event.is_some()).collect();
            // Every event keeps its embed, in order, and its mention.
            assert_eq!(embeds.len(), events.len());
            for (e, p) in embeds.iter().zip(&events) {
                let ev = p.event.as_ref().unwrap();
                let d = e["description"].as_str().unwrap();
                if !m.as_file {
                    assert!(d.contains(&p.text), "an embed shows its part whole");
                }
                if let Some(men) = ev.mention {
                    assert!(content.starts_with(&men.to_string()));
                    let ids = match men {
                        Mention::Role(_) => &v["allowed_mentions"]["roles"],
                        Mention::User(_) => &v["allowed_mentions"]["users"],
                    };
                    assert_eq!(ids.as_array().unwrap().len(), 1);
                }
            }
            assert_eq!(v["allowed_mentions"]["parse"], serde_json::json!([]));
            // Each part shows up in its rendering, in order.
            let mut pos = 0;
            for p in m.parts.iter().filter(|p| m.as_file || p.event.is_none()) {
                let text = match &file {
                    Some(_) => unescape_fence(&p.text),
                    None => std::borrow::Cow::Borrowed(p.text.as_str()),
                };
                let shown = file.as_deref().unwrap_or(content);
                let at = shown[pos..].find(text.as_ref()).expect("a part is shown");
                pos += at + text.len();
            }
            // Pieces: a line's parts are contiguous in one file's stream.
            for p in &m.parts {
                let cur = current.entry(label_file(p)).or_default();
                cur.push_str(&p.text);
                if let Some(c) = p.commit {
                    commits.push(c);
                    lines.push((c.0, unescape_fence(&std::mem::take(cur)).into_owned()));
                }
            }
        }
        assert!(current.values().all(String::is_empty), "a line never ended");
        (lines, commits)
    }

    /// Test labels are `f<N>`: the file a part belongs to.
    fn label_file(p: &Part) -> FileId {
        FileId(p.label.as_deref().map_or(0, |l| l[1..].parse().unwrap()))
    }

    fn label(f: u64) -> Option<Arc<str>> {
        (f > 0).then(|| Arc::from(format!("f{f}")))
    }

    fn event(sev: Severity, title: &str, footer: Option<&str>, m: Option<Mention>) -> EventPart {
        EventPart {
            severity: sev,
            title: title.into(),
            footer: footer.map(Into::into),
            mention: m,
            alert_mention: m,
            covered: false,
            rule: "r".into(),
            more: 0,
        }
    }

    fn any_event() -> impl Strategy<Value = Option<EventPart>> {
        prop_oneof![
            3 => Just(None),
            1 => (
                0usize..5,
                "\\PC{0,300}",
                proptest::option::of("[a-z.é漢`]{0,2600}"),
                proptest::option::of(0u8..3),
            )
                .prop_map(|(s, title, footer, m)| {
                    let mention = m.map(|m| match m {
                        0 => Mention::Role(1),
                        1 => Mention::User(u64::MAX),
                        _ => Mention::Role(424242),
                    });
                    Some(event(Severity::ALL[s], &title, footer.as_deref(), mention))
                }),
        ]
    }

    fn any_line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => line_strategy(),
            1 => "[`\u{200b}x]{0,40}",
            1 => (1usize..4).prop_map(|k| "ab`\u{200b}``é".repeat(k * 4000)),
        ]
    }

    fn any_fold() -> impl Strategy<Value = Fold> {
        prop_oneof![
            Just(Fold::Never),
            (0usize..30).prop_map(Fold::Lines),
            (1u64..3000).prop_map(|ms| Fold::Time {
                min_gap: Duration::from_millis(ms)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        /// Over arbitrary lines, events (titles, footers, mentions) and
        /// folding rules: every payload is within all of Discord's limits,
        /// no message is empty, every event keeps its embed and mention,
        /// and every line comes out whole, in order, committed once.
        #[test]
        fn every_payload_is_valid_and_every_line_comes_out(
            lines in proptest::collection::vec((any_line(), 0u64..3, any_event()), 0..40),
            fold in any_fold(),
            batch in 1usize..20,
        ) {
            let now = t0();
            let mut b = Batcher::new(batch, Duration::from_secs(1)).folding(fold);
            let mut expected = Vec::new();
            let mut offsets = Vec::new();
            for (i, (l, f, ev)) in lines.iter().enumerate() {
                let end = 1000 * (i as u64 + 1);
                b.push_event(FileId(*f), label(*f), l.clone(), end, now, ev.clone());
                expected.push((FileId(*f), l.clone()));
                offsets.push((FileId(*f), end));
            }
            let msgs = drain(&mut b, now);
            let (rebuilt, commits) = audit(&msgs);
            let per_file = |v: &[(FileId, String)], f| v.iter().filter(|(x, _)| *x == f).map(|(_, l)| l.clone()).collect::<Vec<_>>();
            for f in 0..3 {
                prop_assert_eq!(per_file(&rebuilt, FileId(f)), per_file(&expected, FileId(f)));
            }
            prop_assert_eq!(commits, offsets);
        }

        /// The same through the real classifier: Ekos lines with arbitrary
        /// modules and messages, a user rule with a long title and a
        /// mention, in every events mode.
        #[test]
        fn classified_ekos_lines_stay_within_limits(
            lines in proptest::collection::vec(
                (0usize..5, "[a-zA-Z.é漢 `@<>]{0,3000}", "[a-z `]{0,4500}"), 1..12),
            mode in 0usize..3,
        ) {
            let rules = Rules::with_user(&[RuleSpec {
                name: Some("boom".into()),
                pattern: "boom".into(),
                severity: "critical".into(),
                title: "Boom: ${message} ${message}".into(),
                mention: Some("<@&424242>".into()),
                module: None,
            }]).unwrap();
            let filter = Filter::new(&FilterSpec::default()).unwrap();
            let mode = [EventMode::Off, EventMode::On, EventMode::Only][mode];
            let now = t0();
            let mut b = Batcher::new(10, Duration::from_secs(1));
            let mut expected = Vec::new();
            for (i, (lvl, module, msg)) in lines.iter().enumerate() {
                let lvl = ["DEBG", "INFO", "WARN", "CRIT", "boom"][*lvl];
                let (lvl, msg) = if lvl == "boom" { ("INFO", format!("boom {msg}")) } else { (lvl, msg.clone()) };
                let line = format!("[2024-05-01T22:00:00.000 UTC {lvl} ][{module}] - {msg}");
                if let Some(ev) = classify_line(&rules, &filter, mode, &line) {
                    b.push_event(FileId(0), None, line.clone(), i as u64 + 1, now, ev);
                    expected.push((FileId(0), line));
                }
            }
            let msgs = drain(&mut b, now);
            let (rebuilt, _) = audit(&msgs);
            prop_assert_eq!(rebuilt, expected);
        }
    }

    #[test]
    fn bug1_a_long_crit_line_with_a_long_module_is_posted_within_limits() {
        let rules = Rules::builtin();
        let filter = Filter::new(&FilterSpec::default()).unwrap();
        for module_len in [100, 1500, 2100, 3000] {
            let module = "m".repeat(module_len);
            let head = format!("[2024-05-01T22:00:00.000 UTC CRIT ][{module}] - ");
            let line = format!("{head}{}", "z".repeat(3750 - head.chars().count()));
            assert_eq!(line.chars().count(), 3750);
            let ev = classify_line(&rules, &filter, EventMode::On, &line)
                .unwrap()
                .expect("a CRIT line is an event");
            let now = t0();
            let mut b = Batcher::new(10, Duration::from_secs(30));
            b.push_event(FileId(1), None, line.clone(), 3751, now, Some(ev));
            b.push(FileId(1), None, "next".into(), 3756, now);
            let msgs = drain(&mut b, now);
            assert!(msgs.len() <= 3, "{}", msgs.len());
            let (rebuilt, commits) = audit(&msgs);
            assert_eq!(rebuilt, vec![(FileId(1), line), (FileId(1), "next".into())]);
            assert_eq!(commits, vec![(FileId(1), 3751), (FileId(1), 3756)]);
            // The event kept its embed, in the first message.
            let (v, _) = checked(&msgs[0]);
            assert_eq!(v["embeds"].as_array().unwrap().len(), 1);
        }
    }

    #[test]
    fn an_event_longer_than_its_embed_continues_in_the_next_message() {
        let now = t0();
        let mut b = Batcher::new(1, Duration::ZERO);
        let ev = event(Severity::Error, "T", Some("f"), Some(Mention::Role(7)));
        let line = "q".repeat(9000);
        b.push_event(FileId(1), None, line.clone(), 9001, now, Some(ev));
        let msgs = drain(&mut b, now);
        let (rebuilt, commits) = audit(&msgs);
        assert_eq!(rebuilt, vec![(FileId(1), line)]);
        assert_eq!(commits, vec![(FileId(1), 9001)]);
        assert!(
            msgs[0].commits().next().is_none(),
            "commits on the last piece"
        );
        let (v, _) = checked(&msgs[0]);
        let d = v["embeds"][0]["description"].as_str().unwrap();
        let more = 9000 - msgs[0].parts[0].text.len();
        assert!(d.ends_with(&format!("… ({more} more characters in the next message)")));
        assert!(v["content"].as_str().unwrap().starts_with("<@&7>"));
    }

    fn fill(b: &mut Batcher, n: usize, cp: usize, now: Instant) {
        for i in 0..n {
            b.push(FileId(1), None, "x".repeat(cp), i as u64, now);
        }
    }

    #[test]
    fn folding_starts_beyond_a_minute_of_posting() {
        let now = t0();
        let sec = Fold::Time {
            min_gap: Duration::from_secs(1),
        };
        // 60 full messages at one a second: a minute, not folded.
        let mut b = Batcher::new(10, Duration::ZERO).folding(sec);
        fill(&mut b, 60, CONTENT_LIMIT - 1, now);
        assert_eq!(b.estimated_messages(), 60);
        assert!(!b.should_fold());
        assert!(!b.next_message(now).unwrap().as_file);
        // One more line makes it 61: folded.
        let mut b = Batcher::new(10, Duration::ZERO).folding(sec);
        fill(&mut b, 61, CONTENT_LIMIT - 1, now);
        let m = b.next_message(now).unwrap();
        assert!(m.as_file);
        assert_eq!(m.lines(), 61);
        assert!(b.is_empty());
        // At Discord's bucket rate (0.4 s) the limit is 150 messages.
        let bucket = Fold::Time {
            min_gap: limits::min_gap(Duration::ZERO),
        };
        let mut b = Batcher::new(10, Duration::ZERO).folding(bucket);
        fill(&mut b, 150, CONTENT_LIMIT - 1, now);
        assert!(!b.should_fold());
        fill(&mut b, 1, 10, now);
        assert!(b.should_fold());
        // A line count, as configured; 0 never folds.
        let mut b = Batcher::new(10, Duration::ZERO).folding(Fold::Lines(3));
        fill(&mut b, 3, 10, now);
        assert!(!b.should_fold());
        fill(&mut b, 1, 10, now);
        assert!(b.should_fold());
        let mut b = Batcher::new(10, Duration::ZERO);
        fill(&mut b, 5000, 1000, now);
        assert!(!b.should_fold());
    }

    /// Bug 11: an event at the front, in the middle or at the back of a
    /// folded burst keeps its embed and its ping, in order.
    #[test]
    fn events_in_a_folded_burst_keep_embed_and_ping() {
        let now = t0();
        for fold in [
            Fold::Lines(100),
            Fold::Time {
                min_gap: Duration::from_secs(1),
            },
        ] {
            for at in [vec![0], vec![1500], vec![2999], vec![0, 1, 2, 1500, 2999]] {
                let mut b = Batcher::new(10, Duration::from_secs(1)).folding(fold);
                let mut expected = Vec::new();
                for i in 0..3000u64 {
                    let text = format!("{i:05} debug storm ``` {}", "y".repeat(80));
                    let ev = at.contains(&(i as usize)).then(|| {
                        event(
                            Severity::Critical,
                            &format!("E{i}"),
                            None,
                            Some(Mention::Role(9)),
                        )
                    });
                    b.push_event(FileId(1), None, text.clone(), i + 1, now, ev);
                    expected.push((FileId(1), text));
                }
                let msgs = drain(&mut b, now);
                let (rebuilt, commits) = audit(&msgs);
                assert_eq!(rebuilt, expected);
                assert_eq!(commits.len(), 3000);
                assert!(msgs.len() <= 4, "{fold:?} {at:?}: {} messages", msgs.len());
                assert!(msgs[0].as_file);
                let titles: Vec<String> = msgs
                    .iter()
                    .flat_map(|m| {
                        checked(m).0["embeds"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .map(|e| e["title"].as_str().unwrap().to_string())
                    .collect();
                let want: Vec<String> = at.iter().map(|i| format!("E{i}")).collect();
                assert_eq!(titles, want, "{fold:?}");
                for m in msgs
                    .iter()
                    .filter(|m| m.parts.iter().any(|p| p.event.is_some()))
                {
                    let (v, file) = checked(m);
                    assert!(v["content"].as_str().unwrap().starts_with("<@&9> "));
                    assert_eq!(v["allowed_mentions"]["roles"], serde_json::json!(["9"]));
                    if let Some(f) = file {
                        assert!(f.contains("debug storm ``` y"), "fences restored");
                    }
                }
            }
        }
    }

    #[test]
    fn more_than_ten_events_in_a_burst_start_new_messages_in_order() {
        let now = t0();
        let mut b = Batcher::new(10, Duration::from_secs(1)).folding(Fold::Lines(10));
        let mut expected = Vec::new();
        for i in 0..100u64 {
            let text = format!("line {i} {}", "w".repeat(900));
            let ev =
                (i % 4 == 0).then(|| event(Severity::Error, &format!("E{i}"), Some("mod"), None));
            b.push_event(FileId(1), None, text.clone(), i + 1, now, ev);
            expected.push((FileId(1), text));
        }
        let msgs = drain(&mut b, now);
        let (rebuilt, _) = audit(&msgs);
        assert_eq!(rebuilt, expected);
        let embeds: usize = msgs
            .iter()
            .map(|m| checked(m).0["embeds"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(embeds, 25);
        assert!(msgs.len() >= 3 && msgs.iter().take(3).all(|m| m.as_file));
    }

    /// Bug 12: a 10 MiB line, handed out by the tailer in 64 KiB pieces,
    /// becomes a handful of messages, not 5,000.
    #[test]
    fn a_10_mib_line_takes_a_handful_of_messages() {
        let now = t0();
        let piece = "x".repeat(crate::tail::MAX_LINE);
        let pieces = 10 * 1024 * 1024 / crate::tail::MAX_LINE;
        let fold = Fold::Time {
            min_gap: limits::min_gap(Duration::from_secs(1)),
        };
        // All of it waiting at once: two attachments (8 MiB each at most).
        let mut b = Batcher::new(10, Duration::from_secs(30)).folding(fold);
        for k in 0..pieces {
            b.push(FileId(1), None, piece.clone(), (k as u64 + 1) * 65536, now);
        }
        let msgs = drain(&mut b, now);
        assert_eq!(msgs.len(), 2);
        let (_, commits) = audit(&msgs);
        assert_eq!(commits.len(), pieces);
        // As the sender takes it, with at most a route's budget waiting: a message
        // is taken each time the queue is full.
        let mut b = Batcher::new(10, Duration::from_secs(30)).folding(fold);
        let mut next = 0;
        let mut count = 0;
        while next < pieces || !b.is_empty() {
            while next < pieces && b.queued_bytes() < crate::sender::ROUTE_BUDGET {
                b.push(
                    FileId(1),
                    None,
                    piece.clone(),
                    (next as u64 + 1) * 65536,
                    now,
                );
                next += 1;
            }
            let m = b
                .next_message(now)
                .expect("ten pieces wait: the batch is due");
            assert!(m.as_file);
            checked(&m);
            count += 1;
        }
        // One attachment per budget's worth: 10 MiB / 1 MiB, plus the
        // piece that crosses the budget's edge.
        assert!(count <= 11, "{count} messages");
        // Without folding (attachment_threshold = 0) it is the prototype's
        // one message per 2000 code points.
        let mut b = Batcher::new(10, Duration::from_secs(30));
        for k in 0..4 {
            b.push(FileId(1), None, piece.clone(), (k + 1) * 65536, now);
        }
        assert_eq!(
            drain(&mut b, now).len(),
            4 * piece.len().div_ceil(CONTENT_LIMIT - 8)
        );
    }

    #[test]
    fn a_line_over_a_piece_is_queued_as_pieces_that_commit_once() {
        let now = t0();
        let mut b = Batcher::new(1, Duration::ZERO).folding(Fold::Lines(0));
        let line = "é".repeat(PIECE_BYTES);
        b.push(FileId(1), None, line.clone(), 77, now);
        assert_eq!(b.len(), 2);
        let msgs = drain(&mut b, now);
        let (rebuilt, commits) = audit(&msgs);
        assert_eq!(rebuilt, vec![(FileId(1), line)]);
        assert_eq!(commits, vec![(FileId(1), 77)]);
    }

    #[test]
    fn fallback_turns_a_rejected_line_into_an_attachment() {
        let now = t0();
        let mut b = Batcher::new(1, Duration::ZERO);
        let ev = event(Severity::Error, "T", None, Some(Mention::User(5)));
        b.push_event(
            FileId(3),
            label(3),
            "bad ``` line".into(),
            12,
            now,
            Some(ev),
        );
        let m = b.next_message(now).unwrap();
        let f = m
            .clone()
            .fallback()
            .expect("an embed message has a fallback");
        assert!(f.as_file);
        assert_eq!(
            f.commits().collect::<Vec<_>>(),
            m.commits().collect::<Vec<_>>()
        );
        let (v, file) = checked(&f);
        assert_eq!(file.unwrap(), "==> f3 <==\nbad ``` line\n");
        assert!(v["content"].as_str().unwrap().starts_with("1 line"));
        assert!(f.fallback().is_none(), "already a plain attachment");
        b.push(FileId(3), label(3), "plain".into(), 20, now);
        let plain = b.next_message(now).unwrap().fallback().unwrap();
        assert_eq!(checked(&plain).1.unwrap(), "==> f3 <==\nplain\n");
    }
}
