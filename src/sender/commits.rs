//! Which offsets are safe to commit, per file: a pure tracker.
//!
//! A line is delivered when the route of its file got it accepted. A
//! notable line may also have an alert copy on the alerts webhook; until
//! that copy is accepted the checkpoint must not move past the line's
//! start, or a restart would lose the alert. So the tracker keeps, per
//! file, the starts of lines whose alert copy is pending (`holds`, in file
//! order) and, while a file has holds, the furthest offset its route
//! delivered (`delivered`); what it returns to commit is that offset
//! clamped by the first hold. Both maps only hold files with pending
//! alerts, so memory stays bounded by the alert backlog.

use std::collections::{HashMap, VecDeque};

use crate::checkpoint::FileId;

#[derive(Debug, Default)]
pub struct Commits {
    /// Per file, the start offsets of lines whose alert copy is not
    /// delivered yet, in file order.
    holds: HashMap<FileId, VecDeque<u64>>,
    /// Per file with holds, what its route delivered (before clamping).
    delivered: HashMap<FileId, u64>,
}

impl Commits {
    /// An alert copy of the line starting at `start` was queued.
    pub fn hold(&mut self, file: FileId, start: u64) {
        self.holds.entry(file).or_default().push_back(start);
    }

    pub fn has_holds(&self) -> bool {
        !self.holds.is_empty()
    }

    /// The offset the checkpoint may record for a file: what was
    /// delivered, but never past a line whose alert is still pending.
    pub fn clamp(&self, file: FileId, offset: u64) -> u64 {
        match self.holds.get(&file).and_then(|h| h.front()) {
            Some(h) => offset.min(*h),
            None => offset,
        }
    }

    /// A line route got lines accepted, each ending at the given offset:
    /// returns what to commit (one offset per file, clamped by holds).
    pub fn delivered(
        &mut self,
        commits: impl IntoIterator<Item = (FileId, u64)>,
    ) -> Vec<(FileId, u64)> {
        // A file's lines are in order: only the last offset per file matters.
        let mut last: Vec<(FileId, u64)> = Vec::new();
        for (file, offset) in commits {
            match last.iter_mut().find(|(f, _)| *f == file) {
                Some(slot) => slot.1 = offset,
                None => last.push((file, offset)),
            }
        }
        for (file, offset) in last.iter_mut() {
            if self.holds.contains_key(file) {
                self.delivered.insert(*file, *offset);
                *offset = self.clamp(*file, *offset);
            }
        }
        last
    }

    /// The alerts route got alert copies accepted, each naming its line's
    /// start: releases their holds and returns what may be committed now.
    pub fn alerts_delivered(
        &mut self,
        starts: impl IntoIterator<Item = (FileId, u64)>,
    ) -> Vec<(FileId, u64)> {
        let mut touched: Vec<FileId> = Vec::new();
        for (file, start) in starts {
            let Some(h) = self.holds.get_mut(&file) else {
                // Its hold was dropped while the alerts webhook failed.
                continue;
            };
            // Holds are in file order; a copy releases its own hold and
            // any older one (dropped copies leave none behind).
            while h.front().is_some_and(|f| *f <= start) {
                h.pop_front();
            }
            if !touched.contains(&file) {
                touched.push(file);
            }
        }
        let mut out = Vec::new();
        for file in touched {
            if let Some(done) = self.delivered.get(&file).copied() {
                out.push((file, self.clamp(file, done)));
            }
            if self.holds.get(&file).is_some_and(|h| h.is_empty()) {
                self.holds.remove(&file);
                self.delivered.remove(&file);
            }
        }
        out
    }

    /// Alert copies stop holding the checkpoint back (the alerts webhook
    /// fails, or too many copies wait): returns what may be committed now.
    pub fn drop_holds(&mut self) -> Vec<(FileId, u64)> {
        self.holds.clear();
        self.delivered.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: FileId = FileId(1);
    const G: FileId = FileId(2);

    #[test]
    fn without_alerts_the_last_offset_per_file_is_committed() {
        let mut c = Commits::default();
        let out = c.delivered([(F, 10), (G, 5), (F, 20)]);
        assert_eq!(out, vec![(F, 20), (G, 5)]);
        assert!(!c.has_holds());
    }

    #[test]
    fn a_pending_alert_holds_the_checkpoint_at_its_line() {
        let mut c = Commits::default();
        c.hold(F, 10); // line 10..20 has an alert copy
        assert_eq!(c.delivered([(F, 10), (F, 20), (F, 30)]), vec![(F, 10)]);
        assert_eq!(c.clamp(F, 30), 10);
        // Another file is not held.
        assert_eq!(c.delivered([(G, 7)]), vec![(G, 7)]);
        assert_eq!(c.alerts_delivered([(F, 10)]), vec![(F, 30)]);
        assert!(!c.has_holds());
        assert!(c.delivered.is_empty(), "maps are pruned");
    }

    #[test]
    fn an_alert_before_its_line_is_delivered_commits_nothing_yet() {
        let mut c = Commits::default();
        c.hold(F, 10);
        c.hold(F, 40);
        assert_eq!(c.alerts_delivered([(F, 10)]), vec![]);
        assert_eq!(c.delivered([(F, 50)]), vec![(F, 40)]);
        assert_eq!(c.alerts_delivered([(F, 40)]), vec![(F, 50)]);
    }

    #[test]
    fn dropped_holds_release_the_checkpoint_and_stale_copies_release_nothing_new() {
        let mut c = Commits::default();
        c.hold(F, 10);
        assert_eq!(c.delivered([(F, 30)]), vec![(F, 10)]);
        assert_eq!(c.drop_holds(), vec![(F, 30)]);
        // A new alert after the drop...
        c.hold(F, 50);
        // ...is not released by the old copy's late delivery.
        assert_eq!(c.alerts_delivered([(F, 10)]), vec![]);
        assert_eq!(c.delivered([(F, 60)]), vec![(F, 50)]);
        assert_eq!(c.alerts_delivered([(F, 50)]), vec![(F, 60)]);
    }

    proptest! {
        /// Random interleavings of lines (some with alerts) delivered by
        /// the lines route and the alerts route, each in order: a commit
        /// never passes the start of a line whose alert is pending, never
        /// passes what was delivered, and once both routes caught up, the
        /// last commit is the last delivered offset.
        #[test]
        fn commits_are_safe_and_complete(
            alerts in proptest::collection::vec(any::<bool>(), 1..40),
            order in proptest::collection::vec(any::<bool>(), 0..80),
        ) {
            let mut c = Commits::default();
            // Line i spans 10*i .. 10*(i+1).
            let with_alert: Vec<u64> = alerts.iter().enumerate().filter(|(_, a)| **a).map(|(i, _)| i as u64).collect();
            for i in &with_alert {
                c.hold(F, 10 * i);
            }
            let (mut lines_done, mut alerts_done) = (0usize, 0usize);
            let mut committed = 0u64;
            let mut check = |out: Vec<(FileId, u64)>, lines_done: usize, alerts_done: usize| {
                for (_, off) in out {
                    prop_assert!(off <= 10 * lines_done as u64);
                    if let Some(pending) = with_alert.get(alerts_done) {
                        prop_assert!(off <= 10 * pending);
                    }
                    committed = off;
                }
                Ok(())
            };
            let steps = order.into_iter().chain(std::iter::repeat_n(true, alerts.len())).chain(std::iter::repeat_n(false, alerts.len()));
            for lines_first in steps {
                if lines_first && lines_done < alerts.len() {
                    lines_done += 1;
                    let out = c.delivered([(F, 10 * lines_done as u64)]);
                    check(out, lines_done, alerts_done)?;
                } else if alerts_done < with_alert.len() {
                    let start = 10 * with_alert[alerts_done];
                    alerts_done += 1;
                    let out = c.alerts_delivered([(F, start)]);
                    check(out, lines_done, alerts_done)?;
                }
            }
            prop_assert_eq!(committed, 10 * alerts.len() as u64);
            prop_assert!(!c.has_holds());
        }
    }
}
