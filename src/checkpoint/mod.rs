//! Where each file stands: the offsets Discord has accepted, kept on disk
//! so that a restart, a crash or a power cut neither loses nor repeats
//! lines (beyond the one batch in flight).
//!
//! A file is known by its device and inode *and* by a fingerprint (a hash
//! of its first bytes), because logrotate frees inodes that the next file
//! may reuse. The watcher registers the files it opens ([`Store::track`])
//! and looks up files it finds on disk ([`Store::claim`]); the sender moves
//! a file's offset forward only after Discord accepted the message that
//! carried its lines ([`Store::commit`]).
//!
//! # Design: an append-only journal with group commit
//!
//! Every method only changes memory and marks what changed; none touches
//! the disk, so the posting path never waits for it. A background thread,
//! `checkpoint-writer`, appends the latest state of every changed record
//! to `checkpoint.journal` as small checksummed records (see [`journal`])
//! and then `fdatasync`s, so everything that changed during one fsync goes
//! out in the next single write: a slow SD card costs batching, not
//! latency. Records are whole (a file's source, path, identity, offset and
//! read mark), so the last intact record of a file is enough to resume it.
//!
//! When the journal has grown to four times the size of the state it
//! describes (and once a day, which also refreshes live files and drops
//! records older than 14 days), the writer *compacts*: it writes the whole
//! state, in the same record format, to a temporary file, fsyncs it,
//! renames it over the journal and fsyncs the directory. At every instant
//! one complete file is in place, old or new, so a power cut during a
//! compaction loses nothing. There is no separate snapshot file whose
//! generation could disagree with the journal's.
//!
//! On open, a torn tail (the write a power cut interrupted) or damaged
//! bytes in the middle cost only the records they touch: reading skips to
//! the next valid frame, a warning names the file and byte offsets, and the
//! file is rewritten whole. Damage is never taken for a first start: a
//! journal that exists proves the daemon ran before, so a source whose
//! record was lost is treated as seen at the journal's last write (its
//! files changed since are read from their start: duplicates, not loss).
//! The prototype's `checkpoint.json` (version 1) is migrated on first open.
//!
//! When the state cannot be written (disk full, EIO, read-only), the
//! writer keeps the pending changes in memory (one entry per record, so
//! memory stays bounded however long it lasts), logs once at error level,
//! reports it through [`Store::trouble`] (the sender stops posting new
//! lines meanwhile, so duplicates after a crash stay bounded), retries
//! every 2 s and logs once when it works again.
//!
//! Records are bounded: at most [`MAX_PER_PATH`] per source and path (a
//! job log rewritten every minute does not grow the state) and none older
//! than 14 days; every in-memory index is pruned with them.

mod journal;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use journal::crc32;

/// How many leading bytes identify a file's content.
pub const FINGERPRINT_LEN: usize = 512;
/// Records of files not seen for this long are forgotten.
const EXPIRY: Duration = Duration::from_secs(14 * 24 * 3600);
/// At most this many records per source and path; the oldest ones that are
/// not followed go first.
pub const MAX_PER_PATH: usize = 4;
/// The journal.
const JOURNAL_FILE: &str = "checkpoint.journal";
/// The prototype's state file (version 1), migrated on first open.
const LEGACY_FILE: &str = "checkpoint.json";
/// Dropped records whose forgetting is not yet written; past this many the
/// writer rewrites the whole state instead (which needs none of them).
const MAX_FORGETS: usize = 4096;

/// A file record's key in the journal; stable for the life of the record
/// (also across restarts, though nothing outside this module relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the checkpoint writer: {0}")]
    Spawn(std::io::Error),
}

/// A hasher for the store's integer keys (record ids, inode numbers): one
/// multiply per word instead of SipHash, which made up most of the time to
/// load 100,000 records. The keys do not come from an adversary.
#[derive(Debug, Default, Clone, Copy)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;
type IntSet<K> = HashSet<K, std::hash::BuildHasherDefault<IntHasher>>;

/// FNV-1a: small, stable across versions and platforms, good enough to
/// tell two files' first bytes apart.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What is persisted for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub source: String,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub fp_len: u32,
    pub fp_hash: u64,
    /// Delivered up to this byte offset.
    pub offset: u64,
    /// Unix seconds when this file was last followed or delivered.
    pub seen: u64,
}

/// How far the watcher read a file: up to `offset`, and the `len` bytes
/// ending there hash ([`fingerprint`]) to `hash`. Lets a restart notice
/// that the file was rewritten meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub offset: u64,
    pub len: u32,
    pub hash: u64,
}

/// A known file found again on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub id: FileId,
    /// Delivered up to here.
    pub offset: u64,
    /// The last noted read mark, if any.
    pub mark: Option<Mark>,
}

#[derive(Debug)]
struct Slot {
    rec: FileRecord,
    mark: Option<Mark>,
    /// Followed by a tailer now (so not available to `claim`).
    live: bool,
}

/// Everything the store knows, and what the writer still has to write.
#[derive(Debug, Default)]
struct Inner {
    files: IntMap<FileId, Slot>,
    /// (dev, ino) → records: `claim` in O(1).
    by_inode: IntMap<(u64, u64), Vec<FileId>>,
    /// Hash of (source, path) → records: the per-path bound.
    by_path: IntMap<u64, Vec<FileId>>,
    /// Source → Unix seconds it was last run with.
    sources: BTreeMap<String, u64>,
    /// Sources as they were when the process started.
    sources_at_start: BTreeMap<String, u64>,
    /// The journal existed but was damaged or unreadable: any source not
    /// found in it counts as seen at this time (never a first start).
    fallback_seen: Option<u64>,
    next_id: u64,
    /// Records whose latest state is not written yet (coalesced: at most
    /// one entry per record however often it changes).
    dirty: IntSet<FileId>,
    dirty_sources: BTreeSet<String>,
    /// Keys of dropped records, to write as such.
    forgets: Vec<u64>,
    /// Too much was dropped to list: rewrite everything.
    rewrite: bool,
    /// Bumped by every change; `durable` is the last one on disk.
    seq: u64,
    durable: u64,
    /// Why the state cannot be written, while it cannot.
    trouble: Option<String>,
    stop: bool,
    /// Dry run: keep no pending writes.
    persist: bool,
}

/// Shared by the store's users and its writer thread.
#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when `durable` moves.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data
        // (every update is a handful of assignments), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checkpoint store, shared by the watcher and the sender.
pub struct Store {
    shared: Arc<Shared>,
    /// Wakes the writer; `None` in dry-run mode.
    wake: Option<crossbeam_channel::Sender<()>>,
    writer: Option<writer::Handle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.shared.lock();
        f.debug_struct("Store")
            .field("files", &g.files.len())
            .field("sources", &g.sources.len())
            .field("trouble", &g.trouble)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn path_key(source: &str, path: &Path) -> u64 {
    let mut h = fingerprint(source.as_bytes());
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The prototype's state file.
#[derive(Debug, Default, Deserialize)]
struct LegacyFile {
    #[serde(default)]
    sources: BTreeMap<String, LegacySource>,
    #[serde(default)]
    files: Vec<FileRecord>,
}

#[derive(Debug, Default, Deserialize)]
struct LegacySource {
    last_seen: u64,
}

fn mtime_secs(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// What was read from the state directory.
#[derive(Debug, Default)]
struct Loaded {
    files: IntMap<u64, (FileRecord, Option<Mark>)>,
    sources: BTreeMap<String, u64>,
    fallback_seen: Option<u64>,
    /// The journal must be rewritten whole (damaged, migrated or missing).
    rewrite: bool,
    /// The legacy file to set aside once the journal is written.
    migrated: Option<PathBuf>,
    /// Size of the journal and how many records it held (for compaction).
    journal_len: u64,
    journal_records: usize,
}

/// Reads the journal, or migrates the legacy file. Never fails: what
/// cannot be read is reported and the rest is used.
fn load(dir: &Path, persist: bool) -> Loaded {
    let mut out = Loaded::default();
    let path = dir.join(JOURNAL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let scan = journal::scan(&bytes, |e| match e {
                journal::Entry::Header { .. } => {}
                journal::Entry::Source { name, last_seen } => {
                    out.sources.insert(name, last_seen);
                }
                journal::Entry::File { key, rec, mark } => {
                    out.files.insert(key, (rec, mark));
                }
                journal::Entry::Forget { key } => {
                    out.files.remove(&key);
                }
            });
            for (start, end) in &scan.skipped {
                if *end == bytes.len() {
                    log::warn!(
                        "checkpoint {} has a torn or damaged tail at byte {start} (of {}); resuming from the last intact record",
                        path.display(),
                        bytes.len()
                    );
                } else {
                    log::warn!(
                        "checkpoint {} is damaged at bytes {start}..{end}; skipped them and kept the records around",
                        path.display()
                    );
                }
            }
            if scan.records == 0 || !scan.skipped.is_empty() {
                // Records may be missing: never a first start for any source.
                out.fallback_seen = Some(mtime_secs(&path).unwrap_or(0));
                out.rewrite = true;
            }
            if scan.unknown > 0 {
                log::warn!(
                    "checkpoint {} holds {} records of a newer version; ignored",
                    path.display(),
                    scan.unknown
                );
            }
            out.journal_len = bytes.len() as u64;
            out.journal_records = scan.records;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.rewrite = true;
            load_legacy(dir, persist, &mut out);
        }
        Err(e) => {
            log::warn!(
                "cannot read checkpoint {}: {e}; files whose records are lost are read from their start",
                path.display()
            );
            out.fallback_seen = Some(mtime_secs(&path).unwrap_or(0));
            out.rewrite = true;
        }
    }
    out
}

fn load_legacy(dir: &Path, persist: bool, out: &mut Loaded) {
    let path = dir.join(LEGACY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log::warn!("cannot read old checkpoint {}: {e}", path.display());
            out.fallback_seen = Some(mtime_secs(&path).unwrap_or(0));
            return;
        }
    };
    match serde_json::from_slice::<LegacyFile>(&bytes) {
        Ok(old) => {
            let now = now_secs();
            out.sources = old
                .sources
                .into_iter()
                .map(|(k, v)| (k, v.last_seen))
                .collect();
            for (key, mut rec) in old.files.into_iter().enumerate() {
                // The prototype wrote files followed from their end with
                // `seen = 0` (and then dropped them: issue 9, bug 8).
                if rec.seen == 0 {
                    rec.seen = now;
                }
                out.files.insert(key as u64, (rec, None));
            }
            log::info!(
                "migrating checkpoint {} ({} files) to {}",
                path.display(),
                out.files.len(),
                JOURNAL_FILE
            );
            out.migrated = Some(path);
        }
        Err(e) => {
            log::warn!(
                "old checkpoint {} is corrupt ({e}); files are read from where they changed since it was written",
                path.display()
            );
            out.fallback_seen = Some(mtime_secs(&path).unwrap_or(0));
            if persist {
                let _ = std::fs::rename(&path, dir.join("checkpoint.json.corrupt"));
            }
        }
    }
}

impl Inner {
    /// A change to write. Whether the writer is woken for it (now) or
    /// picks it up with the next write (lazily) is the caller's choice.
    fn bump(&mut self) {
        if self.persist {
            self.seq += 1;
        }
    }

    fn mark_dirty(&mut self, id: FileId) {
        if self.persist {
            self.dirty.insert(id);
            self.bump();
        }
    }

    fn insert(&mut self, id: FileId, slot: Slot) {
        self.by_inode
            .entry((slot.rec.dev, slot.rec.ino))
            .or_default()
            .push(id);
        let pk = path_key(&slot.rec.source, &slot.rec.path);
        self.by_path.entry(pk).or_default().push(id);
        self.files.insert(id, slot);
        self.bound_path(pk, id);
    }

    /// Drops a record and its index entries.
    fn remove(&mut self, id: FileId) {
        let Some(slot) = self.files.remove(&id) else {
            return;
        };
        let ik = (slot.rec.dev, slot.rec.ino);
        if let Some(v) = self.by_inode.get_mut(&ik) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_inode.remove(&ik);
            }
        }
        self.unindex_path(id, &slot.rec);
        self.dirty.remove(&id);
        if self.persist {
            if self.forgets.len() < MAX_FORGETS && !self.rewrite {
                self.forgets.push(id.0);
            } else {
                self.forgets.clear();
                self.rewrite = true;
            }
            self.bump();
        }
    }

    fn unindex_path(&mut self, id: FileId, rec: &FileRecord) {
        let pk = path_key(&rec.source, &rec.path);
        if let Some(v) = self.by_path.get_mut(&pk) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_path.remove(&pk);
            }
        }
    }

    /// Keeps at most [`MAX_PER_PATH`] records for the source and path of
    /// `id`, dropping the least recently seen ones that are not followed.
    fn bound_path(&mut self, pk: u64, id: FileId) {
        let Some(bucket) = self.by_path.get(&pk) else {
            return;
        };
        if bucket.len() <= MAX_PER_PATH {
            return;
        }
        let me = &self.files[&id].rec;
        let mut same: Vec<(u64, FileId, bool)> = bucket
            .iter()
            .filter_map(|x| self.files.get(x).map(|s| (x, s)))
            .filter(|(_, s)| s.rec.source == me.source && s.rec.path == me.path)
            .map(|(x, s)| (s.rec.seen, *x, s.live))
            .collect();
        if same.len() <= MAX_PER_PATH {
            return;
        }
        same.sort();
        let mut excess = same.len() - MAX_PER_PATH;
        for (_, x, keep) in same {
            if excess == 0 {
                break;
            }
            if !keep {
                self.remove(x);
                excess -= 1;
            }
        }
    }

    /// Drops records not followed and not seen since `cutoff`.
    fn expire(&mut self, cutoff: u64) {
        let old: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, s)| !s.live && s.rec.seen < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.remove(id);
        }
    }
}

impl Store {
    /// Opens the store in `dir`, creating the directory, and starts its
    /// writer thread (none when `persist` is false: a dry run reads the
    /// state and never writes it). Damaged state is reported and the intact
    /// part used; it never stops the daemon.
    pub fn open(dir: &Path, persist: bool) -> Result<Store, CheckpointError> {
        Self::open_with(dir, persist, None, writer::RETRY)
    }

    fn open_with(
        dir: &Path,
        persist: bool,
        faults: Option<writer::Faults>,
        retry: Duration,
    ) -> Result<Store, CheckpointError> {
        if persist {
            std::fs::create_dir_all(dir).map_err(|source| CheckpointError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let loaded = load(dir, persist);
        let cutoff = now_secs().saturating_sub(EXPIRY.as_secs());
        let n = loaded.files.len();
        let mut inner = Inner {
            files: IntMap::with_capacity_and_hasher(n, Default::default()),
            by_inode: IntMap::with_capacity_and_hasher(n, Default::default()),
            by_path: IntMap::with_capacity_and_hasher(n, Default::default()),
            sources_at_start: loaded.sources.clone(),
            sources: loaded.sources,
            fallback_seen: loaded.fallback_seen,
            persist,
            ..Inner::default()
        };
        let state_records = loaded.files.len() + inner.sources.len() + 1;
        for (key, (rec, mark)) in loaded.files {
            inner.next_id = inner.next_id.max(key + 1);
            if rec.seen >= cutoff {
                let slot = Slot {
                    rec,
                    mark,
                    live: false,
                };
                inner.insert(FileId(key), slot);
            }
        }
        // What loading dropped is not in the journal's next rewrite anyway.
        inner.forgets.clear();
        inner.rewrite = false;
        inner.seq = 0;
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            written: Condvar::new(),
        });
        if !persist {
            return Ok(Store {
                shared,
                wake: None,
                writer: None,
            });
        }
        // Estimate of the snapshot's share of the journal, for compaction.
        let base_len = if loaded.journal_records > 0 {
            loaded.journal_len * state_records.min(loaded.journal_records) as u64
                / loaded.journal_records as u64
        } else {
            0
        };
        let mut w = writer::Writer::new(
            dir,
            shared.clone(),
            faults,
            retry,
            loaded.journal_len,
            base_len,
        );
        if loaded.rewrite {
            // Written now, synchronously, so that a migration is durable
            // before the old file is set aside and a damaged journal is
            // replaced before anything is appended to it.
            match w.compact() {
                Ok(()) => {
                    if let Some(old) = &loaded.migrated {
                        let _ = std::fs::rename(old, dir.join("checkpoint.json.migrated"));
                    }
                }
                Err(e) => {
                    w.must_rewrite = true;
                    w.fail(&e);
                }
            }
        }
        let (wake, handle) = writer::spawn(w).map_err(CheckpointError::Spawn)?;
        Ok(Store {
            shared,
            wake: Some(wake),
            writer: Some(handle),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    fn wake(&self) {
        if let Some(w) = &self.wake {
            // Full means the writer has a wake-up pending: it covers this.
            let _ = w.try_send(());
        }
    }

    /// When the daemon last ran with this source, if ever. A source seen
    /// before has its unknown files read from their first line: they were
    /// created while the daemon was not running.
    pub fn source_last_seen(&self, source: &str) -> Option<SystemTime> {
        let g = self.lock();
        g.sources_at_start
            .get(source)
            .copied()
            .or(g.fallback_seen)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    /// Marks a source as initialized now, so that a restart before the
    /// first delivery still knows this is not a first start.
    pub fn touch_source(&self, source: &str) -> Result<(), CheckpointError> {
        {
            let mut g = self.lock();
            g.sources.insert(source.to_string(), now_secs());
            if g.persist {
                g.dirty_sources.insert(source.to_string());
                g.bump();
            }
        }
        self.wake();
        Ok(())
    }

    /// Finds a record for the file `(dev, ino)` of `source` whose
    /// fingerprint matches, marks it live and returns it. `first_bytes`
    /// reads the file's first `n` bytes. O(1) on average.
    pub fn claim(
        &self,
        source: &str,
        dev: u64,
        ino: u64,
        mut first_bytes: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> Option<Claimed> {
        let mut g = self.lock();
        let candidates = g.by_inode.get(&(dev, ino))?.clone();
        let id = candidates.into_iter().find(|id| {
            let s = &g.files[id];
            !s.live
                && s.rec.source == source
                && first_bytes(s.rec.fp_len as usize).is_some_and(|b| {
                    b.len() == s.rec.fp_len as usize && fingerprint(&b) == s.rec.fp_hash
                })
        })?;
        let slot = g.files.get_mut(&id).expect("indexed");
        slot.live = true;
        slot.rec.seen = now_secs();
        let claimed = Claimed {
            id,
            offset: slot.rec.offset,
            mark: slot.mark,
        };
        g.mark_dirty(id);
        Some(claimed)
    }

    /// Records of `source` last seen at `path` that are not followed now,
    /// with their read marks: the candidates for the content of a
    /// copytruncate copy made while the daemon was stopped. O(records of
    /// that path).
    pub fn dormant_at(&self, source: &str, path: &Path) -> Vec<(FileId, FileRecord, Option<Mark>)> {
        let g = self.lock();
        let Some(bucket) = g.by_path.get(&path_key(source, path)) else {
            return Vec::new();
        };
        bucket
            .iter()
            .filter_map(|id| g.files.get(id).map(|s| (*id, s)))
            .filter(|(_, s)| !s.live && s.rec.source == source && s.rec.path == path)
            .map(|(id, s)| (id, s.rec.clone(), s.mark))
            .collect()
    }

    /// Records of `source` that are not followed now, for finding rotated
    /// files again. O(records).
    pub fn dormant(&self, source: &str) -> Vec<FileRecord> {
        self.lock()
            .files
            .values()
            .filter(|s| !s.live && s.rec.source == source)
            .map(|s| s.rec.clone())
            .collect()
    }

    /// Registers a newly followed file and returns its id. Its offset is
    /// kept even if nothing is ever delivered from it (a file followed
    /// from its end must not count as new after a restart).
    pub fn track(&self, mut rec: FileRecord) -> FileId {
        let id = {
            let mut g = self.lock();
            let id = FileId(g.next_id);
            g.next_id += 1;
            rec.seen = rec.seen.max(now_secs());
            g.insert(
                id,
                Slot {
                    rec,
                    mark: None,
                    live: true,
                },
            );
            g.mark_dirty(id);
            id
        };
        self.wake();
        id
    }

    /// Updates what is known of a followed file (its fingerprint grows with
    /// the file up to [`FINGERPRINT_LEN`]; its path changes on rotation).
    /// Written at once: a restart needs both to find the file again.
    pub fn update(&self, id: FileId, path: Option<&Path>, fp: Option<(u32, u64)>) {
        self.update_locked(id, path, fp);
        self.wake();
    }

    fn update_locked(&self, id: FileId, path: Option<&Path>, fp: Option<(u32, u64)>) {
        let mut g = self.lock();
        let Some(slot) = g.files.get_mut(&id) else {
            return;
        };
        if let Some((len, hash)) = fp {
            slot.rec.fp_len = len;
            slot.rec.fp_hash = hash;
        }
        if let Some(p) = path.filter(|p| *p != slot.rec.path) {
            let old = slot.rec.clone();
            slot.rec.path = p.to_path_buf();
            let pk = path_key(&slot.rec.source, p);
            g.unindex_path(id, &old);
            g.by_path.entry(pk).or_default().push(id);
            g.bound_path(pk, id);
        }
        g.mark_dirty(id);
    }

    /// The content of file `id` now lives in another file (logrotate's
    /// `copytruncate` copied it, then truncated the original): the record,
    /// with its delivered offset, follows the content to the copy, so a
    /// restart finds the copy already delivered as far as it was.
    pub fn moved(&self, id: FileId, path: &Path, dev: u64, ino: u64) {
        {
            let mut g = self.lock();
            let Some(slot) = g.files.get_mut(&id) else {
                return;
            };
            let old = (slot.rec.dev, slot.rec.ino);
            slot.rec.dev = dev;
            slot.rec.ino = ino;
            if let Some(v) = g.by_inode.get_mut(&old) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    g.by_inode.remove(&old);
                }
            }
            g.by_inode.entry((dev, ino)).or_default().push(id);
        }
        self.update(id, Some(path), None);
    }

    /// The watcher read the file up to `mark.offset` (written lazily).
    pub fn note_read(&self, id: FileId, mark: Mark) {
        let mut g = self.lock();
        if let Some(slot) = g.files.get_mut(&id) {
            if slot.mark != Some(mark) {
                slot.mark = Some(mark);
                g.mark_dirty(id);
            }
        }
    }

    /// The file is no longer followed (deleted, or finished after a
    /// rotation). Its record stays until it expires, so that lines the
    /// sender still holds can be committed and the file can be claimed again.
    pub fn release(&self, id: FileId) {
        if let Some(slot) = self.lock().files.get_mut(&id) {
            slot.live = false;
        }
    }

    /// The delivered offset of a known file.
    pub fn offset(&self, id: FileId) -> Option<u64> {
        self.lock().files.get(&id).map(|s| s.rec.offset)
    }

    /// Discord accepted lines up to these offsets. Only memory is touched;
    /// the writer thread makes it durable shortly after.
    pub fn commit(
        &self,
        done: impl IntoIterator<Item = (FileId, u64)>,
    ) -> Result<(), CheckpointError> {
        {
            let mut g = self.lock();
            let now = now_secs();
            for (id, offset) in done {
                if let Some(slot) = g.files.get_mut(&id) {
                    slot.rec.offset = offset;
                    slot.rec.seen = now;
                    g.mark_dirty(id);
                }
            }
        }
        self.wake();
        Ok(())
    }

    /// Asks the writer to write everything pending now (without waiting).
    pub fn save(&self) -> Result<(), CheckpointError> {
        self.lock().bump();
        self.wake();
        Ok(())
    }

    /// Waits until everything changed so far is on disk, or `timeout`.
    /// True when it is (always in dry-run mode).
    pub fn flush(&self, timeout: Duration) -> bool {
        if self.wake.is_none() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        g.bump();
        let want = g.seq;
        drop(g);
        self.wake();
        let mut g = self.lock();
        while g.durable < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .shared
                .written
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Whether the state is written to disk (not in a dry run).
    pub fn persists(&self) -> bool {
        self.wake.is_some()
    }

    /// Why the state cannot be written right now (disk full, I/O error,
    /// read-only), or `None` while it can.
    pub fn trouble(&self) -> Option<String> {
        self.lock().trouble.clone()
    }
}

impl Drop for Store {
    /// A last synchronous write and fsync, so a clean stop is durable.
    fn drop(&mut self) {
        self.lock().stop = true;
        self.wake();
        if let Some(h) = self.writer.take() {
            h.finish(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests;
