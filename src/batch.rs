//! When to send, and what goes into each message: a pure, clock-free struct.
//!
//! The prototype's rule decides *when*: a batch goes out as soon as
//! `BATCH_SIZE` lines wait, otherwise `BATCH_TIMEOUT` after the last line
//! arrived (each line resets the timer), and never later than twice
//! `BATCH_TIMEOUT` after the oldest waiting line arrived. Packing decides
//! *what*: each message takes as many whole waiting lines as fit in
//! Discord's 2000 code points, so a backlog drains in the fewest requests;
//! a line longer than a message is cut into pieces, in order, never
//! truncated. The caller passes `now` in, so tests need no clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::FileId;
use crate::format::{self, CONTENT_LIMIT, EventPart, Message, Part};

#[derive(Debug)]
struct Entry {
    file: FileId,
    label: Option<Arc<str>>,
    /// Sanitized and fence-escaped.
    text: String,
    cp: usize,
    end: u64,
    seq: u64,
    arrived: Instant,
    event: Option<Box<EventPart>>,
}

#[derive(Debug)]
pub struct Batcher {
    queue: VecDeque<Entry>,
    batch_size: usize,
    timeout: Duration,
    next_seq: u64,
    /// Every entry with `seq < flush_before` is due now.
    flush_before: u64,
    last_arrival: Option<Instant>,
    queued_cp: usize,
    queued_bytes: usize,
}

impl Batcher {
    pub fn new(batch_size: usize, timeout: Duration) -> Batcher {
        Batcher {
            queue: VecDeque::new(),
            batch_size: batch_size.max(1),
            timeout,
            next_seq: 0,
            flush_before: 0,
            last_arrival: None,
            queued_cp: 0,
            queued_bytes: 0,
        }
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

    /// Queues a line that is shown as an embed when `event` is set.
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
        let text = match format::escape_fence(&text) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(escaped) => escaped,
        };
        let cp = text.chars().count();
        self.queued_cp += cp + 1;
        self.queued_bytes += text.len();
        self.queue.push_back(Entry {
            file,
            label,
            text,
            cp,
            end,
            seq: self.next_seq,
            arrived: now,
            event: event.map(Box::new),
        });
        self.next_seq += 1;
        self.last_arrival = Some(now);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

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

    /// Takes the front line whole, as a part that commits its offset.
    fn pop_part(&mut self) -> Part {
        let e = self.queue.pop_front().expect("front exists");
        self.queued_cp -= e.cp + 1;
        self.queued_bytes -= e.text.len();
        Part {
            label: e.label,
            commit: Some((e.file, e.end)),
            text: e.text,
            event: e.event,
        }
    }

    /// Whether the next line is notable (it then goes as an embed, never
    /// into an attachment).
    pub fn front_is_event(&self) -> bool {
        self.queue.front().is_some_and(|e| e.event.is_some())
    }

    /// Takes up to [`format::FILE_MAX`] bytes of waiting lines as one
    /// attachment message (a burst: fewer requests, nothing lost).
    pub fn take_file_message(&mut self) -> Message {
        let mut msg = Message {
            parts: Vec::new(),
            as_file: true,
        };
        let mut size = 0;
        while let Some(front) = self.queue.front() {
            // Events keep their embed and mention: the file stops before one.
            if !msg.parts.is_empty()
                && (size + front.text.len() + 1 > format::FILE_MAX || front.event.is_some())
            {
                break;
            }
            let part = self.pop_part();
            size += part.text.len() + 1;
            msg.parts.push(part);
        }
        if self.queue.is_empty() {
            self.last_arrival = None;
        }
        msg
    }

    /// Packs the next message from the front of the queue. When the batch
    /// rule fired, everything waiting at that moment becomes due, so it all
    /// goes out back to back even if it takes several messages.
    pub fn take_message(&mut self, now: Instant) -> Message {
        if self.rule_fires(now) {
            self.flush_all();
        }
        let mut msg = Message::default();
        let mut used = 0;
        while let Some(front) = self.queue.front_mut() {
            if let Some(ev) = &front.event {
                // Events ride as embeds after the code block; a mention
                // costs a few code points of content.
                let mention_cost = if ev.mention.is_some() { 32 } else { 0 };
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
            let room = CONTENT_LIMIT - used;
            let overhead = msg.cost_of_adding(&front.label, 0);
            if room <= overhead {
                break;
            }
            let take = room - overhead;
            let split_at = front
                .text
                .char_indices()
                .nth(take)
                .map(|(i, _)| i)
                .unwrap_or(front.text.len());
            let piece: String = front.text[..split_at].to_string();
            front.text.drain(..split_at);
            front.cp -= take;
            self.queued_cp -= take;
            self.queued_bytes -= piece.len();
            msg.parts.push(Part {
                label: front.label.clone(),
                text: piece,
                commit: None,
                event: None,
            });
            break;
        }
        if self.queue.is_empty() {
            self.last_arrival = None;
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
        while b.is_ready(now) {
            out.push(b.take_message(now));
        }
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
        let m = b.take_message(now);
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
