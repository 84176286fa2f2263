//! Where each file stands: the offsets Discord has accepted, kept on disk.
//!
//! A file is known by its device and inode *and* by a fingerprint (a hash
//! of its first bytes), because logrotate frees inodes that the next file
//! may reuse. The watcher registers the files it opens ([`Store::track`])
//! and looks up files it finds on disk ([`Store::claim`]); the sender moves
//! a file's offset forward only after Discord accepted the message that
//! carried its lines ([`Store::commit`]). Every commit rewrites the state
//! file atomically (temporary file, then rename), so a crash of the process
//! at any instant leaves either the old or the new checkpoint, and after a
//! crash at most the batch in flight is posted again. The fsync of the file
//! and of its directory, which guards against power loss, runs on a small
//! background thread: a slow disk (an fsync can take half a second) never
//! holds up the next post.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file's content.
pub const FINGERPRINT_LEN: usize = 512;
/// Records of files not seen for this long are forgotten.
const EXPIRY: Duration = Duration::from_secs(14 * 24 * 3600);
const STATE_FILE: &str = "checkpoint.json";

/// A file for the lifetime of this process (not persisted).
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
}

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

/// How far the watcher read a file, and what the bytes just before that
/// offset were: the `len` (at most 64) bytes ending at `offset` hash
/// ([`fingerprint`]) to `hash`. A file whose bytes there changed was
/// rewritten, even if its size and first bytes are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mark {
    pub offset: u64,
    pub len: u32,
    pub hash: u64,
}

/// A record found again by [`Store::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub id: FileId,
    /// Delivered up to here.
    pub offset: u64,
    /// The last read noted with [`Store::note_read`], if any.
    pub mark: Option<Mark>,
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
    /// The last read the watcher noted (see [`Mark`]).
    #[serde(default)]
    pub mark: Option<Mark>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct SourceState {
    /// Unix seconds of the last time the daemon ran with this source.
    last_seen: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    sources: BTreeMap<String, SourceState>,
    #[serde(default)]
    files: Vec<FileRecord>,
}

#[derive(Debug)]
struct Slot {
    rec: FileRecord,
    /// Followed by a tailer now (so not available to `claim`).
    live: bool,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<FileId, Slot>,
    /// Records by (device, inode), so a claim does not look at every record.
    by_inode: HashMap<(u64, u64), Vec<FileId>>,
    sources: BTreeMap<String, SourceState>,
    /// Sources as they were when the process started.
    sources_at_start: BTreeMap<String, SourceState>,
    next_id: u64,
}

/// The checkpoint store, shared by the watcher and the sender.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    /// `None` in dry-run mode: read the state, never write it.
    dir: Option<PathBuf>,
    /// Wakes the thread that fsyncs what was renamed into place.
    sync: Option<crossbeam_channel::Sender<()>>,
}

/// The state file as written: borrowed, so saving copies nothing.
#[derive(Serialize)]
struct StateRef<'a> {
    version: u32,
    sources: &'a BTreeMap<String, SourceState>,
    files: Vec<&'a FileRecord>,
}

/// Makes renamed checkpoints durable; requests that arrive during an
/// fsync are merged into one.
fn spawn_syncer(dir: PathBuf) -> Option<crossbeam_channel::Sender<()>> {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("checkpoint-sync".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let file = std::fs::File::open(dir.join(STATE_FILE)).and_then(|f| f.sync_all());
                let d = std::fs::File::open(&dir).and_then(|d| d.sync_all());
                if let Err(e) = file.and(d) {
                    log::warn!("cannot fsync checkpoint in {}: {e}", dir.display());
                }
            }
        })
        .ok()?;
    Some(tx)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens the store in `dir`, creating the directory. An unreadable or
    /// corrupt state file is set aside (renamed `.corrupt`) with a warning
    /// rather than stopping the daemon: it then behaves as on a first start.
    pub fn open(dir: &Path, persist: bool) -> Result<Store, CheckpointError> {
        if persist {
            std::fs::create_dir_all(dir).map_err(|source| CheckpointError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(
                        "checkpoint {} is corrupt ({e}); starting without it",
                        path.display()
                    );
                    if persist {
                        let _ = std::fs::rename(&path, dir.join("checkpoint.json.corrupt"));
                    }
                    StateFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                log::warn!(
                    "cannot read checkpoint {}: {e}; starting without it",
                    path.display()
                );
                StateFile::default()
            }
        };
        let cutoff = now_secs().saturating_sub(EXPIRY.as_secs());
        let mut inner = Inner {
            sources_at_start: state.sources.clone(),
            sources: state.sources,
            ..Inner::default()
        };
        for rec in state.files.into_iter().filter(|r| r.seen >= cutoff) {
            let id = FileId(inner.next_id);
            inner.next_id += 1;
            inner
                .by_inode
                .entry((rec.dev, rec.ino))
                .or_default()
                .push(id);
            inner.files.insert(id, Slot { rec, live: false });
        }
        Ok(Store {
            inner: Mutex::new(inner),
            dir: persist.then(|| dir.to_path_buf()),
            sync: if persist {
                spawn_syncer(dir.to_path_buf())
            } else {
                None
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data
        // (every update is a single assignment), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the daemon last ran with this source, if ever. A source seen
    /// before has its unknown files read from their first line: they were
    /// created while the daemon was not running.
    pub fn source_last_seen(&self, source: &str) -> Option<SystemTime> {
        self.lock()
            .sources_at_start
            .get(source)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s.last_seen))
    }

    /// Marks a source as initialized now and saves, so that a restart
    /// before the first delivery still knows this is not a first start.
    pub fn touch_source(&self, source: &str) -> Result<(), CheckpointError> {
        self.lock().sources.insert(
            source.to_string(),
            SourceState {
                last_seen: now_secs(),
            },
        );
        self.save()
    }

    /// Finds a record for the file `(dev, ino)` whose fingerprint matches,
    /// marks it live and returns its id and delivered offset. `first_bytes`
    /// reads the file's first `n` bytes.
    pub fn claim(
        &self,
        source: &str,
        dev: u64,
        ino: u64,
        mut first_bytes: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> Option<Claimed> {
        let mut inner = self.lock();
        let mut hit = None;
        let ids = inner.by_inode.get(&(dev, ino)).cloned().unwrap_or_default();
        for id in &ids {
            let Some(slot) = inner.files.get(id) else {
                continue;
            };
            let r = &slot.rec;
            if slot.live || r.source != source || r.dev != dev || r.ino != ino {
                continue;
            }
            match first_bytes(r.fp_len as usize) {
                Some(b) if b.len() == r.fp_len as usize && fingerprint(&b) == r.fp_hash => {
                    hit = Some(*id);
                    break;
                }
                _ => {}
            }
        }
        let id = hit?;
        let slot = inner.files.get_mut(&id).expect("found above");
        slot.live = true;
        slot.rec.seen = now_secs();
        Some(Claimed {
            id,
            offset: slot.rec.offset,
            mark: slot.rec.mark,
        })
    }

    /// The watcher read this file up to `mark.offset`; kept in memory and
    /// written with the next save.
    pub fn note_read(&self, id: FileId, mark: Mark) {
        if let Some(slot) = self.lock().files.get_mut(&id) {
            slot.rec.mark = Some(mark);
        }
    }

    /// Records that are not followed now, for finding rotated files again.
    pub fn dormant(&self, source: &str) -> Vec<FileRecord> {
        self.lock()
            .files
            .values()
            .filter(|s| !s.live && s.rec.source == source)
            .map(|s| s.rec.clone())
            .collect()
    }

    /// Registers a newly followed file and returns its id.
    pub fn track(&self, rec: FileRecord) -> FileId {
        let mut inner = self.lock();
        let id = FileId(inner.next_id);
        inner.next_id += 1;
        inner
            .by_inode
            .entry((rec.dev, rec.ino))
            .or_default()
            .push(id);
        inner.files.insert(id, Slot { rec, live: true });
        id
    }

    /// Updates what is known of a followed file (its fingerprint grows with
    /// the file up to [`FINGERPRINT_LEN`]; its path changes on rotation).
    pub fn update(&self, id: FileId, path: Option<&Path>, fp: Option<(u32, u64)>) {
        let mut inner = self.lock();
        if let Some(slot) = inner.files.get_mut(&id) {
            if let Some(p) = path {
                slot.rec.path = p.to_path_buf();
            }
            if let Some((len, hash)) = fp {
                slot.rec.fp_len = len;
                slot.rec.fp_hash = hash;
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

    /// The delivered offset of a followed file.
    pub fn offset(&self, id: FileId) -> Option<u64> {
        self.lock().files.get(&id).map(|s| s.rec.offset)
    }

    /// Discord accepted lines up to these offsets: record and persist.
    pub fn commit(
        &self,
        done: impl IntoIterator<Item = (FileId, u64)>,
    ) -> Result<(), CheckpointError> {
        {
            let mut inner = self.lock();
            let now = now_secs();
            for (id, offset) in done {
                if let Some(slot) = inner.files.get_mut(&id) {
                    slot.rec.offset = offset;
                    slot.rec.seen = now;
                }
            }
        }
        self.save()
    }

    /// Writes the state file atomically (no-op in dry-run mode).
    pub fn save(&self) -> Result<(), CheckpointError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let bytes = {
            let mut inner = self.lock();
            let now = now_secs();
            let cutoff = now.saturating_sub(EXPIRY.as_secs());
            inner.files.retain(|_, s| s.live || s.rec.seen >= cutoff);
            let Inner {
                files, by_inode, ..
            } = &mut *inner;
            by_inode.retain(|_, ids| {
                ids.retain(|id| files.contains_key(id));
                !ids.is_empty()
            });
            let state = StateRef {
                version: 1,
                sources: &inner.sources,
                files: inner.files.values().map(|s| &s.rec).collect(),
            };
            serde_json::to_vec(&state).expect("state serializes")
        };
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".checkpoint.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| CheckpointError::Write { path, source })?;
        if let Some(tx) = &self.sync {
            // Full means a sync is already pending: it will cover this too.
            let _ = tx.try_send(());
        }
        Ok(())
    }
}

impl Drop for Store {
    /// A last synchronous fsync, so a clean stop leaves a durable state.
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::File::open(dir.join(STATE_FILE)).and_then(|f| f.sync_all());
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ino: u64, content: &[u8], offset: u64) -> FileRecord {
        FileRecord {
            source: "s".into(),
            path: "/x.log".into(),
            dev: 1,
            ino,
            fp_len: content.len() as u32,
            fp_hash: fingerprint(content),
            offset,
            seen: now_secs(),
            mark: None,
        }
    }

    #[test]
    fn commit_persists_and_reopen_claims_by_inode_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), true).unwrap();
        assert!(s.source_last_seen("s").is_none());
        s.touch_source("s").unwrap();
        let id = s.track(rec(7, b"first line\n", 0));
        s.commit([(id, 11)]).unwrap();

        let s = Store::open(dir.path(), true).unwrap();
        assert!(s.source_last_seen("s").is_some());
        // Same inode, other content (inode reuse): not the same file.
        assert!(
            s.claim("s", 1, 7, |n| Some(b"other line\n"[..n].to_vec()))
                .is_none()
        );
        let c = s
            .claim("s", 1, 7, |n| Some(b"first line\nmore"[..n].to_vec()))
            .unwrap();
        assert_eq!(c.offset, 11);
        let id2 = c.id;
        // Claimed files are live and cannot be claimed twice.
        assert!(
            s.claim("s", 1, 7, |n| Some(b"first line\n"[..n].to_vec()))
                .is_none()
        );
        s.release(id2);
        assert_eq!(s.dormant("s").len(), 1);
    }

    #[test]
    fn corrupt_state_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let s = Store::open(dir.path(), true).unwrap();
        assert!(s.dormant("s").is_empty());
        assert!(dir.path().join("checkpoint.json.corrupt").exists());
    }

    #[test]
    fn dry_run_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state"), false).unwrap();
        let id = s.track(rec(1, b"", 0));
        s.commit([(id, 5)]).unwrap();
        assert!(!dir.path().join("state").exists());
    }
}
