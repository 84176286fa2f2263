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
}
