//! The `checkpoint-writer` thread: the only code that writes the journal.
//!
//! It takes what changed (coalesced: one entry per record), appends it in
//! one write followed by one `fdatasync`, and meanwhile the store goes on
//! collecting the next batch (group commit). It compacts the journal by
//! writing the whole state to a temporary file, fsyncing it, renaming it
//! into place and fsyncing the directory. When a write fails it puts the
//! batch back, reports the trouble and retries every [`RETRY`]; after a
//! failed `fdatasync` the file's content is not trusted any more and the
//! next success must be a whole rewrite.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{EXPIRY, FileId, JOURNAL_FILE, MAX_FORGETS, Shared, journal, now_secs};

/// How often a failing write is tried again.
pub(super) const RETRY: Duration = Duration::from_secs(2);
/// Changes that do not ask for a write (read marks, fingerprints, paths)
/// wait at most this long for one.
const LAZY: Duration = Duration::from_secs(5);
/// A compaction at least this often: drops expired records, refreshes
/// followed ones.
const DAILY: Duration = Duration::from_secs(24 * 3600);
/// The journal is compacted when it is this many times the size of its
/// last compaction (and larger than [`MIN_COMPACT`]).
const GROWTH: u64 = 4;
const MIN_COMPACT: u64 = 64 * 1024;
/// After a compaction failed (while appending still works), wait this long
/// before trying again.
const COMPACT_BACKOFF: Duration = Duration::from_secs(60);
/// Records encoded per hold of the store's lock, and bytes per write.
const CHUNK: usize = 2048;
const WRITE_BUF: usize = 256 * 1024;

/// Test hook: called with the name of each file operation before it runs;
/// an error is returned instead of running it.
pub(super) type Faults = Arc<dyn Fn(&'static str) -> io::Result<()> + Send + Sync>;

/// What one write takes from the store.
struct Batch {
    ids: Vec<FileId>,
    sources: Vec<String>,
    forgets: Vec<u64>,
    seq: u64,
}

pub(super) struct Writer {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    shared: Arc<Shared>,
    faults: Option<Faults>,
    /// How often a failing write is tried again.
    retry: Duration,
    /// The journal, open for appending (`None` until first needed).
    file: Option<File>,
    /// Its length as far as written and synced.
    len: u64,
    /// Its length after the last compaction (or an estimate).
    base_len: u64,
    /// The journal on disk cannot be appended to (missing, damaged, or a
    /// sync failed): the next write must be a whole rewrite.
    pub(super) must_rewrite: bool,
    last_compact: Instant,
    compact_after: Option<Instant>,
}

/// The running writer thread.
pub(super) struct Handle {
    done: Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    /// Waits (at most `timeout`) for the writer's last write at stop.
    pub(super) fn finish(self, timeout: Duration) {
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => log::warn!(
                "the checkpoint writer did not finish within {}s; stopping without it",
                timeout.as_secs()
            ),
        }
    }
}

/// Starts the thread; returns its wake-up channel.
pub(super) fn spawn(w: Writer) -> io::Result<(Sender<()>, Handle)> {
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("checkpoint-writer".into())
        .spawn(move || {
            let _done = done_tx;
            w.run(wake_rx);
        })?;
    Ok((
        wake_tx,
        Handle {
            done: done_rx,
            thread,
        },
    ))
}

impl Writer {
    pub(super) fn new(
        dir: &Path,
        shared: Arc<Shared>,
        faults: Option<Faults>,
        retry: Duration,
        len: u64,
        base_len: u64,
    ) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            path: dir.join(JOURNAL_FILE),
            tmp: dir.join(format!(".{JOURNAL_FILE}.tmp")),
            shared,
            faults,
            retry,
            file: None,
            len,
            base_len,
            must_rewrite: false,
            last_compact: Instant::now(),
            compact_after: None,
        }
    }

    fn fault(&self, op: &'static str) -> io::Result<()> {
        match &self.faults {
            Some(f) => f(op),
            None => Ok(()),
        }
    }

    fn run(mut self, wake: Receiver<()>) {
        loop {
            if self.shared.lock().stop {
                return self.finish();
            }
            let ok = self.write_pending();
            let lazy = {
                let g = self.shared.lock();
                !g.dirty.is_empty() || !g.forgets.is_empty() || !g.dirty_sources.is_empty()
            };
            let timeout = if !ok {
                self.retry
            } else if lazy {
                LAZY
            } else {
                DAILY.saturating_sub(self.last_compact.elapsed()) + Duration::from_secs(1)
            };
            let deadline = Instant::now() + timeout;
            loop {
                match wake.recv_deadline(deadline) {
                    // In trouble, only a stop cuts the retry interval short.
                    Ok(()) if !ok && !self.shared.lock().stop => {}
                    Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        return self.finish();
                    }
                }
            }
        }
    }

    /// The last write at stop: followed files are stamped as seen now.
    fn finish(&mut self) {
        {
            let mut g = self.shared.lock();
            let now = now_secs();
            let live: Vec<FileId> = g
                .files
                .iter_mut()
                .filter(|(_, s)| s.live)
                .map(|(id, s)| {
                    s.rec.seen = now;
                    *id
                })
                .collect();
            g.dirty.extend(live);
        }
        if !self.write_pending() {
            log::error!(
                "stopping with changes to {} not written; some lines may be posted again after the restart",
                self.path.display()
            );
        }
    }

    fn compaction_due(&self) -> bool {
        let grown = self.len > GROWTH * self.base_len.max(MIN_COMPACT / GROWTH);
        let allowed = self.compact_after.is_none_or(|t| Instant::now() >= t);
        allowed && (grown || self.last_compact.elapsed() >= DAILY)
    }

    /// Writes whatever is pending; false when it failed (then retried).
    fn write_pending(&mut self) -> bool {
        let batch = {
            let mut g = self.shared.lock();
            if std::mem::take(&mut g.rewrite) {
                self.must_rewrite = true;
            }
            let nothing = g.dirty.is_empty() && g.dirty_sources.is_empty() && g.forgets.is_empty();
            if nothing && !self.must_rewrite && !self.compaction_due() {
                g.durable = g.seq;
                self.shared.written.notify_all();
                return true;
            }
            Batch {
                ids: g.dirty.drain().collect(),
                sources: std::mem::take(&mut g.dirty_sources).into_iter().collect(),
                forgets: std::mem::take(&mut g.forgets),
                seq: g.seq,
            }
        };
        if self.must_rewrite || self.compaction_due() {
            match self.compact() {
                Ok(()) => {
                    self.succeeded(batch.seq);
                    return true;
                }
                Err(e) if self.must_rewrite => {
                    self.restore(batch);
                    self.fail(&e);
                    return false;
                }
                Err(e) => {
                    // Appending needs less room than a rewrite: go on with it.
                    log::debug!("cannot compact {}: {e}", self.path.display());
                    self.compact_after = Some(Instant::now() + COMPACT_BACKOFF);
                }
            }
        }
        match self.append(&batch) {
            Ok(()) => {
                self.succeeded(batch.seq);
                true
            }
            Err(e) => {
                self.restore(batch);
                self.fail(&e);
                false
            }
        }
    }

    fn succeeded(&mut self, seq: u64) {
        let mut g = self.shared.lock();
        g.durable = g.durable.max(seq);
        if g.trouble.take().is_some() {
            log::info!(
                "checkpoint {} is written again; resuming",
                self.path.display()
            );
        }
        self.shared.written.notify_all();
    }

    /// Reports a failed write (logged once per episode).
    pub(super) fn fail(&mut self, e: &io::Error) {
        let why = format!("cannot write checkpoint {}: {e}", self.path.display());
        let mut g = self.shared.lock();
        if g.trouble.is_none() {
            log::error!(
                "{why}; keeping offsets in memory, not posting new lines, retrying every {:?}",
                self.retry
            );
        }
        g.trouble = Some(why);
    }

    /// Puts a batch that could not be written back (merged with what
    /// changed meanwhile: still one entry per record).
    fn restore(&mut self, b: Batch) {
        let mut g = self.shared.lock();
        for id in b.ids {
            if g.files.contains_key(&id) {
                g.dirty.insert(id);
            }
        }
        g.dirty_sources.extend(b.sources);
        if g.forgets.len() + b.forgets.len() > MAX_FORGETS {
            g.forgets.clear();
            g.rewrite = true;
        } else {
            g.forgets.extend(b.forgets);
        }
    }

    /// Encodes the current state of `ids`, a chunk per hold of the lock,
    /// handing each full buffer to `out`.
    fn encode_files(
        &self,
        ids: &[FileId],
        buf: &mut Vec<u8>,
        mut out: impl FnMut(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        for chunk in ids.chunks(CHUNK) {
            {
                let g = self.shared.lock();
                for id in chunk {
                    if let Some(s) = g.files.get(id) {
                        journal::encode_file(buf, id.0, &s.rec, s.mark);
                    }
                }
            }
            if buf.len() >= WRITE_BUF {
                out(buf)?;
                buf.clear();
            }
        }
        Ok(())
    }

    fn append(&mut self, b: &Batch) -> io::Result<()> {
        if self.file.is_none() {
            self.fault("open")?;
            let f = OpenOptions::new().append(true).open(&self.path)?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
        }
        let mut buf = Vec::new();
        {
            let g = self.shared.lock();
            for name in &b.sources {
                if let Some(t) = g.sources.get(name) {
                    journal::encode_source(&mut buf, name, *t);
                }
            }
        }
        for key in &b.forgets {
            journal::encode_forget(&mut buf, *key);
        }
        let mut written = 0u64;
        let mut file = self.file.take().expect("opened above");
        let mut r = {
            let mut put = |buf: &mut Vec<u8>| -> io::Result<()> {
                self.fault("write")?;
                file.write_all(buf)?;
                written += buf.len() as u64;
                Ok(())
            };
            let mut r = self.encode_files(&b.ids, &mut buf, &mut put);
            if r.is_ok() && !buf.is_empty() {
                r = put(&mut buf);
            }
            r
        };
        if r.is_ok() {
            r = self.fault("fdatasync").and_then(|()| file.sync_data());
            if r.is_err() {
                // After a failed sync the kernel may have dropped the pages:
                // what is on disk is unknown, so rewrite it whole.
                self.must_rewrite = true;
            }
        } else {
            // Cut what part of the batch made it, so the next append
            // starts on a record boundary (no room needed to shrink).
            let cut = self.fault("truncate").and_then(|()| file.set_len(self.len));
            if cut.is_err() {
                self.must_rewrite = true;
            }
        }
        self.file = Some(file);
        r?;
        self.len += written;
        Ok(())
    }

    /// Writes the whole state to a new file and renames it over the
    /// journal. Drops expired records and stamps followed ones as seen.
    pub(super) fn compact(&mut self) -> io::Result<()> {
        let (ids, sources) = {
            let mut g = self.shared.lock();
            let now = now_secs();
            g.expire(now.saturating_sub(EXPIRY.as_secs()));
            for s in g.files.values_mut().filter(|s| s.live) {
                s.rec.seen = now;
            }
            let mut ids: Vec<FileId> = g.files.keys().copied().collect();
            ids.sort_unstable();
            (ids, g.sources.clone())
        };
        let _ = std::fs::remove_file(&self.tmp);
        let r = self.write_tmp(&ids, &sources);
        let (file, len) = match r {
            Ok(x) => x,
            Err(e) => {
                // Free the room a partial file takes on a full disk.
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        if let Err(e) = self
            .fault("rename")
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
        {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        self.file = Some(file);
        self.len = len;
        self.base_len = len;
        self.last_compact = Instant::now();
        self.compact_after = None;
        // Until the directory is synced the rename may not survive a power
        // cut: keep rewriting until it does.
        self.must_rewrite = true;
        self.fault("dirsync")
            .and_then(|()| File::open(&self.dir)?.sync_all())?;
        self.must_rewrite = false;
        Ok(())
    }

    fn write_tmp(
        &self,
        ids: &[FileId],
        sources: &std::collections::BTreeMap<String, u64>,
    ) -> io::Result<(File, u64)> {
        self.fault("create")?;
        let mut f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&self.tmp)?;
        let mut buf = Vec::with_capacity(WRITE_BUF);
        journal::encode_header(&mut buf);
        for (name, t) in sources {
            journal::encode_source(&mut buf, name, *t);
        }
        let mut len = 0u64;
        let mut put = |buf: &mut Vec<u8>| -> io::Result<()> {
            self.fault("write")?;
            f.write_all(buf)?;
            len += buf.len() as u64;
            Ok(())
        };
        self.encode_files(ids, &mut buf, &mut put)?;
        if !buf.is_empty() {
            put(&mut buf)?;
        }
        self.fault("fsync")?;
        f.sync_all()?;
        Ok((f, len))
    }
}
