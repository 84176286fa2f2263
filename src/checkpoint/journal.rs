//! The on-disk format of the checkpoint: a sequence of small framed
//! records, each `MAGIC (2 bytes) | length (u32 LE) | CRC-32 (u32 LE) |
//! payload`, where the CRC covers the length bytes and the payload.
//!
//! The same format serves both the snapshot that a compaction writes at the
//! head of a fresh file and the records appended after it, so one reader
//! handles both and a damaged byte costs one record, not the file: a record
//! whose frame or checksum does not hold is skipped and reading resumes at
//! the next position where a whole valid frame starts (a torn tail simply
//! has no such position). Encoding is hand-written rather than JSON so
//! that paths that are not UTF-8 survive, and so that 100,000 records load
//! in a few tens of milliseconds.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{FileRecord, Mark};

/// Marks the start of a record; 0xEC never starts an ASCII byte, so
/// resynchronising after damage rarely tries a false start.
pub(super) const MAGIC: [u8; 2] = [0xEC, 0x4B];
/// Magic, length, CRC.
pub(super) const FRAME_HEADER: usize = 10;
/// A path is at most 4 KiB on Linux: anything much larger is damage.
pub(super) const MAX_PAYLOAD: usize = 64 * 1024;
/// Written in the header record of every compacted file.
pub(super) const FORMAT_VERSION: u32 = 2;

const KIND_HEADER: u8 = 1;
const KIND_SOURCE: u8 = 2;
const KIND_FILE: u8 = 3;
const KIND_FORGET: u8 = 4;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), the one of zlib
/// and gzip: catches every burst error up to 32 bits, which is what a torn
/// or flipped sector looks like. Eight tables ("slicing by 8") so that the
/// start-up check of a large journal costs milliseconds.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            k += 1;
        }
        i += 1;
    }
    t
};

fn crc_update(mut crc: u32, bytes: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for b in chunks.remainder() {
        crc = t[0][((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc_update(!0, bytes)
}

fn frame_crc(len: &[u8], payload: &[u8]) -> u32 {
    !crc_update(crc_update(!0, len), payload)
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// First record of a compacted file.
    Header { version: u32 },
    /// The daemon ran with this source at `last_seen` (Unix seconds).
    Source { name: String, last_seen: u64 },
    /// The whole state of one file record (the latest one wins).
    File {
        key: u64,
        rec: FileRecord,
        mark: Option<Mark>,
    },
    /// The record `key` was dropped.
    Forget { key: u64 },
}

/// Appends one framed record whose payload `body` writes.
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]);
    body(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let len_bytes = len.to_le_bytes();
    let crc = frame_crc(&len_bytes, &out[start + FRAME_HEADER..]);
    out[start + 2..start + 6].copy_from_slice(&len_bytes);
    out[start + 6..start + 10].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub(super) fn encode_header(out: &mut Vec<u8>) {
    frame(out, |o| {
        o.push(KIND_HEADER);
        o.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    });
}

pub(super) fn encode_source(out: &mut Vec<u8>, name: &str, last_seen: u64) {
    frame(out, |o| {
        o.push(KIND_SOURCE);
        put_bytes(o, name.as_bytes());
        o.extend_from_slice(&last_seen.to_le_bytes());
    });
}

pub(super) fn encode_file(out: &mut Vec<u8>, key: u64, rec: &FileRecord, mark: Option<Mark>) {
    frame(out, |o| {
        o.push(KIND_FILE);
        o.extend_from_slice(&key.to_le_bytes());
        put_bytes(o, rec.source.as_bytes());
        put_bytes(o, rec.path.as_os_str().as_bytes());
        for v in [rec.dev, rec.ino] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o.extend_from_slice(&rec.fp_len.to_le_bytes());
        for v in [rec.fp_hash, rec.offset, rec.seen] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        match mark {
            None => o.push(0),
            Some(m) => {
                o.push(1);
                o.extend_from_slice(&m.offset.to_le_bytes());
                o.extend_from_slice(&m.len.to_le_bytes());
                o.extend_from_slice(&m.hash.to_le_bytes());
            }
        }
    });
}

pub(super) fn encode_forget(out: &mut Vec<u8>, key: u64) {
    frame(out, |o| {
        o.push(KIND_FORGET);
        o.extend_from_slice(&key.to_le_bytes());
    });
}

/// Reads fields off a payload; `None` when it is too short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Decodes a payload whose checksum held. `None` for a kind this version
/// does not know (written by a newer one) or a malformed payload. Bytes
/// after the known fields are ignored, so a newer version may add fields.
pub(super) fn decode(payload: &[u8]) -> Option<Entry> {
    let mut c = Cursor(payload);
    match c.u8()? {
        KIND_HEADER => Some(Entry::Header { version: c.u32()? }),
        KIND_SOURCE => Some(Entry::Source {
            name: c.string()?,
            last_seen: c.u64()?,
        }),
        KIND_FILE => {
            let key = c.u64()?;
            let source = c.string()?;
            let path = PathBuf::from(OsStr::from_bytes(c.bytes()?));
            let rec = FileRecord {
                source,
                path,
                dev: c.u64()?,
                ino: c.u64()?,
                fp_len: c.u32()?,
                fp_hash: c.u64()?,
                offset: c.u64()?,
                seen: c.u64()?,
            };
            let mark = match c.u8()? {
                0 => None,
                1 => Some(Mark {
                    offset: c.u64()?,
                    len: c.u32()?,
                    hash: c.u64()?,
                }),
                _ => return None,
            };
            Some(Entry::File { key, rec, mark })
        }
        KIND_FORGET => Some(Entry::Forget { key: c.u64()? }),
        _ => None,
    }
}

/// The payload of a whole, valid frame at `pos`, and where the next starts.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(pos..pos.checked_add(FRAME_HEADER)?)?;
    if head[..2] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head[2..6].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let crc = u32::from_le_bytes(head[6..10].try_into().expect("4 bytes"));
    let end = pos + FRAME_HEADER + len;
    let payload = bytes.get(pos + FRAME_HEADER..end)?;
    (frame_crc(&head[2..6], payload) == crc).then_some((payload, end))
}

/// What reading a file found besides its records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    /// Valid frames read.
    pub records: usize,
    /// Byte ranges `[start, end)` that held no valid frame. A range ending
    /// at the file's length is a torn or damaged tail.
    pub skipped: Vec<(usize, usize)>,
    /// Frames whose checksum held but whose payload this version does not
    /// understand (ignored).
    pub unknown: usize,
    /// End of the last valid frame: where the file may be cut.
    pub intact_end: usize,
}

/// Reads every valid record of `bytes` in order, passing each to `each`.
pub(super) fn scan(bytes: &[u8], mut each: impl FnMut(Entry)) -> Scan {
    let mut s = Scan::default();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((payload, next)) = frame_at(bytes, pos) {
            s.records += 1;
            match decode(payload) {
                Some(e) => each(e),
                None => s.unknown += 1,
            }
            s.intact_end = next;
            pos = next;
            continue;
        }
        // Damaged: resume at the next place where a whole frame holds.
        let mut from = pos + 1;
        let resume = loop {
            match memchr::memchr(MAGIC[0], &bytes[from..]) {
                Some(i) if frame_at(bytes, from + i).is_some() => break from + i,
                Some(i) => from += i + 1,
                None => break bytes.len(),
            }
        };
        s.skipped.push((pos, resume));
        pos = resume;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &[u8], offset: u64) -> FileRecord {
        FileRecord {
            source: "ekos".into(),
            path: PathBuf::from(OsStr::from_bytes(path)),
            dev: 0xfd01,
            ino: 123_456,
            fp_len: 512,
            fp_hash: 0xdead_beef_cafe,
            offset,
            seen: 1_700_000_000,
        }
    }

    fn entries(bytes: &[u8]) -> (Vec<Entry>, Scan) {
        let mut v = Vec::new();
        let s = scan(bytes, |e| v.push(e));
        (v, s)
    }

    #[test]
    fn crc32_matches_the_standard_check_value_and_the_bitwise_definition() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let bitwise = |bytes: &[u8]| {
            let mut c = !0u32;
            for b in bytes {
                c ^= u32::from(*b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        };
        let data: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            for start in [0, 1, 3, 7] {
                let b = &data[start.min(len)..len];
                assert_eq!(crc32(b), bitwise(b), "len {len} start {start}");
            }
        }
    }

    #[test]
    fn every_kind_round_trips_including_a_non_utf8_path() {
        let mark = Mark {
            offset: 99,
            len: 64,
            hash: 7,
        };
        let want = vec![
            Entry::Header {
                version: FORMAT_VERSION,
            },
            Entry::Source {
                name: "ekos".into(),
                last_seen: 42,
            },
            Entry::File {
                key: 5,
                rec: rec(b"/logs/caf\xe9.log", 1000),
                mark: Some(mark),
            },
            Entry::File {
                key: 6,
                rec: rec(b"/logs/x.log", 0),
                mark: None,
            },
            Entry::Forget { key: 5 },
        ];
        let mut buf = Vec::new();
        for e in &want {
            match e {
                Entry::Header { .. } => encode_header(&mut buf),
                Entry::Source { name, last_seen } => encode_source(&mut buf, name, *last_seen),
                Entry::File { key, rec, mark } => encode_file(&mut buf, *key, rec, *mark),
                Entry::Forget { key } => encode_forget(&mut buf, *key),
            }
        }
        let (got, s) = entries(&buf);
        assert_eq!(got, want);
        assert!(s.skipped.is_empty());
        assert_eq!(s.intact_end, buf.len());
    }

    /// Seeded: random records, then damage (cut or flipped byte) anywhere;
    /// the oracle is the list of records whose bytes were not touched.
    #[test]
    fn damage_costs_only_the_records_it_touches() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for i in 0..40u64 {
            let start = buf.len();
            let mut path = b"/l/".to_vec();
            path.extend((0..rnd() % 40).map(|_| (rnd() % 256) as u8));
            encode_file(&mut buf, i, &rec(&path, rnd() % 1_000_000), None);
            spans.push((start, buf.len(), i));
        }
        for _ in 0..300 {
            let at = (rnd() as usize) % buf.len();
            let keys = |bytes: &[u8]| -> Vec<u64> {
                entries(bytes)
                    .0
                    .into_iter()
                    .map(|e| match e {
                        Entry::File { key, .. } => key,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect()
            };
            // Cut at `at`: every record wholly before it, and only those.
            let want: Vec<u64> = spans.iter().filter(|s| s.1 <= at).map(|s| s.2).collect();
            let (_, s) = entries(&buf[..at]);
            assert_eq!(keys(&buf[..at]), want, "cut at {at}");
            assert_eq!(
                s.intact_end,
                spans
                    .iter()
                    .filter(|s| s.1 <= at)
                    .map(|s| s.1)
                    .max()
                    .unwrap_or(0)
            );
            // Flip one byte: every record but the one holding it.
            let mut bad = buf.clone();
            bad[at] ^= 1 << (rnd() % 8);
            let want: Vec<u64> = spans
                .iter()
                .filter(|s| !(s.0 <= at && at < s.1))
                .map(|s| s.2)
                .collect();
            assert_eq!(keys(&bad), want, "flip at {at}");
        }
    }

    #[test]
    fn garbage_only_is_one_skipped_range() {
        let (v, s) = entries(&[0xEC; 100]);
        assert!(v.is_empty());
        assert_eq!(s.skipped, vec![(0, 100)]);
        assert_eq!(s.intact_end, 0);
    }
}
