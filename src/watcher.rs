//! The watcher thread: decides which files to follow, reads them when
//! inotify says they changed, and sends their new lines to the sender.
//!
//! It owns every open file ([`Tailer`]). inotify events arrive through the
//! `notify` crate, whose callback only forwards them into a bounded channel;
//! a rescan every `FILE_CHECK_INTERVAL` catches anything events missed.
//! A file is never let go before it was read to its end through the
//! descriptor already open, which is what makes rotation (rename, then a
//! new file) and the Ekos switch to a newer session file lose nothing.
//! Sending blocks when the sender is behind (bounded channel), so during an
//! outage the watcher stops reading ahead and memory stays flat; it still
//! answers pings and shutdown while blocked.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{Receiver, Select, Sender, bounded};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::checkpoint::{FileId, FileRecord, Store};
use crate::config::{Config, Follow, StartAt};
use crate::discover;
use crate::format::{self, EventPart};
use crate::service::{Control, Stats};
use crate::tail::{self, Line, TailError, Tailer};

/// Lines of one file, in order, as read in one go.
#[derive(Debug)]
pub struct Chunk {
    pub file: FileId,
    /// Index of the source in the configuration (for its filter and rules).
    pub source: usize,
    /// Index of the destination webhook.
    pub route: usize,
    pub label: Option<Arc<str>>,
    /// Byte offset where the first line begins (each later line begins
    /// where the one before ends): the sender needs a line's start for the
    /// checkpoint and must not ask the store for it.
    pub start: u64,
    pub lines: Vec<Line>,
    /// How each line is posted (see [`format::classify_line`]): decided
    /// here, because parsing is the costly part of the pipeline and this
    /// spreads the work over two cores.
    pub shown: Vec<Option<Option<EventPart>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start inotify: {0}")]
    Notify(#[from] notify::Error),
}

/// Whether the thread goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

#[derive(Debug, Default)]
struct SourceState {
    present: bool,
    /// In `newest` mode, the file being followed.
    current: Option<FileId>,
    /// Warned that the root is missing (warn once per disappearance).
    warned_missing: bool,
    /// The ancestor watched while the root does not exist.
    parent_watch: Option<PathBuf>,
    /// inotify watches the root: its files need no reading at rescans.
    watched: bool,
}

pub struct Watcher {
    cfg: Arc<Config>,
    store: Arc<Store>,
    stats: Arc<Stats>,
    sources: Vec<SourceState>,
    tailers: HashMap<FileId, Tailer>,
    by_inode: HashMap<(u64, u64), FileId>,
    /// Tailers whose path no longer names them (renamed away), with when.
    retired: HashMap<FileId, Instant>,
    /// Paths already warned about, so a problem is logged once.
    warned: HashSet<PathBuf>,
    buf: Vec<u8>,
    started: SystemTime,
    ready: Option<Sender<()>>,
    /// Extra looks after a directory was created: files written in it
    /// before inotify watched it sent no event.
    rechecks: Vec<Instant>,
    /// What the status line last showed (see `publish_followed`).
    published: Option<(usize, usize, u64)>,
    /// Periodic rescans so far (some work is done only every tenth).
    rescans: u64,
    /// How far released files were read: if one is followed again, it
    /// resumes there rather than at the (older) delivered offset, whose
    /// lines are still on their way to Discord.
    read_upto: HashMap<FileId, u64>,
    /// Ids renewed after a truncation: old → new.
    renamed: HashMap<FileId, FileId>,
}

/// Whether a file's content appeared after `t` (birth time when the file
/// system reports it, else modification time).
fn newer_than(meta: &std::fs::Metadata, t: SystemTime) -> bool {
    // File systems stamp times from a coarse clock (one timer tick, up to
    // 10 ms behind), so a file created just after `t` can look older; a
    // margin errs on the side of reading a file whole rather than losing
    // its first lines.
    let t = t - std::time::Duration::from_secs(2);
    let born = meta.created().or_else(|_| meta.modified());
    born.map(|b| b >= t).unwrap_or(false)
}

/// Compressed rotated logs are never read (they would be posted as garbage).
fn is_compressed(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".gz", ".xz", ".zst", ".bz2", ".lz4", ".Z"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// Rotated copies of `path` in its directory (`x.log.1`, `x.log-20240101`),
/// uncompressed ones only, oldest first.
fn rotated_siblings(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_name()?.to_str()?.to_string();
            let rest = n.strip_prefix(name)?;
            let rotated = rest
                .strip_prefix('.')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                || rest.starts_with('-');
            if !rotated || is_compressed(&p) {
                return None;
            }
            let m = std::fs::symlink_metadata(&p).ok().filter(|m| m.is_file())?;
            Some((m.modified().ok()?, p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// The end of the last complete line at or before `len`, so that starting
/// "at the end" never starts in the middle of a line.
fn last_line_end(file: &std::fs::File, len: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        if file.read_exact_at(&mut buf[..n], start).is_err() {
            return len;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return start + i as u64 + 1;
        }
        end = start;
        if len - end > 1024 * 1024 {
            // No newline in the last MiB: one giant line; start at the end.
            return len;
        }
    }
    0
}

impl Watcher {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        stats: Arc<Stats>,
        ready: Sender<()>,
    ) -> Watcher {
        Watcher {
            sources: cfg.sources.iter().map(|_| SourceState::default()).collect(),
            cfg,
            store,
            stats,
            tailers: HashMap::new(),
            by_inode: HashMap::new(),
            retired: HashMap::new(),
            warned: HashSet::new(),
            buf: Vec::new(),
            started: SystemTime::now(),
            ready: Some(ready),
            rechecks: Vec::new(),
            published: None,
            rescans: 1,
            read_upto: HashMap::new(),
            renamed: HashMap::new(),
        }
    }

    /// The actor loop: set up, report ready, read the backlog, then react
    /// to inotify events, rescans and control messages until told to stop.
    pub fn run(
        mut self,
        control: Receiver<Control>,
        out: Vec<Sender<Chunk>>,
    ) -> Result<(), WatchError> {
        let (ev_tx, ev_rx) = bounded::<notify::Result<notify::Event>>(4096);
        let mut inotify = notify::recommended_watcher(move |res| {
            // Only forward: all work happens on the watcher thread.
            let _ = ev_tx.send(res);
        })?;

        for i in 0..self.cfg.sources.len() {
            self.setup_source(i, &mut inotify, false);
        }
        self.publish_followed();
        if let Some(r) = self.ready.take() {
            let _ = r.send(());
        }
        if self.drain_all(&control, &out) == Flow::Stop {
            return Ok(());
        }

        let interval = self.cfg.file_check_interval;
        let mut next_scan = Instant::now() + interval;
        loop {
            let wake = self.rechecks.iter().copied().fold(next_scan, Instant::min);
            let timeout = wake.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(ev_rx) -> ev => {
                    let Ok(first) = ev else { break };
                    // Take everything queued and handle each path once.
                    let mut events = vec![first];
                    while let Ok(e) = ev_rx.try_recv() {
                        events.push(e);
                        if events.len() >= 4096 { break; }
                    }
                    if self.on_events(events, &mut inotify, &control, &out) == Flow::Stop {
                        break;
                    }
                }
                recv(control) -> msg => match msg {
                    Ok(Control::Ping(n)) => self.pong(n),
                    Ok(Control::Shutdown) | Ok(Control::Abort) | Err(_) => break,
                },
                default(timeout) => {
                    let now = Instant::now();
                    if now >= next_scan {
                        if self.rescan(&mut inotify, &control, &out, false) == Flow::Stop {
                            break;
                        }
                        next_scan = Instant::now() + interval;
                    } else {
                        self.rechecks.retain(|t| *t > now);
                        for i in 0..self.cfg.sources.len() {
                            if self.sources[i].present && self.scan_source(i, true, &control, &out) == Flow::Stop {
                                return Ok(());
                            }
                        }
                        if self.drain_all(&control, &out) == Flow::Stop {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn pong(&self, n: u64) {
        self.stats
            .watcher_pong
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn warn_once(&mut self, path: &Path, msg: impl FnOnce() -> String) {
        if self.warned.insert(path.to_path_buf()) {
            let m = msg();
            log::warn!(file = path.display().to_string().as_str(); "{m}");
            self.stats.record_error(Some(m));
        }
    }

    fn publish_followed(&mut self) {
        // Cheap when nothing changed: thousands of followed files make the
        // list itself costly to build at every rescan.
        let key = (
            self.tailers.len(),
            self.retired.len(),
            self.next_publish_key(),
        );
        if self.published == Some(key) {
            return;
        }
        self.published = Some(key);
        let mut v: Vec<String> = self
            .tailers
            .values()
            .filter(|t| !self.retired.contains_key(&t.id))
            .map(|t| t.path.display().to_string())
            .collect();
        v.sort();
        self.stats.set_followed(v);
    }

    /// Changes whenever a file is opened (ids only grow).
    fn next_publish_key(&self) -> u64 {
        self.tailers.keys().map(|k| k.0).max().unwrap_or(0)
    }

    /// Watches a source's root (or, while it is missing, its nearest
    /// existing ancestor) and opens its files.
    fn setup_source(&mut self, i: usize, inotify: &mut notify::RecommendedWatcher, running: bool) {
        let src = self.cfg.sources[i].clone();
        if !src.root.is_dir() {
            let st = &mut self.sources[i];
            if !st.warned_missing {
                st.warned_missing = true;
                log::warn!(
                    "logs directory {} ({}) does not exist yet; waiting for it to appear",
                    src.root.display(),
                    src.root_key
                );
            }
            // Watch the deepest existing ancestor; it moves down as the
            // missing directories are created one by one.
            let anc = src
                .root
                .ancestors()
                .skip(1)
                .find(|a| a.is_dir())
                .map(Path::to_path_buf);
            if anc != st.parent_watch {
                if let Some(old) = st.parent_watch.take() {
                    let _ = inotify.unwatch(&old);
                }
                if let Some(a) = anc {
                    if inotify.watch(&a, RecursiveMode::NonRecursive).is_ok() {
                        st.parent_watch = Some(a);
                    }
                }
            }
            // It may have appeared while the watch was being set up.
            if !src.root.is_dir() {
                return;
            }
        }
        let watched = inotify.watch(&src.root, RecursiveMode::Recursive);
        self.sources[i].watched = watched.is_ok();
        if let Err(e) = watched {
            // Typically the inotify watch limit: polling by rescans still works.
            log::warn!(
                "cannot watch {} with inotify ({e}); new lines will only be seen every {} s (raise fs.inotify.max_user_watches)",
                src.root.display(),
                self.cfg.file_check_interval.as_secs_f64()
            );
        }
        let st = &mut self.sources[i];
        if let Some(p) = st.parent_watch.take() {
            let _ = inotify.unwatch(&p);
        }
        // A root that appeared while we ran holds only new files.
        let running = running || st.warned_missing;
        if st.warned_missing {
            log::info!(
                "logs directory {} appeared; following it",
                src.root.display()
            );
        }
        st.warned_missing = false;
        st.present = true;
        let last_seen = self.store.source_last_seen(&src.name);
        let scan = match discover::scan(&src, |_| false) {
            Ok(s) => s,
            Err(e) => {
                self.warn_once(&src.root, || {
                    format!("cannot read logs directory {}: {e}", src.root.display())
                });
                return;
            }
        };
        self.report_problems(&scan.problems);
        // Files we were following when the daemon last stopped, maybe
        // rotated to another name since: finish them first.
        self.resume_dormant(i);
        let mut files = scan.files;
        files.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
        let newest = discover::newest(&files).map(|f| f.path.clone());
        // Rotated copies written while we were stopped (rotated once more
        // before we came back): read them, oldest first, before the file.
        if let Some(seen) = last_seen {
            for f in &files {
                if src.follow == Follow::Newest && Some(&f.path) != newest.as_ref() {
                    continue;
                }
                for p in rotated_siblings(&f.path) {
                    let changed = std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m > seen);
                    if changed {
                        let rel = p.strip_prefix(&src.root).unwrap_or(&p).to_path_buf();
                        if let Some(id) = self.follow(i, &p, &rel, false) {
                            self.retired.entry(id).or_insert_with(Instant::now);
                        }
                    }
                }
            }
        }
        for f in &files {
            let is_newest = Some(&f.path) == newest.as_ref();
            let changed_while_down = last_seen.is_some_and(|t| f.mtime > t);
            match src.follow {
                Follow::All => {
                    self.follow(i, &f.path, &f.rel, running);
                }
                Follow::Newest if is_newest => {
                    if let Some(id) = self.follow(i, &f.path, &f.rel, running) {
                        self.sources[i].current = Some(id);
                    }
                }
                Follow::Newest => {
                    // An older file: only finish it if it holds lines we
                    // have not delivered (known with a lower offset, or
                    // written while we were not running).
                    if changed_while_down || running {
                        if let Some(id) = self.follow(i, &f.path, &f.rel, running) {
                            self.retired.insert(id, Instant::now());
                        }
                    }
                }
            }
        }
        if let Err(e) = self.store.touch_source(&src.name) {
            log::error!("{e}");
        }
    }

    fn report_problems(&mut self, problems: &[(PathBuf, String)]) {
        for (p, why) in problems {
            self.warn_once(p, || format!("skipping {}: {why}", p.display()));
        }
    }

    /// Finds files from the checkpoint that are not followed (typically
    /// renamed by logrotate while the daemon was stopped) by device, inode
    /// and fingerprint in their directory, and reads them to their end.
    fn resume_dormant(&mut self, i: usize) {
        let src = self.cfg.sources[i].clone();
        for rec in self.store.dormant(&src.name) {
            let Some(dir) = rec.path.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                // gzip makes a new inode anyway; never read compressed data.
                if is_compressed(&p) {
                    continue;
                }
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() && m.dev() == rec.dev && m.ino() == rec.ino => {}
                    _ => continue,
                }
                let rel = p.strip_prefix(&src.root).unwrap_or(&p).to_path_buf();
                if let Some(id) = self.open_tailer(i, &p, &rel, false) {
                    // A rotated name, or an older Ekos file: read to the end,
                    // then let go.
                    if !src.matches(&rel) || src.follow == Follow::Newest {
                        self.retired.insert(id, Instant::now());
                    }
                }
                break;
            }
        }
    }

    /// Opens a file for following unless it is followed already.
    fn follow(&mut self, i: usize, path: &Path, rel: &Path, running: bool) -> Option<FileId> {
        if let Ok(m) = std::fs::metadata(path) {
            if let Some(id) = self.by_inode.get(&(m.dev(), m.ino())) {
                return Some(*id);
            }
        }
        self.open_tailer(i, path, rel, running)
    }

    /// Opens `path` and decides where to start: at its checkpoint if the
    /// file is known; at 0 if it appeared while we were running (all of it
    /// is new) or was changed while we were stopped; else per `start_at`.
    fn open_tailer(&mut self, i: usize, path: &Path, rel: &Path, running: bool) -> Option<FileId> {
        let src = &self.cfg.sources[i];
        let (file, meta) = match tail::open_regular(path) {
            Ok(x) => x,
            Err(TailError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                let name = src.name.clone();
                self.warn_once(path, || {
                    format!(
                        "cannot read {}: permission denied; grant the service user read access (e.g. `setfacl -m u:ekos-log-monitor:r {}` and `x` on its directories), or run the service as the logs' owner; retrying at each rescan (source {name})",
                        path.display(),
                        path.display()
                    )
                });
                return None;
            }
            Err(e) => {
                self.warn_once(path, || e.to_string());
                return None;
            }
        };
        if self.warned.remove(path) {
            log::info!("{} is readable now", path.display());
        }
        let key = (meta.dev(), meta.ino());
        if let Some(id) = self.by_inode.get(&key) {
            return Some(*id);
        }
        let claimed = self
            .store
            .claim(&src.name, meta.dev(), meta.ino(), |n| {
                tail::first_bytes(&file, n).ok()
            })
            .map(|c| (c.id, c.offset));
        let last_seen = self.store.source_last_seen(&src.name);
        let (id, start, why) = match claimed {
            Some((id, off)) if off <= meta.len() => {
                let read = self
                    .read_upto
                    .get(&id)
                    .copied()
                    .filter(|r| *r <= meta.len());
                (Some(id), read.unwrap_or(0).max(off), "checkpoint")
            }
            Some((id, _)) => (Some(id), 0, "checkpoint beyond end: truncated"),
            None if running && newer_than(&meta, self.started) => (None, 0, "new file"),
            None if last_seen.is_some_and(|t| meta.modified().is_ok_and(|m| m > t)) => {
                (None, 0, "changed while stopped")
            }
            None => match src.start_at {
                StartAt::Beginning => (None, 0, "start_at = beginning"),
                StartAt::End => (None, last_line_end(&file, meta.len()), "start_at = end"),
            },
        };
        let label: Option<Arc<str>> = match src.follow {
            Follow::All => Some(Arc::from(rel.to_string_lossy().as_ref())),
            Follow::Newest => None,
        };
        let id = id.unwrap_or_else(|| {
            self.store.track(FileRecord {
                source: src.name.clone(),
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                fp_len: 0,
                fp_hash: 0,
                offset: start,
                seen: 0,
            })
        });
        let t = match Tailer::new(id, i, path.to_path_buf(), label, file, &meta, start) {
            Ok(t) => t,
            Err(e) => {
                self.warn_once(path, || format!("cannot read {}: {e}", path.display()));
                self.store.release(id);
                return None;
            }
        };
        self.store.update(id, Some(path), Some(t.fingerprint()));
        log::info!(
            file = path.display().to_string().as_str();
            "following {} from offset {start} ({why})",
            path.display()
        );
        self.by_inode.insert(key, id);
        self.tailers.insert(id, t);
        Some(id)
    }

    fn release(&mut self, id: FileId) {
        let id = self.resolve(id);
        if let Some(t) = self.tailers.remove(&id) {
            self.read_upto.insert(id, t.line_end());
            self.by_inode.remove(&(t.dev, t.ino));
            self.retired.remove(&id);
            self.store.release(id);
            log::debug!("released {}", t.path.display());
        }
    }

    /// Reads one file to its current end, sending its lines.
    fn drain(&mut self, id: FileId, control: &Receiver<Control>, out: &[Sender<Chunk>]) -> Flow {
        let mut id = self.resolve(id);
        let mut lines = Vec::new();
        loop {
            let Some(t) = self.tailers.get_mut(&id) else {
                return Flow::Go;
            };
            let start = t.line_end();
            let mut report = match t.read(&mut self.buf, &mut lines, tail::READ_CHUNK) {
                Ok(r) => r,
                Err(e) => {
                    let p = t.path.clone();
                    self.warn_once(&p, || format!("cannot read {}: {e}", p.display()));
                    return Flow::Go;
                }
            };
            if report.restarted {
                log::info!(
                    file = t.path.display().to_string().as_str();
                    "{} was truncated or rewritten; reading it again from the start",
                    t.path.display()
                );
            }
            if let Some((old_end, old_fp)) = report.previous.take() {
                // Lines of the old content, and of its copy, are committed
                // under the old id; the new content is a new file for the
                // checkpoint, starting at 0, so that the old offset can never
                // be taken for a position in the new content.
                if self.recover_copy(id, old_end, &old_fp, control, out) == Flow::Stop {
                    return Flow::Stop;
                }
                id = self.renew_id(id);
                continue;
            }
            if report.fingerprint_changed {
                self.store.update(id, None, Some(t.fingerprint()));
            }
            if !lines.is_empty() {
                let (source, label) = (t.source, t.label.clone());
                let chunk = self.chunk(id, source, label, start, std::mem::take(&mut lines));
                if self.send(chunk, control, out) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            if !report.more {
                return Flow::Go;
            }
        }
    }

    /// Gives a followed file a new checkpoint identity (after its content
    /// was replaced), keeping everything that refers to it consistent.
    fn renew_id(&mut self, id: FileId) -> FileId {
        let Some(mut t) = self.tailers.remove(&id) else {
            return id;
        };
        let (fp_len, fp_hash) = t.fingerprint();
        let new_id = self.store.track(FileRecord {
            source: self.cfg.sources[t.source].name.clone(),
            path: t.path.clone(),
            dev: t.dev,
            ino: t.ino,
            fp_len,
            fp_hash,
            offset: 0,
            seen: 0,
        });
        t.id = new_id;
        self.by_inode.insert((t.dev, t.ino), new_id);
        self.tailers.insert(new_id, t);
        if let Some(since) = self.retired.remove(&id) {
            self.retired.insert(new_id, since);
        }
        for st in self.sources.iter_mut() {
            if st.current == Some(id) {
                st.current = Some(new_id);
            }
        }
        self.store.release(id);
        self.renamed.insert(id, new_id);
        new_id
    }

    /// The current id of a file that may have been renewed since.
    fn resolve(&self, mut id: FileId) -> FileId {
        while let Some(next) = self.renamed.get(&id) {
            id = *next;
        }
        id
    }

    /// After a truncation, looks beside the file for a copy of its old
    /// content (logrotate's `copytruncate` makes one just before it
    /// truncates) and sends the lines written after our last read, which
    /// would otherwise be lost in the window between copy and truncate.
    fn recover_copy(
        &mut self,
        id: FileId,
        old_end: u64,
        old_fp: &[u8],
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        let Some(t) = self.tailers.get(&id) else {
            return Flow::Go;
        };
        let (source, label, path, own) =
            (t.source, t.label.clone(), t.path.clone(), (t.dev, t.ino));
        if old_fp.is_empty() {
            return Flow::Go;
        }
        let Some(dir) = path.parent() else {
            return Flow::Go;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Flow::Go;
        };
        for e in entries.flatten() {
            let p = e.path();
            if is_compressed(&p) {
                continue;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() && m.len() > old_end && (m.dev(), m.ino()) != own => {}
                _ => continue,
            }
            let Ok((file, meta)) = tail::open_regular(&p) else {
                continue;
            };
            if tail::first_bytes(&file, old_fp.len()).ok().as_deref() != Some(old_fp) {
                continue;
            }
            let Ok(mut copy) =
                Tailer::new(id, source, p.clone(), label.clone(), file, &meta, old_end)
            else {
                continue;
            };
            let mut lines = Vec::new();
            loop {
                match copy.read(&mut self.buf, &mut lines, 1 << 20) {
                    Ok(r) if r.more && !r.restarted => continue,
                    _ => break,
                }
            }
            lines.extend(copy.take_partial());
            log::info!(
                "recovered {} lines written to {} just before it was truncated, from its copy {}",
                lines.len(),
                path.display(),
                p.display()
            );
            let mut start = old_end;
            for part in lines.chunks(4096) {
                let chunk = self.chunk(id, source, label.clone(), start, part.to_vec());
                start = part.last().map_or(start, |l| l.end);
                if self.send(chunk, control, out) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            break;
        }
        Flow::Go
    }

    /// Wraps lines of a file into a chunk, classifying each.
    fn chunk(
        &self,
        file: FileId,
        source: usize,
        label: Option<Arc<str>>,
        start: u64,
        lines: Vec<Line>,
    ) -> Chunk {
        let src = &self.cfg.sources[source];
        let shown = lines
            .iter()
            .map(|l| format::classify_line(&self.cfg.rules, &src.filter, src.events, &l.text))
            .collect();
        Chunk {
            file,
            source,
            route: src.route,
            label,
            start,
            lines,
            shown,
        }
    }

    /// Sends a chunk, blocking while the sender is behind, but still
    /// answering pings and stop requests.
    fn send(&self, chunk: Chunk, control: &Receiver<Control>, out: &[Sender<Chunk>]) -> Flow {
        // One channel per route (the sender keeps routes apart).
        let Some(out) = out.get(chunk.route).or(out.last()) else {
            return Flow::Stop;
        };
        let chunk = match out.try_send(chunk) {
            Ok(()) => return Flow::Go,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Flow::Stop,
            Err(crossbeam_channel::TrySendError::Full(c)) => c,
        };
        loop {
            let mut sel = Select::new();
            let s = sel.send(out);
            let c = sel.recv(control);
            let op = sel.select();
            if op.index() == s {
                return match op.send(out, chunk) {
                    Ok(()) => Flow::Go,
                    Err(_) => Flow::Stop,
                };
            }
            debug_assert_eq!(op.index(), c);
            match op.recv(control) {
                Ok(Control::Ping(n)) => self.pong(n),
                _ => return Flow::Stop,
            }
        }
    }

    fn drain_all(&mut self, control: &Receiver<Control>, out: &[Sender<Chunk>]) -> Flow {
        let ids: Vec<FileId> = self.tailers.keys().copied().collect();
        self.drain_then_release(ids, control, out)
    }

    /// Reads these files (oldest first), then lets go of retired files that
    /// were read to their end.
    fn drain_then_release(
        &mut self,
        mut ids: Vec<FileId>,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        ids.sort();
        for id in ids {
            if self.drain(id, control, out) == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.release_finished_retired();
        Flow::Go
    }

    fn source_of(&self, path: &Path) -> Option<usize> {
        self.cfg
            .sources
            .iter()
            .position(|s| path.starts_with(&s.root))
    }

    fn on_events(
        &mut self,
        events: Vec<notify::Result<notify::Event>>,
        inotify: &mut notify::RecommendedWatcher,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        let mut rescan = false;
        for ev in events {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    log::debug!("inotify error: {e}");
                    rescan = true;
                    continue;
                }
            };
            if ev.need_rescan() {
                rescan = true;
            }
            let created = matches!(ev.kind, EventKind::Create(_));
            if matches!(ev.kind, EventKind::Access(_)) {
                continue;
            }
            for p in ev.paths {
                match paths.iter_mut().find(|(q, _)| *q == p) {
                    Some(entry) => entry.1 |= created,
                    None => paths.push((p, created)),
                }
            }
        }
        // A missing root may have appeared (or a present one vanished).
        for i in 0..self.cfg.sources.len() {
            let was_present = self.sources[i].present;
            let present = self.cfg.sources[i].root.is_dir();
            if was_present && present {
                continue;
            }
            if was_present && self.root_vanished(i, control, out) == Flow::Stop {
                return Flow::Stop;
            }
            // Watches the root, or follows the creation of its parents.
            self.setup_source(i, inotify, true);
            if self.sources[i].present {
                let now = Instant::now();
                self.rechecks
                    .push(now + std::time::Duration::from_millis(100));
                self.rechecks
                    .push(now + std::time::Duration::from_millis(1000));
                self.publish_followed();
                if self.drain_all(control, out) == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
        if rescan {
            return self.rescan(inotify, control, out, true);
        }
        for (p, created) in paths {
            if self.on_path(&p, created, control, out) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// One path changed: read the file it names (if followed), follow it
    /// (if new and matching), and let go of files renamed away or deleted.
    fn on_path(
        &mut self,
        path: &Path,
        created: bool,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        let meta = std::fs::metadata(path).ok();
        // The common case, a followed file grew: no need to look through
        // every followed file for one that lost this name.
        let known = meta
            .as_ref()
            .and_then(|m| self.by_inode.get(&(m.dev(), m.ino())))
            .and_then(|id| self.tailers.get(id))
            .is_some_and(|t| t.path == path);
        // Files that were known under this path but no longer are it.
        let stale: Vec<FileId> = if known {
            Vec::new()
        } else {
            self.tailers
                .values()
                .filter(|t| {
                    t.path == path
                        && meta
                            .as_ref()
                            .is_none_or(|m| (m.dev(), m.ino()) != (t.dev, t.ino))
                })
                .map(|t| t.id)
                .collect()
        };
        for id in stale {
            if self.drain(id, control, out) == Flow::Stop {
                return Flow::Stop;
            }
            self.retire_or_release(id);
        }
        let Some(meta) = meta else {
            return Flow::Go;
        };
        if meta.is_dir() {
            // A new directory: files created in it before its watch was
            // added sent no event, so look now.
            if created {
                if let Some(i) = self.source_of(path) {
                    let now = Instant::now();
                    self.rechecks
                        .push(now + std::time::Duration::from_millis(100));
                    self.rechecks
                        .push(now + std::time::Duration::from_millis(1000));
                    return self.scan_source(i, true, control, out);
                }
            }
            return Flow::Go;
        }
        if let Some(&id) = self.by_inode.get(&(meta.dev(), meta.ino())) {
            if let Some(t) = self.tailers.get_mut(&id) {
                if t.path != path {
                    t.path = path.to_path_buf();
                    self.store.update(id, Some(path), None);
                }
            }
            return self.drain(id, control, out);
        }
        let Some(i) = self.source_of(path) else {
            return Flow::Go;
        };
        let src = &self.cfg.sources[i];
        let rel = path.strip_prefix(&src.root).unwrap_or(path).to_path_buf();
        if !src.matches(&rel) || !meta.is_file() {
            if src.matches(&rel) {
                self.warn_once(path, || {
                    format!(
                        "skipping {}: not a regular file (FIFO, socket or device)",
                        path.display()
                    )
                });
            }
            return Flow::Go;
        }
        match src.follow {
            Follow::All => {
                if let Some(id) = self.open_tailer(i, path, &rel, true) {
                    self.publish_followed();
                    return self.drain(id, control, out);
                }
            }
            Follow::Newest => {
                // A new file is a new Ekos session: switch to it. A write
                // to an older file (rare: Ekos writes only its current one)
                // is read without switching, so nothing is lost either way.
                if created || self.sources[i].current.is_none() {
                    return self.switch_to(i, path, &rel, control, out);
                }
                if let Some(id) = self.open_tailer(i, path, &rel, true) {
                    self.retired.entry(id).or_insert_with(Instant::now);
                    return self.drain(id, control, out);
                }
            }
        }
        Flow::Go
    }

    /// Newest mode: finish the current file, then follow `path`.
    fn switch_to(
        &mut self,
        i: usize,
        path: &Path,
        rel: &Path,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        if let Some(old) = self.sources[i].current.take() {
            if self.drain(old, control, out) == Flow::Stop {
                return Flow::Stop;
            }
            if let Some(t) = self.tailers.get(&old) {
                log::info!("a newer log file appeared; finished {}", t.path.display());
            }
            self.release(old);
        }
        if let Some(id) = self.open_tailer(i, path, rel, true) {
            self.sources[i].current = Some(id);
            self.publish_followed();
            return self.drain(id, control, out);
        }
        Flow::Go
    }

    /// A file no longer has its name: deleted files are let go at once
    /// (we read them to their end already); renamed ones are kept a little
    /// for writers that have not reopened yet.
    fn retire_or_release(&mut self, id: FileId) {
        let id = self.resolve(id);
        let deleted = self
            .tailers
            .get(&id)
            .is_none_or(|t| t.links().unwrap_or(0) == 0);
        for st in self.sources.iter_mut() {
            if st.current == Some(id) {
                st.current = None;
            }
        }
        if deleted {
            self.release(id);
        } else {
            self.retired.entry(id).or_insert_with(Instant::now);
        }
        self.publish_followed();
    }

    fn root_vanished(
        &mut self,
        i: usize,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        log::warn!(
            "logs directory {} disappeared; waiting for it to come back",
            self.cfg.sources[i].root.display()
        );
        self.sources[i].present = false;
        self.sources[i].warned_missing = true;
        self.sources[i].current = None;
        let ids: Vec<FileId> = self
            .tailers
            .values()
            .filter(|t| t.source == i)
            .map(|t| t.id)
            .collect();
        for id in ids {
            if self.drain(id, control, out) == Flow::Stop {
                return Flow::Stop;
            }
            self.release(id);
        }
        Flow::Go
    }

    /// Looks for files events did not announce (new directories, missed
    /// events, files that became readable) in one source.
    fn scan_source(
        &mut self,
        i: usize,
        running: bool,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
    ) -> Flow {
        let src = self.cfg.sources[i].clone();
        let known: HashSet<PathBuf> = self
            .tailers
            .values()
            .filter(|t| t.source == i)
            .map(|t| t.path.clone())
            .collect();
        let scan = match src.follow {
            Follow::All => discover::scan(&src, |p| known.contains(p)),
            Follow::Newest => discover::scan(&src, |_| false),
        };
        let scan = match scan {
            Ok(s) => s,
            Err(_) => return Flow::Go,
        };
        self.report_problems(&scan.problems);
        match src.follow {
            Follow::All => {
                for f in &scan.files {
                    if let Some(id) = self.follow(i, &f.path, &f.rel, running) {
                        if self.drain(id, control, out) == Flow::Stop {
                            return Flow::Stop;
                        }
                    }
                }
                self.publish_followed();
            }
            Follow::Newest => {
                if let Some(n) = discover::newest(&scan.files) {
                    let is_current = self.sources[i]
                        .current
                        .and_then(|id| self.tailers.get(&id))
                        .is_some_and(|t| t.path == n.path);
                    if !is_current {
                        let (p, r) = (n.path.clone(), n.rel.clone());
                        return self.switch_to(i, &p, &r, control, out);
                    }
                }
            }
        }
        Flow::Go
    }

    /// The periodic check: roots, new files, and every followed file read
    /// in case an event was missed.
    ///
    /// With `full` false (the periodic rescan), files and renames in
    /// sources that inotify watches are left to events; inotify's queue
    /// overflow asks for a full rescan.
    fn rescan(
        &mut self,
        inotify: &mut notify::RecommendedWatcher,
        control: &Receiver<Control>,
        out: &[Sender<Chunk>],
        full: bool,
    ) -> Flow {
        for i in 0..self.cfg.sources.len() {
            let present = self.cfg.sources[i].root.is_dir();
            if !self.sources[i].present {
                if present {
                    self.setup_source(i, inotify, true);
                }
                continue;
            }
            if !present {
                if self.root_vanished(i, control, out) == Flow::Stop {
                    return Flow::Stop;
                }
                self.setup_source(i, inotify, true);
                continue;
            }
            // A tree under a working inotify watch announces new files
            // itself; walking thousands of files every minute would be most
            // of an idle daemon's work (and its own directory reads wake
            // inotify). It is still walked every tenth time, and at once
            // after an inotify queue overflow.
            let walk = full
                || !self.sources[i].watched
                || self.cfg.sources[i].follow == Follow::Newest
                || self.rescans % 10 == 0;
            if walk && self.scan_source(i, true, control, out) == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.rescans += 1;
        // Files whose name now belongs to another file or to none.
        let moved: Vec<FileId> = self
            .tailers
            .values()
            .filter(|t| full || !self.sources[t.source].watched)
            .filter(|t| match std::fs::metadata(&t.path) {
                Ok(m) => (m.dev(), m.ino()) != (t.dev, t.ino),
                Err(_) => true,
            })
            .map(|t| t.id)
            .collect();
        for id in moved {
            if self.drain(id, control, out) == Flow::Stop {
                return Flow::Stop;
            }
            self.retire_or_release(id);
        }
        // Files under a working inotify watch are left to events, so an
        // idle daemon following thousands of files stays idle; the others,
        // and all of them after an inotify queue overflow, are read now.
        let r = if full {
            self.drain_all(control, out)
        } else {
            self.drain_unwatched(control, out)
        };
        self.publish_followed();
        r
    }

    /// Reads the files of sources without an inotify watch, and retired
    /// files (renamed away), then lets go of the retired ones read to
    /// their end.
    fn drain_unwatched(&mut self, control: &Receiver<Control>, out: &[Sender<Chunk>]) -> Flow {
        let ids: Vec<FileId> = self
            .tailers
            .values()
            .filter(|t| !self.sources[t.source].watched || self.retired.contains_key(&t.id))
            .map(|t| t.id)
            .collect();
        self.drain_then_release(ids, control, out)
    }

    /// A retired file (renamed away, or an older file finished) is let go
    /// once read to its end and either deleted or left alone for a while:
    /// a writer that keeps its descriptor after a rotation (until its next
    /// reopen) still writes to it.
    fn release_finished_retired(&mut self) {
        let grace = (self.cfg.file_check_interval * 2).max(std::time::Duration::from_secs(2));
        let retired: Vec<(FileId, Instant)> = self.retired.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, since) in retired {
            let done = self.tailers.get(&id).is_none_or(|t| {
                t.pending().unwrap_or(0) == 0
                    && (t.links().unwrap_or(0) == 0 || since.elapsed() >= grace)
            });
            if done {
                self.release(id);
            }
        }
    }
}
