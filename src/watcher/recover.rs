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

use super::dirs::{is_compressed, rotation_bases};

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

/// Whether a file beside a followed file that was empty when last looked
/// at (its change time then was `since`) holds lines written to it
/// afterwards and moved away by `copytruncate` before any was read: a
/// rotated name of the followed file (`x.log.1`, `x.log-20261129`),
/// uncompressed, not empty, and born strictly after `since`. A copy made by
/// an earlier rotation was born before the truncation that emptied the
/// file, so it never qualifies (its lines were read, from the file or its
/// own recovery); the caller also leaves out files it follows itself.
pub fn is_unread_copy(
    name: &[u8],
    candidate: &[u8],
    compressed: bool,
    len: u64,
    born: (i64, i64),
    since: (i64, i64),
) -> bool {
    !compressed && len > 0 && born > since && rotation_bases(candidate).contains(&name)
}

/// For a followed file that was empty at its last look (change time
/// `since`) and had none of its bytes read: the newest copy
/// [`is_unread_copy`] accepts, read from its start under the checkpoint
/// identity `id`. `followed` says whether the watcher follows an inode.
pub fn find_unread(
    path: &Path,
    since: (i64, i64),
    id: FileId,
    source: usize,
    label: Option<Arc<str>>,
    followed: impl Fn(u64, u64) -> bool,
) -> Option<Recovery> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let name = path.file_name()?.as_bytes();
    let dir = path.parent()?;
    let mut best: Option<((i64, i64), PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        // The name first: in a directory of thousands of files, only the
        // file's own rotations are worth a `stat`.
        if !rotation_bases(e.file_name().as_bytes()).contains(&name) {
            continue;
        }
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        // Birth time where the file system has one; else the copy's
        // modification time, which is after `since` too (it was written).
        let born = m
            .created()
            .or_else(|_| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs() as i64, i64::from(d.subsec_nanos())));
        let Some(born) = born else { continue };
        if m.is_file()
            && !followed(m.dev(), m.ino())
            && is_unread_copy(
                name,
                e.file_name().as_bytes(),
                is_compressed(&p),
                m.len(),
                born,
                since,
            )
            && best.as_ref().is_none_or(|(b, _)| born > *b)
        {
            best = Some((born, p));
        }
    }
    let (_, p) = best?;
    let (file, meta) = tail::open_regular(&p).ok()?;
    let copy = Tailer::new(id, source, p, label, file, &meta, 0).ok()?;
    Some(Recovery { copy, lines: 0 })
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
    fn an_unread_copy_is_a_new_uncompressed_rotation_of_the_file() {
        let (since, after, before) = ((100, 5), (100, 6), (100, 5));
        let yes = |c: &str| is_unread_copy(b"x.log", c.as_bytes(), false, 10, after, since);
        assert!(yes("x.log.1"));
        assert!(yes("x.log-20261129"));
        // Another file's rotation, or the file itself.
        assert!(!yes("y.log.1"));
        assert!(!yes("x.log"));
        assert!(!yes("x.log.old"));
        // Compressed, empty, or born before (or in the same tick as) the
        // truncation that emptied the file: an earlier generation.
        assert!(!is_unread_copy(
            b"x.log", b"x.log.1", true, 10, after, since
        ));
        assert!(!is_unread_copy(
            b"x.log", b"x.log.1", false, 0, after, since
        ));
        assert!(!is_unread_copy(
            b"x.log", b"x.log.1", false, 10, before, since
        ));
        assert!(!is_unread_copy(
            b"x.log",
            b"x.log.1",
            false,
            10,
            (99, 9),
            since
        ));
    }

    /// Lines written to an empty file and `copytruncate`d before anything
    /// was read: the read says so instead of reading on, and the copy is
    /// found and read from its start; the copy of an earlier rotation is
    /// not taken.
    #[test]
    fn lines_copytruncated_before_the_first_read_are_found_in_the_copy() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        std::fs::write(d.path().join("x.log.2"), b"an older generation\n").unwrap();
        std::fs::write(&log, b"").unwrap();
        let (f, m) = tail::open_regular(&log).unwrap();
        let mut t = Tailer::new(FileId(1), 0, log.clone(), None, f, &m, 0).unwrap();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let r = t.read(&mut buf, &mut out, READ_CHUNK).unwrap();
        assert_eq!(r.unread_since, None);
        let since = (m.ctime(), m.ctime_nsec());
        // Let the clock tick past the file's change time.
        let tick = std::time::Instant::now();
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            <= std::time::Duration::new(since.0 as u64, since.1 as u32)
                + std::time::Duration::from_millis(20)
        {
            assert!(tick.elapsed().as_secs() < 5);
            std::thread::yield_now();
        }
        // Written (unseen), copied, truncated.
        std::fs::write(&log, b"first\nsecond\n").unwrap();
        std::fs::copy(&log, d.path().join("x.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        let r = t.read(&mut buf, &mut out, READ_CHUNK).unwrap();
        assert!(out.is_empty());
        assert_eq!(r.unread_since, Some(since));
        let own = (t.dev, t.ino);
        let mut rec =
            find_unread(&log, since, FileId(1), 0, None, |d, i| (d, i) == own).expect("the copy");
        assert_eq!(rec.path(), &d.path().join("x.log.1"));
        let s = rec.next(&mut buf);
        let texts: Vec<&str> = s.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["first", "second"]);
        assert_eq!(s.start, 0);
        // Looked at again with nothing new: no second report.
        let r = t.read(&mut buf, &mut out, READ_CHUNK).unwrap();
        assert_eq!(r.unread_since, None);
    }

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
