//! Reading one file: from an offset, in whole lines, safely.
//!
//! A [`Tailer`] holds the file open, so a file renamed by logrotate is still
//! read to its end through the same descriptor. It reads with `pread` from
//! its own offset, hands out only complete lines (a trailing partial line
//! waits for its newline), and bounds memory: a line longer than
//! [`MAX_LINE`] bytes is handed out in pieces, cut on a UTF-8 boundary.
//! Before each read it checks that the file was not truncated or rewritten
//! under it (`copytruncate`): a shorter file, or first bytes that no longer
//! match the fingerprint, restart reading from offset 0.
//!
//! Opening is careful too: only regular files are opened, with
//! `O_NONBLOCK`, so a FIFO or a device named like a log never blocks or
//! wakes anything.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{FINGERPRINT_LEN, FileId, fingerprint};
use crate::format;

/// Longest line handed out whole; longer ones are cut into pieces.
pub const MAX_LINE: usize = 64 * 1024;
/// How much one read call takes at most.
pub const READ_CHUNK: usize = 256 * 1024;

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
    /// On a restart: where the last complete line ended and the first
    /// bytes the content had, so a copy (logrotate's `copytruncate`) can be
    /// found and its unread end read from there.
    pub previous: Option<(u64, Vec<u8>)>,
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
        Ok(Tailer {
            id,
            source,
            path,
            label,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            pos: start.min(meta.len()),
            partial: Vec::new(),
            fp,
        })
    }

    /// Identity of the open file's content, for the checkpoint.
    pub fn fingerprint(&self) -> (u32, u64) {
        (self.fp.len() as u32, fingerprint(&self.fp))
    }

    /// Offset of the end of the last line handed out.
    pub fn line_end(&self) -> u64 {
        self.pos - self.partial.len() as u64
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
        let size = self.file.metadata()?.len();
        if size == self.pos && self.fp.len() == FINGERPRINT_LEN.min(size as usize) {
            // Nothing new: spare the read of the first bytes (this runs for
            // every followed file at each rescan).
            return Ok(());
        }
        let head = first_bytes(&self.file, FINGERPRINT_LEN.min(size as usize))?;
        let common = head.len().min(self.fp.len());
        if size < self.pos || head[..common] != self.fp[..common] {
            report.previous = Some((self.line_end(), std::mem::take(&mut self.fp)));
            self.pos = 0;
            self.partial.clear();
            self.fp = head;
            report.restarted = true;
            report.fingerprint_changed = true;
        } else if head.len() > self.fp.len() {
            self.fp = head;
            report.fingerprint_changed = true;
        }
        Ok(())
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
        if report.restarted {
            // Let the caller look for a copy of the old content first.
            report.more = true;
            return Ok(report);
        }
        let mut read_total = 0;
        buf.resize(READ_CHUNK, 0);
        loop {
            if read_total >= budget {
                report.more = true;
                break;
            }
            let n = match self.file.read_at(buf, self.pos) {
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
