//! Where to start reading a file when it is (again) followed: a pure
//! decision, so that every case is a unit test.
//!
//! A file the checkpoint knows resumes at its delivered offset, unless the
//! content there is no longer what was read: the file is shorter than that
//! offset, or the bytes just before the last read position (the [`Mark`])
//! hash differently. Such a file was rewritten (`>` from a job, a cron
//! script) and is read again from its first byte under a new checkpoint
//! identity, so that no offset of the old content is taken for a position
//! in the new one. An unknown file starts at 0 when it is new or changed
//! while the daemon was stopped, otherwise where `start_at` says.

use crate::checkpoint::{Mark, fingerprint};
use crate::config::StartAt;

/// What the checkpoint says of a file it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known<'a> {
    /// Delivered up to this offset.
    pub delivered: u64,
    /// The last read noted, if any.
    pub mark: Option<Mark>,
    /// The file's bytes `[mark.offset - mark.len, mark.offset)` now (fewer
    /// if the file is shorter); `None` when there is no mark or they could
    /// not be read.
    pub at_mark: Option<&'a [u8]>,
    /// How far this process read the file before letting it go (its lines
    /// may still be on their way to Discord): resuming there posts nothing
    /// twice.
    pub read_upto: Option<u64>,
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    pub known: Option<Known<'a>>,
    /// The file's current size.
    pub size: u64,
    pub start_at: StartAt,
    /// The file appeared while the daemon runs (all of it is new).
    pub new_while_running: bool,
    /// The source was followed before and the file was modified since the
    /// daemon last ran with it.
    pub changed_while_stopped: bool,
}

/// Where to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    At(u64),
    /// After the last complete line (the caller reads the file to find it).
    LastLineEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub at: Position,
    /// Keep the checkpoint record that was claimed (else: a new one).
    pub keep_id: bool,
    /// For the log line.
    pub why: &'static str,
}

/// Whether the bytes at the mark are still the ones that were read.
pub fn mark_holds(mark: &Mark, size: u64, at_mark: Option<&[u8]>) -> bool {
    mark.offset <= size
        && at_mark.is_some_and(|b| b.len() == mark.len as usize && fingerprint(b) == mark.hash)
}

pub fn decide(f: &Facts) -> Decision {
    if let Some(k) = f.known {
        let rewritten = k.delivered > f.size
            || k.mark
                .is_some_and(|m| m.len > 0 && !mark_holds(&m, f.size, k.at_mark));
        if rewritten {
            return Decision {
                at: Position::At(0),
                keep_id: false,
                why: "rewritten since it was read: from the start",
            };
        }
        let at = k
            .read_upto
            .filter(|r| *r <= f.size)
            .map_or(k.delivered, |r| r.max(k.delivered));
        return Decision {
            at: Position::At(at),
            keep_id: true,
            why: "checkpoint",
        };
    }
    let (at, why) = if f.new_while_running {
        (Position::At(0), "new file")
    } else if f.changed_while_stopped {
        (Position::At(0), "changed while stopped")
    } else {
        match f.start_at {
            StartAt::Beginning => (Position::At(0), "start_at = beginning"),
            StartAt::End => (Position::LastLineEnd, "start_at = end"),
        }
    };
    Decision {
        at,
        keep_id: false,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &[u8] = b"header line\nfirst token\nsecond token\n";

    fn mark_at(content: &[u8], offset: usize) -> Mark {
        let len = offset.min(64);
        Mark {
            offset: offset as u64,
            len: len as u32,
            hash: fingerprint(&content[offset - len..offset]),
        }
    }

    fn bytes_at<'a>(content: &'a [u8], m: &Mark) -> &'a [u8] {
        let end = (m.offset as usize).min(content.len());
        let start = (m.offset - m.len as u64) as usize;
        &content[start.min(end)..end]
    }

    fn facts(known: Option<Known>, size: u64) -> Facts {
        Facts {
            known,
            size,
            start_at: StartAt::End,
            new_while_running: false,
            changed_while_stopped: false,
        }
    }

    #[test]
    fn known_file_with_intact_mark_resumes_at_the_delivered_offset() {
        let m = mark_at(CONTENT, CONTENT.len());
        let d = decide(&facts(
            Some(Known {
                delivered: 12,
                mark: Some(m),
                at_mark: Some(bytes_at(CONTENT, &m)),
                read_upto: None,
            }),
            CONTENT.len() as u64,
        ));
        assert_eq!(d.at, Position::At(12));
        assert!(d.keep_id);
    }

    #[test]
    fn known_file_without_mark_resumes_when_long_enough() {
        let k = Known {
            delivered: 24,
            mark: None,
            at_mark: None,
            read_upto: None,
        };
        let d = decide(&facts(Some(k), 24));
        assert_eq!((d.at, d.keep_id), (Position::At(24), true));
        let d = decide(&facts(Some(k), 23));
        assert_eq!((d.at, d.keep_id), (Position::At(0), false));
    }

    #[test]
    fn same_length_rewrite_with_same_header_starts_over() {
        let new = b"header line\nfirst TOKEN\nsecond TOKEN\n";
        assert_eq!(new.len(), CONTENT.len());
        let m = mark_at(CONTENT, CONTENT.len());
        let d = decide(&facts(
            Some(Known {
                delivered: CONTENT.len() as u64,
                mark: Some(m),
                at_mark: Some(bytes_at(new, &m)),
                read_upto: None,
            }),
            new.len() as u64,
        ));
        assert_eq!((d.at, d.keep_id), (Position::At(0), false));
    }

    #[test]
    fn longer_rewrite_with_same_header_starts_over() {
        let new = b"header line\nother token\nmore other tokens\nand more\n";
        let m = mark_at(CONTENT, CONTENT.len());
        let d = decide(&facts(
            Some(Known {
                delivered: 12,
                mark: Some(m),
                at_mark: Some(bytes_at(new, &m)),
                read_upto: None,
            }),
            new.len() as u64,
        ));
        assert_eq!((d.at, d.keep_id), (Position::At(0), false));
    }

    #[test]
    fn shorter_than_the_mark_or_the_delivered_offset_starts_over() {
        let m = mark_at(CONTENT, CONTENT.len());
        let short = &CONTENT[..20];
        let d = decide(&facts(
            Some(Known {
                delivered: 12,
                mark: Some(m),
                at_mark: Some(bytes_at(short, &m)),
                read_upto: None,
            }),
            short.len() as u64,
        ));
        assert_eq!((d.at, d.keep_id), (Position::At(0), false));
        // Unreadable bytes at the mark count as changed.
        let d = decide(&facts(
            Some(Known {
                delivered: 12,
                mark: Some(m),
                at_mark: None,
                read_upto: None,
            }),
            CONTENT.len() as u64,
        ));
        assert!(!d.keep_id);
    }

    #[test]
    fn appended_file_keeps_its_mark_and_resumes() {
        let mut grown = CONTENT.to_vec();
        grown.extend_from_slice(b"third token\n");
        let m = mark_at(CONTENT, CONTENT.len());
        let d = decide(&facts(
            Some(Known {
                delivered: 24,
                mark: Some(m),
                at_mark: Some(bytes_at(&grown, &m)),
                read_upto: None,
            }),
            grown.len() as u64,
        ));
        assert_eq!((d.at, d.keep_id), (Position::At(24), true));
    }

    #[test]
    fn empty_mark_at_zero_always_holds() {
        let m = Mark {
            offset: 0,
            len: 0,
            hash: fingerprint(b""),
        };
        let d = decide(&facts(
            Some(Known {
                delivered: 0,
                mark: Some(m),
                at_mark: None,
                read_upto: None,
            }),
            0,
        ));
        assert_eq!((d.at, d.keep_id), (Position::At(0), true));
    }

    #[test]
    fn read_upto_of_this_process_wins_over_an_older_delivered_offset() {
        let m = mark_at(CONTENT, CONTENT.len());
        let k = Known {
            delivered: 12,
            mark: Some(m),
            at_mark: Some(bytes_at(CONTENT, &m)),
            read_upto: Some(CONTENT.len() as u64),
        };
        let d = decide(&facts(Some(k), CONTENT.len() as u64));
        assert_eq!(d.at, Position::At(CONTENT.len() as u64));
        // Beyond the end (cannot happen with an intact mark, but never
        // start past the end): the delivered offset.
        let k = Known {
            read_upto: Some(1000),
            ..k
        };
        assert_eq!(
            decide(&facts(Some(k), CONTENT.len() as u64)).at,
            Position::At(12)
        );
    }

    #[test]
    fn unknown_files() {
        let base = facts(None, 100);
        assert_eq!(decide(&base).at, Position::LastLineEnd);
        let b = Facts {
            start_at: StartAt::Beginning,
            ..base
        };
        assert_eq!(decide(&b).at, Position::At(0));
        let n = Facts {
            new_while_running: true,
            ..base
        };
        assert_eq!(decide(&n).at, Position::At(0));
        let c = Facts {
            changed_while_stopped: true,
            ..base
        };
        assert_eq!(decide(&c).at, Position::At(0));
        for f in [base, b, n, c] {
            assert!(!decide(&f).keep_id);
        }
    }

    /// Seeded random contents and rewrites: the decision keeps the id
    /// exactly when the content up to the mark is unchanged (the oracle).
    #[test]
    fn random_rewrites_against_an_oracle() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..2000 {
            let old: Vec<u8> = (0..1 + next(300)).map(|_| b'a' + next(3) as u8).collect();
            let off = next(old.len() as u64 + 1) as usize;
            let m = mark_at(&old, off);
            let new: Vec<u8> = match next(3) {
                0 => {
                    let mut v = old.clone();
                    v.extend((0..next(50)).map(|_| b'a' + next(3) as u8));
                    v
                }
                1 => (0..next(400)).map(|_| b'a' + next(3) as u8).collect(),
                _ => {
                    let mut v = old.clone();
                    if !v.is_empty() {
                        let i = next(v.len() as u64) as usize;
                        v[i] = b'z';
                    }
                    v
                }
            };
            let same_prefix = new.len() >= off && new[..off] == old[..off];
            let window_same = new.len() >= off
                && new[off - m.len as usize..off] == old[off - m.len as usize..off];
            let d = decide(&facts(
                Some(Known {
                    delivered: off as u64,
                    mark: Some(m),
                    at_mark: Some(bytes_at(&new, &m)),
                    read_upto: None,
                }),
                new.len() as u64,
            ));
            // A change inside the mark's window is always noticed; an
            // unchanged prefix always resumes.
            if same_prefix {
                assert!(d.keep_id);
                assert_eq!(d.at, Position::At(off as u64));
            }
            if !window_same {
                assert!(!d.keep_id);
                assert_eq!(d.at, Position::At(0));
            }
        }
    }
}
