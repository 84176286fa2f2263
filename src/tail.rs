//! Reading one file: from an offset, in whole lines, safely.
//!
//! A [`Tailer`] holds the file open, so a file renamed by logrotate is still
//! read to its end through the same descriptor. It reads with `pread` from
//! its own offset, hands out only complete lines (a trailing partial line
//! waits for its newline), and bounds memory: a line longer than
//! [`MAX_LINE`] bytes is handed out in pieces, cut on a UTF-8 boundary.
//! Before each read it checks that the file was not truncated or rewritten
//! under it (`copytruncate`, a job's `>`): a shorter file, first bytes that
//! no longer match the fingerprint, or last bytes read (its [`Mark`]: up to
//! [`MARK_LEN`] bytes before the end of the last line handed out) that no
//! longer match restart reading from offset 0. The mark catches a rewrite
//! with the same header, also to exactly the same length; it is checked
//! whenever the file's size or times changed, and once more after a change
//! in the last second (times are stamped from a coarse clock, so a rewrite
//! right after a read can leave them equal).
//!
//! Opening is careful too: only regular files are opened, with
//! `O_NONBLOCK`, so a FIFO or a device named like a log never blocks or
//! wakes anything.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{FINGERPRINT_LEN, FileId, Mark, fingerprint};
use crate::format;

/// Longest line handed out whole; longer ones are cut into pieces.
pub const MAX_LINE: usize = 64 * 1024;
/// How much one read call takes at most.
pub const READ_CHUNK: usize = 256 * 1024;
/// The read buffer's first size: it doubles while reads fill it, up to
/// [`READ_CHUNK`]. A daemon that only ever reads a few lines at a time
/// keeps 16 KiB, not 256 KiB of zeroes resident for its whole life; a
/// catch-up reaches full-size reads after four.
pub const FIRST_READ: usize = 16 * 1024;
/// How many bytes before the read offset a [`Mark`] covers.
pub const MARK_LEN: usize = 64;

/// Size and times of a file when it was last looked at: equal stamps mean
/// nothing was written since (with the caveat of coarse times, see the
/// module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(m: &Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Changed so recently that a rewrite in the same clock tick would
    /// leave the times as they are: look once more later. The tick is a
    /// few milliseconds where times have nanoseconds (100 ms is ample), up
    /// to 2 s where they have whole seconds only (FAT, some NFS servers).
    fn recent(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let ns = |(s, n): (i64, i64)| i128::from(s) * 1_000_000_000 + i128::from(n);
        let t = ns(self.mtime).max(ns(self.ctime));
        let coarse = self.mtime.1 == 0 && self.ctime.1 == 0;
        let window = if coarse { 2_000_000_000 } else { 100_000_000 };
        now - t < window
    }
}

/// Reads the bytes a mark covers, `[offset - len, offset)`; fewer if the
/// file is shorter now.
pub fn read_mark(file: &File, m: &Mark) -> io::Result<Vec<u8>> {
    let start = m.offset - u64::from(m.len).min(m.offset);
    let mut buf = vec![0u8; (m.offset - start) as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], start + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The mark of `file` at `offset`, from its bytes there now.
pub fn mark_at(file: &File, offset: u64) -> io::Result<Mark> {
    let len = offset.min(MARK_LEN as u64) as u32;
    let m = Mark {
        offset,
        len,
        hash: 0,
    };
    let b = read_mark(file, &m)?;
    if b.len() != len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than the offset",
        ));
    }
    Ok(Mark {
        hash: fingerprint(&b),
        ..m
    })
}

/// One complete line (or piece of a very long one), sanitized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Byte offset just past this line in its file.
    pub end: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{path}: not a regular file ({kind}), skipped")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading if, and only if, it is a regular file.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), TailError> {
    let io_err = |source| TailError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Check before opening: opening some devices has side effects.
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(TailError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    // The name may have been swapped between the two calls.
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(TailError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    Ok((file, meta))
}

/// Reads up to `n` first bytes of an open file.
pub fn first_bytes(file: &File, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// What a read found besides lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// More data is waiting: the byte budget ran out first.
    pub more: bool,
    /// The file was truncated or rewritten; reading restarted at 0.
    pub restarted: bool,
    /// The fingerprint grew or changed: tell the checkpoint store.
    pub fingerprint_changed: bool,
    /// On a restart: the mark of the old content (where the last complete
    /// line ended) and its first bytes, so a copy (logrotate's
    /// `copytruncate`) can be found and its unread end read from there.
    pub previous: Option<(Mark, Vec<u8>)>,
    /// The file had no byte read and was empty at the last look (its
    /// change time then is given), and it changed since: if it was
    /// written and `copytruncate`d in between, nothing shows it here (the
    /// size may be the same, there is no mark or first bytes to compare),
    /// so the caller looks for a copy born after that time before reading
    /// on. Nothing was read in this call.
    pub unread_since: Option<(i64, i64)>,
}

/// Follows one open file.
#[derive(Debug)]
pub struct Tailer {
    pub id: FileId,
    pub source: usize,
    pub path: PathBuf,
    /// Shown above the lines in messages (the path relative to the root).
    pub label: Option<Arc<str>>,
    file: File,
    pub dev: u64,
    pub ino: u64,
    /// Next byte to read.
    pos: u64,
    /// An unfinished line: the bytes just before `pos`.
    partial: Vec<u8>,
    /// The file's first bytes, up to [`FINGERPRINT_LEN`].
    fp: Vec<u8>,
    /// What was read: the bytes before [`Tailer::line_end`].
    mark: Mark,
    /// The file as it was at the last identity check.
    stamp: Option<Stamp>,
    /// Look at the mark at the next check even if the stamp is the same.
    unsure: bool,
    /// The last bytes before `pos` (up to [`MARK_LEN`]).
    tail: Vec<u8>,
}

impl Tailer {
    /// Starts following an open file at `start` (which must be the end of a
    /// line, as checkpoints and "the end of the file" are).
    pub fn new(
        id: FileId,
        source: usize,
        path: PathBuf,
        label: Option<Arc<str>>,
        file: File,
        meta: &Metadata,
        start: u64,
    ) -> io::Result<Tailer> {
        let fp = first_bytes(&file, FINGERPRINT_LEN.min(meta.len() as usize))?;
        let start = start.min(meta.len());
        let tail = read_mark(
            &file,
            &Mark {
                offset: start,
                len: MARK_LEN as u32,
                hash: 0,
            },
        )?;
        let mark = Mark {
            offset: start,
            len: tail.len() as u32,
            hash: fingerprint(&tail),
        };
        Ok(Tailer {
            id,
            source,
            path,
            label,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            pos: start,
            partial: Vec::new(),
            fp,
            mark,
            // What the start position was decided on: only a change from
            // here on needs the identity checked again.
            stamp: Some(Stamp::of(meta)),
            unsure: Stamp::of(meta).recent(),
            tail,
        })
    }

    /// How far lines were handed out, and the bytes before that.
    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// After handing out the lines of `data` (read at `base`): the new
    /// mark, from the bytes in memory (reading them again could see a
    /// rewrite that happened since, and take it for what was read).
    fn remember(&mut self, base: u64, data: &[u8]) {
        let end = self.line_end();
        if end > base {
            let idx = (end - base) as usize;
            let mut w = Vec::with_capacity(MARK_LEN);
            if idx < MARK_LEN {
                let need = MARK_LEN - idx;
                w.extend_from_slice(&self.tail[self.tail.len().saturating_sub(need)..]);
            }
            w.extend_from_slice(&data[idx.saturating_sub(MARK_LEN)..idx]);
            self.mark = Mark {
                offset: end,
                len: w.len() as u32,
                hash: fingerprint(&w),
            };
        }
        if data.len() >= MARK_LEN {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - MARK_LEN..]);
        } else {
            self.tail.extend_from_slice(data);
            let extra = self.tail.len().saturating_sub(MARK_LEN);
            self.tail.drain(..extra);
        }
    }

    /// The open file's size and times, by a plain `fstat` (the rescan does
    /// this for every followed file: `File::metadata` costs twice as much).
    pub fn stamp_now(&self) -> io::Result<Stamp> {
        use std::os::fd::AsRawFd;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor we own and a stat buffer of the right type.
        if unsafe { libc::fstat(self.file.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // time_t and its nanoseconds are 32-bit on armhf (armv7 gnueabihf):
        // widened, as Metadata's mtime() and ctime() do.
        #[allow(clippy::unnecessary_cast)]
        Ok(Stamp {
            len: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        })
    }

    /// Whether `stamp` (of this file, by path or descriptor) shows a change
    /// since the last identity check, so that a read is due.
    pub fn stale(&self, stamp: Stamp) -> bool {
        self.unsure || self.stamp != Some(stamp)
    }

    /// Identity of the open file's content, for the checkpoint.
    pub fn fingerprint(&self) -> (u32, u64) {
        (self.fp.len() as u32, fingerprint(&self.fp))
    }

    /// Offset of the end of the last line handed out.
    pub fn line_end(&self) -> u64 {
        self.pos - self.partial.len() as u64
    }

    /// When the file was last modified (one `fstat`).
    pub fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.file.metadata()?.modified()
    }

    /// Bytes not yet read, as far as the file's size tells.
    pub fn pending(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len().saturating_sub(self.pos))
    }

    /// Hands out an unfinished last line as if it were complete: for a
    /// file that will not grow any more (a copy made by logrotate).
    pub fn take_partial(&mut self) -> Option<Line> {
        if self.partial.is_empty() {
            return None;
        }
        let text = format::sanitize(&self.partial);
        self.partial.clear();
        Some(Line {
            text,
            end: self.pos,
        })
    }

    /// Hard links left to the open file: 0 once it was deleted.
    pub fn links(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.nlink())
    }

    /// Checks the open file is still the content we were reading, and
    /// extends the fingerprint while the file is young.
    fn check_identity(&mut self, report: &mut ReadReport) -> io::Result<()> {
        let meta = self.file.metadata()?;
        let stamp = Stamp::of(&meta);
        let size = stamp.len;
        let changed = self.unsure || self.stamp != Some(stamp);
        let before = self.stamp.replace(stamp);
        self.unsure = stamp.recent();
        if !changed && self.fp.len() == FINGERPRINT_LEN.min(size as usize) {
            // Nothing new: spare the reads (this runs for every followed
            // file whose event or rescan said it may have changed).
            return Ok(());
        }
        let head = first_bytes(&self.file, FINGERPRINT_LEN.min(size as usize))?;
        let common = head.len().min(self.fp.len());
        let mut rewritten = size < self.pos || head[..common] != self.fp[..common];
        if !rewritten && self.mark.len > 0 {
            let b = read_mark(&self.file, &self.mark)?;
            rewritten = b.len() != self.mark.len as usize || fingerprint(&b) != self.mark.hash;
        }
        if rewritten {
            report.previous = Some((self.mark, std::mem::take(&mut self.fp)));
            self.pos = 0;
            self.partial.clear();
            self.fp = head;
            self.mark = Mark {
                offset: 0,
                len: 0,
                hash: fingerprint(b""),
            };
            self.tail.clear();
            report.restarted = true;
            report.fingerprint_changed = true;
        } else if self.pos == 0 && self.fp.is_empty() {
            if let Some(b) = before.filter(|b| b.len == 0 && *b != stamp) {
                report.unread_since = Some(b.ctime);
            }
            if head.len() > self.fp.len() {
                self.fp = head;
                report.fingerprint_changed = true;
            }
        } else if head.len() > self.fp.len() {
            self.fp = head;
            report.fingerprint_changed = true;
        }
        Ok(())
    }

    /// Checks the identity only, without reading lines: for a file whose
    /// lines cannot be sent now, so that a truncation is noticed (and the
    /// copy of the old content found) while the copy is still there.
    pub fn check(&mut self) -> io::Result<ReadReport> {
        let mut report = ReadReport::default();
        self.check_identity(&mut report)?;
        report.more = report.restarted;
        Ok(report)
    }

    /// Reads what was appended, up to about `budget` bytes, pushing whole
    /// lines to `out`. `buf` is a scratch buffer shared by all tailers.
    pub fn read(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut Vec<Line>,
        budget: usize,
    ) -> io::Result<ReadReport> {
        let mut report = ReadReport::default();
        self.check_identity(&mut report)?;
        if report.restarted || report.unread_since.is_some() {
            // Let the caller look for a copy of the old content first.
            report.more = true;
            return Ok(report);
        }
        let mut read_total = 0;
        if buf.len() < FIRST_READ {
            buf.resize(FIRST_READ, 0);
        }
        loop {
            if read_total >= budget {
                report.more = true;
                break;
            }
            // Never past the budget: a chunk holds at most `budget` bytes
            // of new text, whatever size the buffer has grown to.
            let want = buf.len().min(budget - read_total);
            let n = match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            read_total += n;
            let data = &buf[..n];
            let mut start = 0;
            let base = self.pos;
            self.pos += n as u64;
            for end in memchr::memchr_iter(b'\n', data) {
                let line_end = base + end as u64 + 1;
                if self.partial.is_empty() {
                    out.push(Line {
                        text: format::sanitize(&data[start..end]),
                        end: line_end,
                    });
                } else {
                    self.partial.extend_from_slice(&data[start..end]);
                    out.push(Line {
                        text: format::sanitize(&self.partial),
                        end: line_end,
                    });
                    self.partial.clear();
                }
                start = end + 1;
            }
            self.partial.extend_from_slice(&data[start..]);
            while self.partial.len() >= MAX_LINE {
                let cut = utf8_cut(&self.partial[..MAX_LINE]);
                let piece_end = self.pos - (self.partial.len() - cut) as u64;
                out.push(Line {
                    text: format::sanitize(&self.partial[..cut]),
                    end: piece_end,
                });
                self.partial.drain(..cut);
            }
            self.remember(base, data);
            if n == buf.len() && n < READ_CHUNK {
                // A full buffer: there is likely more, read larger pieces.
                buf.resize((2 * n).min(READ_CHUNK), 0);
            }
        }
        Ok(report)
    }
}

/// The longest prefix of `b` that does not end inside a UTF-8 sequence
/// (never empty: invalid bytes are cut anywhere).
fn utf8_cut(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => {
            // Step back over at most 3 continuation bytes.
            let mut i = b.len();
            for _ in 0..3 {
                if i > 1 && (b[i - 1] & 0xC0) == 0x80 {
                    i -= 1;
                } else {
                    break;
                }
            }
            if i > 1 && b[i - 1] >= 0xC0 {
                i - 1
            } else {
                b.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail(path: &Path, start: u64) -> Tailer {
        let (f, m) = open_regular(path).unwrap();
        Tailer::new(FileId(0), 0, path.into(), None, f, &m, start).unwrap()
    }

    fn read_all(t: &mut Tailer) -> (Vec<Line>, ReadReport) {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut all = ReadReport::default();
        loop {
            let r = t.read(&mut buf, &mut out, usize::MAX).unwrap();
            all.restarted |= r.restarted;
            if !r.more {
                return (out, all);
            }
        }
    }

    #[test]
    fn the_read_buffer_grows_only_while_reads_fill_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"a few lines\nof an idle log\n").unwrap();
        let mut t = tail(&p, 0);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        t.read(&mut buf, &mut out, READ_CHUNK).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(buf.len(), FIRST_READ);
        // A backlog: reads fill the buffer and it doubles up to READ_CHUNK,
        // while each call stays within its budget and loses no line.
        let line = format!("{}\n", "x".repeat(99));
        let n = 3 * READ_CHUNK / line.len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(line.repeat(n).as_bytes())
            .unwrap();
        out.clear();
        loop {
            let before = out.len();
            let r = t.read(&mut buf, &mut out, READ_CHUNK).unwrap();
            let bytes: usize = out[before..].iter().map(|l| l.text.len() + 1).sum();
            // The budget, plus the end of a line begun in the last call.
            assert!(bytes <= READ_CHUNK + line.len(), "{bytes}");
            if !r.more {
                break;
            }
        }
        assert_eq!(out.len(), n);
        assert!(out.iter().all(|l| l.text.len() == 99));
        assert_eq!(buf.len(), READ_CHUNK);
    }

    #[test]
    fn complete_lines_only_and_partial_waits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"one\r\ntwo\npar").unwrap();
        let mut t = tail(&p, 0);
        let (lines, _) = read_all(&mut t);
        assert_eq!(
            lines,
            vec![
                Line {
                    text: "one".into(),
                    end: 5
                },
                Line {
                    text: "two".into(),
                    end: 9
                }
            ]
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"tial\n")
            .unwrap();
        let (lines, _) = read_all(&mut t);
        assert_eq!(
            lines,
            vec![Line {
                text: "partial".into(),
                end: 17
            }]
        );
        assert_eq!(t.line_end(), 17);
    }

    #[test]
    fn truncation_restarts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"first line here\n").unwrap();
        let mut t = tail(&p, 0);
        read_all(&mut t);
        std::fs::write(&p, b"new\n").unwrap();
        let (lines, r) = read_all(&mut t);
        assert!(r.restarted);
        assert_eq!(
            lines,
            vec![Line {
                text: "new".into(),
                end: 4
            }]
        );
        // Rewritten and already longer than our offset: the fingerprint tells.
        std::fs::write(&p, b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n").unwrap();
        let (lines, r) = read_all(&mut t);
        assert!(r.restarted);
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn same_header_rewrites_are_noticed_even_at_the_same_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.log");
        let header = format!("{}\n", "H".repeat(600));
        let body = |tag: &str| {
            let mut s = header.clone();
            for i in 0..20 {
                s.push_str(&format!("{tag}-{i:04}\n"));
            }
            s
        };
        std::fs::write(&p, body("aaa")).unwrap();
        let mut t = tail(&p, 0);
        let (lines, _) = read_all(&mut t);
        assert_eq!(lines.len(), 21);
        // Same length, same first 512 bytes, written in the same second.
        std::fs::write(&p, body("bbb")).unwrap();
        let (lines, r) = read_all(&mut t);
        assert!(r.restarted);
        assert_eq!(lines.len(), 21);
        assert_eq!(lines[1].text, "bbb-0000");
        // Longer than the old offset, same header.
        let mut longer = body("ccc");
        longer.push_str("ccc-more\n");
        std::fs::write(&p, &longer).unwrap();
        let (lines, r) = read_all(&mut t);
        assert!(r.restarted);
        assert_eq!(lines.len(), 22);
        // A plain append is not a rewrite.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"appended\n")
            .unwrap();
        let (lines, r) = read_all(&mut t);
        assert!(!r.restarted);
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn check_notices_a_truncation_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"one\ntwo\n").unwrap();
        let mut t = tail(&p, 0);
        read_all(&mut t);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        let r = t.check().unwrap();
        assert!(!r.restarted, "an append is no rewrite");
        std::fs::write(&p, b"").unwrap();
        let r = t.check().unwrap();
        assert!(r.restarted);
        let (mark, fp) = r.previous.unwrap();
        // The first bytes grew with the append (the check extends them).
        assert_eq!((mark.offset, fp.as_slice()), (8, &b"one\ntwo\nthree\n"[..]));
        assert_eq!(t.line_end(), 0);
    }

    /// Seeded random line lengths and read budgets: the mark kept from
    /// memory is always the one the file's bytes give.
    #[test]
    fn mark_matches_the_file_after_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.log");
        std::fs::write(&p, b"").unwrap();
        let mut t = tail(&p, 0);
        let mut rng = 77u64;
        let mut buf = Vec::new();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        for _ in 0..300 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = match rng % 4 {
                0 => (rng >> 8) % 5,
                1 => (rng >> 8) % 100,
                2 => (rng >> 8) % 3000,
                _ => (rng >> 8) % (MAX_LINE as u64 * 2),
            } as usize;
            let mut l = vec![b'a' + (rng % 26) as u8; len];
            if rng & 32 == 0 {
                l.push(b'\n');
            }
            f.write_all(&l).unwrap();
            let mut out = Vec::new();
            t.read(&mut buf, &mut out, (rng >> 20) as usize % READ_CHUNK + 1)
                .unwrap();
            let file = std::fs::File::open(&p).unwrap();
            assert_eq!(t.mark(), mark_at(&file, t.line_end()).unwrap());
        }
    }

    #[test]
    fn huge_line_comes_out_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        // Longer than one read, so most of it is an unfinished line for a while.
        let mut s = "é".repeat(READ_CHUNK); // 2 bytes each
        s.push('\n');
        std::fs::write(&p, &s).unwrap();
        let mut t = tail(&p, 0);
        let (lines, _) = read_all(&mut t);
        assert!(lines.len() >= 2);
        assert!(
            lines
                .iter()
                .all(|l| l.text.len() <= READ_CHUNK && !l.text.contains('\u{fffd}'))
        );
        let joined: String = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, &s[..s.len() - 1]);
        assert_eq!(lines.last().unwrap().end, s.len() as u64);
    }

    #[test]
    fn fifo_is_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            open_regular(&p),
            Err(TailError::NotRegular { .. })
        ));
    }
}
