//! After a truncation: the unread end of the old content, from the copy
//! logrotate's `copytruncate` made just before truncating.
//!
//! Lines written between our last read and the truncation exist only in
//! the copy. [`find`] looks beside the file for a copy of the old content
//! (same first bytes, same bytes at the old [`Mark`], longer than it), and
//! a [`Recovery`] reads it from the mark on, [`READ_CHUNK`] at a time like
//! any file, so the caller sends its lines through the same bounded path
//! with the same backpressure: a 120 MB backlog in the copy never sits in
//! memory. Its lines belong to the old content's checkpoint identity,
//! which moves to the copy (`Store::moved`): a restart then finds the copy
//! delivered as far as it was, instead of a new file to read again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{FileId, Mark, fingerprint};
use crate::tail::{self, Line, READ_CHUNK, Tailer};

use super::dirs::is_compressed;

/// Reading the end of a copy.
#[derive(Debug)]
pub struct Recovery {
    copy: Tailer,
    /// Lines sent so far, for the log line at the end.
    pub lines: usize,
}

/// One step of a recovery.
pub struct Step {
    /// Offset where the first line begins.
    pub start: u64,
    pub lines: Vec<Line>,
    /// The copy was read to its end (the last unfinished line included).
    pub done: bool,
}

/// Looks in `path`'s directory for a copy of the old content: a regular
/// file other than `own` (device, inode), uncompressed, longer than the
/// old mark or as long (then only the identity moves), whose first bytes are `old_fp` and whose bytes at the mark are
/// the ones read.
pub fn find(
    path: &Path,
    own: (u64, u64),
    old: &Mark,
    old_fp: &[u8],
    id: FileId,
    source: usize,
    label: Option<Arc<str>>,
) -> Option<Recovery> {
    use std::os::unix::fs::MetadataExt;
    if old_fp.is_empty() {
        return None;
    }
    let dir = path.parent()?;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if is_compressed(&p) {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() && m.len() >= old.offset && (m.dev(), m.ino()) != own => {}
            _ => continue,
        }
        let Ok((file, meta)) = tail::open_regular(&p) else {
            continue;
        };
        if tail::first_bytes(&file, old_fp.len()).ok().as_deref() != Some(old_fp) {
            continue;
        }
        let at_mark = tail::read_mark(&file, old).ok();
        if at_mark.is_none_or(|b| b.len() != old.len as usize || fingerprint(&b) != old.hash) {
            continue;
        }
        let Ok(copy) = Tailer::new(id, source, p, label.clone(), file, &meta, old.offset) else {
            continue;
        };
        return Some(Recovery { copy, lines: 0 });
    }
    None
}

impl Recovery {
    /// The old content's checkpoint identity.
    pub fn id(&self) -> FileId {
        self.copy.id
    }

    pub fn path(&self) -> &PathBuf {
        &self.copy.path
    }

    /// The copy's device and inode.
    pub fn file(&self) -> (u64, u64) {
        (self.copy.dev, self.copy.ino)
    }

    /// Reads the next [`READ_CHUNK`] of the copy.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Step {
        let start = self.copy.line_end();
        let mut lines = Vec::new();
        let done = match self.copy.read(buf, &mut lines, READ_CHUNK) {
            Ok(r) => !r.more || r.restarted,
            Err(_) => true,
        };
        if done {
            lines.extend(self.copy.take_partial());
        }
        self.lines += lines.len();
        Step { start, lines, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_the_copy_and_streams_its_end_in_bounded_steps() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let mut content = Vec::new();
        for i in 0..40_000 {
            writeln!(content, "line number {i:08} of the old content").unwrap();
        }
        std::fs::write(&log, &content).unwrap();
        let (f, m) = tail::open_regular(&log).unwrap();
        let read_to = 1000 * (content.len() / 40_000) as u64;
        let t = Tailer::new(FileId(1), 0, log.clone(), None, f, &m, 0).unwrap();
        let fp = tail::first_bytes(&std::fs::File::open(&log).unwrap(), 512).unwrap();
        let mark = tail::mark_at(&std::fs::File::open(&log).unwrap(), read_to).unwrap();
        // A decoy with the same header but other bytes at the mark.
        let mut decoy = content.clone();
        decoy[read_to as usize - 3] = b'#';
        std::fs::write(d.path().join("x.log.2"), &decoy).unwrap();
        std::fs::write(d.path().join("x.log.1"), &content).unwrap();
        std::fs::write(d.path().join("x.log.3.gz"), &content).unwrap();
        std::fs::write(&log, b"").unwrap();
        let mut r = find(&log, (t.dev, t.ino), &mark, &fp, FileId(1), 0, None).unwrap();
        assert_eq!(r.path(), &d.path().join("x.log.1"));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut expect_start = read_to;
        loop {
            let s = r.next(&mut buf);
            assert_eq!(s.start, expect_start);
            let bytes: usize = s.lines.iter().map(|l| l.text.len() + 1).sum();
            assert!(bytes <= READ_CHUNK + 64 * 1024);
            if let Some(l) = s.lines.last() {
                expect_start = l.end;
            }
            got.extend(s.lines);
            if s.done {
                break;
            }
        }
        assert_eq!(got.len(), 39_000);
        assert_eq!(got[0].text, "line number 00001000 of the old content");
        assert_eq!(got.last().unwrap().end, content.len() as u64);
        assert_eq!(r.lines, 39_000);
    }
}
