//! What the night watch already observed of each file, so a line read
//! twice is counted once.
//!
//! The checkpoint records what Discord accepted, not what the watcher
//! read: after a crash (`kill -9`) or a reload the watcher reads again the
//! lines it had read but Discord had not accepted, and the night watch gets
//! them a second time. Counted again they would add a frame to the night
//! card, a repeat to an incident, or replay a session state. So the watch
//! keeps, per file identity (the checkpoint's [`FileId`]), the end offset
//! of the last line it observed, saves it with the rest of its state, and
//! skips the lines of a chunk that end at or before it.
//!
//! A file truncated or rewritten gets a new identity from the watcher
//! (its new content starts from 0 as a new file), so its new lines are
//! never taken for old ones; the rest of the old content read from a
//! rotated copy keeps the old identity and the old offsets. An identity is
//! only compared together with a hash of the file's path: a record that
//! the checkpoint had not yet written when the daemon died, or that it
//! expired, lets the next run give its number to another file, whose lines
//! must not be skipped for it (a file renamed while followed is taken for
//! a new one: its lines after the rename are new anyway). At most
//! [`MAX_FILES`] files are remembered, the least recently seen forgotten.

use std::collections::VecDeque;
use std::path::Path;

use crate::checkpoint::FileId;

/// Files remembered; beyond, the least recently seen is forgotten (a file
/// not read for that long is not read again from an old offset).
pub const MAX_FILES: usize = 256;

/// The end of the last line observed of one file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub file: u64,
    /// [`path_hash`] of the file's path.
    pub path: u64,
    pub end: u64,
}

/// Per file, the end of the last line observed; the least recently seen
/// first. Saved as is in the night watch's state.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Observed {
    files: VecDeque<Mark>,
}

/// A stable hash of a path (FNV-1a over its bytes): saved in the state, so
/// it must not change between runs or builds, as the standard hasher may.
pub fn path_hash(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

impl Observed {
    /// The lines ending at `ends` (increasing offsets) of `file` at `path`
    /// are observed: returns how many of the first ones were observed
    /// already (to skip), and remembers the new end.
    pub fn fresh(&mut self, file: FileId, path: &Path, ends: &[u64]) -> usize {
        let Some(&last) = ends.last() else {
            return 0;
        };
        let path = path_hash(path);
        let found = self.files.iter().rposition(|m| m.file == file.0);
        let (skip, end) = match found.and_then(|i| self.files.remove(i)) {
            Some(m) if m.path == path => (ends.partition_point(|e| *e <= m.end), m.end.max(last)),
            // Another file with that number, or none remembered.
            _ => (0, last),
        };
        if self.files.len() >= MAX_FILES {
            self.files.pop_front();
        }
        self.files.push_back(Mark {
            file: file.0,
            path,
            end,
        });
        skip
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }

    /// Seeded: a few files, each read as a stream of lines, delivered as
    /// chunks that may start again anywhere before what was delivered (a
    /// re-read after a crash) and may be forgotten in between (a
    /// restart from the saved state, round-tripped through JSON): every
    /// line is let through exactly once, in order.
    #[test]
    fn every_line_is_let_through_once_whatever_is_read_again() {
        for seed in 1..=60 {
            let mut next = rng(seed);
            let mut o = Observed::default();
            let files = 1 + next(4) as usize;
            // Per file: line ends, and how far chunks were read.
            let ends: Vec<Vec<u64>> = (0..files)
                .map(|_| {
                    let mut e = 0;
                    (0..200)
                        .map(|_| {
                            e += 1 + next(120);
                            e
                        })
                        .collect()
                })
                .collect();
            let mut read = vec![0usize; files];
            let mut through: Vec<Vec<u64>> = vec![vec![]; files];
            for _ in 0..300 {
                let f = next(files as u64) as usize;
                if next(10) == 0 {
                    o = serde_json::from_slice(&serde_json::to_vec(&o).unwrap()).unwrap();
                }
                // A re-read starts at most 30 lines back.
                let from = read[f].saturating_sub(next(30) as usize);
                let to = (from + 1 + next(20) as usize).min(ends[f].len());
                let chunk = &ends[f][from..to];
                let path = format!("/logs/{f}.txt");
                let skip = o.fresh(FileId(f as u64), Path::new(&path), chunk);
                through[f].extend_from_slice(&chunk[skip..]);
                read[f] = read[f].max(to);
            }
            for f in 0..files {
                assert_eq!(through[f], ends[f][..read[f]], "seed {seed}, file {f}");
            }
        }
    }

    #[test]
    fn a_new_identity_or_another_path_is_a_new_file_and_the_oldest_is_forgotten() {
        let mut o = Observed::default();
        let p = Path::new("/logs/a.txt");
        assert_eq!(o.fresh(FileId(1), p, &[10, 20]), 0);
        assert_eq!(o.fresh(FileId(1), p, &[10, 20, 30]), 2);
        // Rewritten: the watcher gives the new content a new identity.
        assert_eq!(o.fresh(FileId(2), p, &[5, 10]), 0);
        // The number reused for another file (a record lost in a crash).
        assert_eq!(o.fresh(FileId(1), Path::new("/logs/b.txt"), &[10]), 0);
        assert_eq!(o.fresh(FileId(1), Path::new("/logs/b.txt"), &[10]), 1);
        assert_eq!(o.fresh(FileId(9), p, &[]), 0, "nothing to observe");
        for i in 100..100 + MAX_FILES as u64 {
            o.fresh(FileId(i), p, &[1]);
        }
        assert_eq!(o.len(), MAX_FILES);
        assert_eq!(o.fresh(FileId(2), p, &[5, 10]), 0, "forgotten");
        assert_eq!(o.fresh(FileId(100 + MAX_FILES as u64 - 1), p, &[1]), 1);
    }
}
