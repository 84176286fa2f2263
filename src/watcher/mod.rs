//! The watcher thread: decides which files to follow, reads them when
//! inotify says they changed or a rescan finds them changed, and sends
//! their new lines to the sender, one bounded channel per route (webhook).
//!
//! It owns every open file (the table in [`files`]). inotify events arrive
//! through the `notify` crate, whose callback only forwards them into a
//! bounded channel. Every `FILE_CHECK_INTERVAL` a rescan `stat`s each
//! followed file and reads those whose size or times differ from what was
//! read: writes inotify never reports (NFS or CIFS writers, a hard link
//! written through another directory, trees whose watch could not be added)
//! are read then. A tree whose inotify watch fails (the
//! `fs.inotify.max_user_watches` limit) is walked at every rescan instead.
//! A file is never let go before it was read to its end through the
//! descriptor already open, which is what makes rotation (rename, then a
//! new file) and the Ekos switch to a newer session file lose nothing.
//!
//! Sending never blocks: when a route's channel is full the chunk waits as
//! that route's one pending chunk and the route's files are not read until
//! it went, while the other routes go on and control messages are answered.
//! Long set-ups (thousands of files, a restart with a large checkpoint) look
//! at the control channel between files, so a stop is honoured at once and
//! the watchdog is fed. Where to start a file is decided by the pure
//! function in [`start`]; copytruncate recovery streams, see [`recover`].

mod dirs;
mod files;
mod recover;
pub mod start;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError, bounded, never};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::checkpoint::{self, FileId, FileRecord, Store};
use crate::config::{Config, Follow};
use crate::discover;
use crate::format::{self, EventPart};
use crate::service::{Control, Stats};
use crate::tail::{self, Line, TailError, Tailer};

use dirs::Listings;
use files::{Files, Key};

/// Lines of one file, in order, as read in one go.
#[derive(Debug)]
pub struct Chunk {
    pub file: FileId,
    /// Index of the source in the configuration (for its filter and rules).
    pub source: usize,
    /// Index of the destination webhook (and of the channel it came by).
    pub route: usize,
    pub label: Option<Arc<str>>,
    /// Offset in the file where the first line begins (0 after a rewrite),
    /// so the sender knows what a commit of the first line covers.
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
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Flow {
    Go,
    Stop,
}

#[derive(Debug, Default)]
struct SourceState {
    present: bool,
    /// In `newest` mode, the file being followed.
    current: Option<Key>,
    /// Warned that the root is missing (warn once per disappearance).
    warned_missing: bool,
    /// The ancestor watched while the root does not exist.
    parent_watch: Option<PathBuf>,
    /// inotify does not cover the whole tree: walk it at every rescan.
    polled: bool,
}

pub struct Watcher {
    cfg: Arc<Config>,
    store: Arc<Store>,
    stats: Arc<Stats>,
    sources: Vec<SourceState>,
    files: Files,
    /// Paths already warned about, so a problem is logged once.
    warned: HashSet<PathBuf>,
    /// The process ran out of file descriptors and said so: once, not once
    /// per file that could not be opened.
    fd_limit_warned: bool,
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
    control: Receiver<Control>,
    out: Vec<Sender<Chunk>>,
    /// Per route: the chunk its channel had no room for.
    pending: Vec<Option<Chunk>>,
    /// Per route: a file was left unread because of `pending`.
    stalled: Vec<bool>,
    /// Told (once) that inotify watches could not be added.
    told_watch_limit: bool,
    /// A stop was asked for; every loop ends.
    stopping: bool,
    /// The night watch's copy of the lines.
    tap: Option<crate::nightwatch::Tap>,
}

/// Whether a file's content appeared after `t` (birth time when the file
/// system reports it, else modification time).
fn newer_than(meta: &std::fs::Metadata, t: SystemTime) -> bool {
    // File systems stamp times from a coarse clock (one timer tick, up to
    // 10 ms behind), so a file created just after `t` can look older; a
    // margin errs on the side of reading a file whole rather than losing
    // its first lines.
    let t = t - Duration::from_secs(2);
    let born = meta.created().or_else(|_| meta.modified());
    born.map(|b| b >= t).unwrap_or(false)
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The file's content was replaced (truncated or rewritten): the new
/// content is a new file for the checkpoint, starting at 0, so that an
/// offset of the old content (its lines may still be in flight) is never
/// taken for a position in the new one; the unread end of the old content
/// is recovered from a copy if there is one (`copytruncate`).
fn renew(
    store: &Store,
    source_name: &str,
    e: &mut files::Entry,
    previous: Option<(crate::checkpoint::Mark, Vec<u8>)>,
) {
    let t = &mut e.tailer;
    log::info!(
        file = t.path.display().to_string().as_str();
        "{} was truncated or rewritten; reading it again from the start",
        t.path.display()
    );
    let found = previous.and_then(|(mark, fp)| {
        recover::find(
            &t.path,
            (t.dev, t.ino),
            &mark,
            &fp,
            t.id,
            t.source,
            t.label.clone(),
        )
    });
    new_identity(store, source_name, e, found);
}

/// The file's tailer starts a new checkpoint record from 0 for its new
/// content; the old content's record follows it to `copy` (logrotate's
/// copy, read from where the old content was read) or, without a copy,
/// is let go.
fn new_identity(
    store: &Store,
    source_name: &str,
    e: &mut files::Entry,
    copy: Option<recover::Recovery>,
) {
    let t = &mut e.tailer;
    let old = t.id;
    let (fp_len, fp_hash) = t.fingerprint();
    t.id = store.track(FileRecord {
        source: source_name.to_string(),
        path: t.path.clone(),
        dev: t.dev,
        ino: t.ino,
        fp_len,
        fp_hash,
        offset: 0,
        seen: now_secs(),
    });
    match copy {
        Some(r) => {
            let (dev, ino) = r.file();
            store.moved(old, r.path(), dev, ino);
            e.recovery = Some(Box::new(r));
        }
        None => store.release(old),
    }
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
            files: Files::default(),
            warned: HashSet::new(),
            fd_limit_warned: false,
            buf: Vec::new(),
            started: SystemTime::now(),
            ready: Some(ready),
            rechecks: Vec::new(),
            published: None,
            rescans: 1,
            control: never(),
            out: Vec::new(),
            pending: Vec::new(),
            stalled: Vec::new(),
            told_watch_limit: false,
            stopping: false,
            tap: None,
        }
    }

    /// The actor loop: set up, report ready, read the backlog, then react
    /// to inotify events, rescans, routes that have room again and control
    /// messages until told to stop. `out[r]` carries the chunks of route `r`.
    pub fn run(
        mut self,
        control: Receiver<Control>,
        out: Vec<Sender<Chunk>>,
    ) -> Result<(), WatchError> {
        self.attach(&control, &out);
        let (ev_tx, ev_rx) = bounded::<notify::Result<notify::Event>>(4096);
        // Set when an event had to be dropped because the queue was full.
        let overflowed = Arc::new(AtomicBool::new(false));
        let overflow_flag = overflowed.clone();
        let mut inotify = notify::recommended_watcher(move |res| {
            // Only forward: all work happens on the watcher thread. Never
            // block here: notify's thread also carries out our `watch`
            // calls, so waiting for room while this thread is inside
            // `watch` (setting up a second source after reading 4,096
            // files of the first, whose opens inotify reports) deadlocks
            // before READY (issue 9 bug 6 probe). A full queue is what the
            // kernel's IN_Q_OVERFLOW is: drop the event and rescan.
            if let Err(TrySendError::Full(_)) = ev_tx.try_send(res) {
                overflow_flag.store(true, Ordering::Relaxed);
            }
        })?;

        for i in 0..self.cfg.sources.len() {
            if self.setup_source(i, &mut inotify, false) == Flow::Stop {
                return Ok(());
            }
        }
        self.publish_followed();
        if let Some(r) = self.ready.take() {
            let _ = r.send(());
        }
        if self.drain_all() == Flow::Stop {
            return Ok(());
        }

        let interval = self.cfg.file_check_interval;
        let mut next_scan = Instant::now() + interval;
        loop {
            let wake = self.rechecks.iter().copied().fold(next_scan, Instant::min);
            let timeout = wake.saturating_duration_since(Instant::now());
            let mut sel = Select::new();
            let ev_i = sel.recv(&ev_rx);
            let ctl_i = sel.recv(&control);
            // Routes with a pending chunk: wake when their channel has room.
            let waiting: Vec<(usize, usize)> = (0..out.len())
                .filter(|r| self.pending[*r].is_some())
                .map(|r| (sel.send(&out[r]), r))
                .collect();
            let flow = match sel.select_timeout(timeout) {
                Err(_) => {
                    drop(sel);
                    let now = Instant::now();
                    if now >= next_scan {
                        let f = self.rescan(&mut inotify, false);
                        next_scan = Instant::now() + interval;
                        f
                    } else {
                        self.rechecks.retain(|t| *t > now);
                        self.recheck_sources()
                    }
                }
                Ok(op) if op.index() == ev_i => match op.recv(&ev_rx) {
                    Ok(first) => {
                        // Take everything queued and handle each path once.
                        let mut events = vec![first];
                        while let Ok(e) = ev_rx.try_recv() {
                            events.push(e);
                            if events.len() >= 4096 {
                                break;
                            }
                        }
                        let flow = self.on_events(events, &mut inotify);
                        // The queue was full (it is not any more: it was
                        // just drained), so some events were lost.
                        if flow == Flow::Go && overflowed.swap(false, Ordering::Relaxed) {
                            log::debug!("inotify events were dropped: rescanning");
                            self.rescan(&mut inotify, true)
                        } else {
                            flow
                        }
                    }
                    Err(_) => Flow::Stop,
                },
                Ok(op) if op.index() == ctl_i => match op.recv(&control) {
                    Ok(Control::Ping(n)) => {
                        self.pong(n);
                        Flow::Go
                    }
                    _ => Flow::Stop,
                },
                Ok(op) => {
                    let i = op.index();
                    let r = waiting
                        .iter()
                        .find(|(s, _)| *s == i)
                        .map(|(_, r)| *r)
                        .expect("a selected route");
                    let chunk = self.pending[r].take().expect("a pending chunk");
                    match op.send(&out[r], chunk) {
                        Ok(()) => self.resume_route(r),
                        Err(_) => Flow::Stop,
                    }
                }
            };
            if flow == Flow::Stop || self.stopping {
                break;
            }
        }
        Ok(())
    }

    /// Takes the channels `run` works with.
    fn attach(&mut self, control: &Receiver<Control>, out: &[Sender<Chunk>]) {
        self.pending = out.iter().map(|_| None).collect();
        self.stalled = vec![false; out.len()];
        self.control = control.clone();
        self.out = out.to_vec();
    }

    fn pong(&self, n: u64) {
        self.stats
            .watcher_pong
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers pings and notices a stop between two pieces of a long job.
    fn poll_control(&mut self) -> Flow {
        if self.stopping {
            return Flow::Stop;
        }
        loop {
            match self.control.try_recv() {
                Ok(Control::Ping(n)) => self.pong(n),
                Err(TryRecvError::Empty) => return Flow::Go,
                Ok(Control::Shutdown) | Ok(Control::Abort) | Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return Flow::Stop;
                }
            }
        }
    }

    fn warn_once(&mut self, path: &Path, msg: impl FnOnce() -> String) {
        if self.warned.insert(path.to_path_buf()) {
            let m = msg();
            log::warn!(file = path.display().to_string().as_str(); "{m}");
            self.stats.record_error(Some(m));
        }
    }

    /// inotify does not cover source `i`'s tree (entirely): poll it.
    fn poll_tree(&mut self, i: usize, why: &str) {
        if self.sources[i].polled {
            return;
        }
        self.sources[i].polled = true;
        let root = self.cfg.sources[i].root.display().to_string();
        let secs = self.cfg.file_check_interval.as_secs_f64();
        if self.told_watch_limit {
            log::info!("cannot watch {root} with inotify ({why}); polling it every {secs} s");
        } else {
            self.told_watch_limit = true;
            let m = format!(
                "cannot watch {root} with inotify ({why}); its files are polled every {secs} s instead; if the inotify watch limit was reached, raise it with `sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it)"
            );
            log::warn!("{m}");
            self.stats.record_error(Some(m));
        }
    }

    fn publish_followed(&mut self) {
        // Cheap when nothing changed: thousands of followed files make the
        // list itself costly to build at every rescan.
        let retired = self
            .files
            .iter()
            .filter(|(_, e)| e.retired.is_some())
            .count();
        let key = (self.files.len(), retired, self.files.newest_key());
        if self.published == Some(key) {
            return;
        }
        self.published = Some(key);
        let mut v: Vec<String> = self
            .files
            .iter()
            .filter(|(_, e)| e.retired.is_none())
            .map(|(_, e)| e.tailer.path.display().to_string())
            .collect();
        v.sort();
        self.stats.set_followed(v);
    }

    /// Watches a source's root (or, while it is missing, its nearest
    /// existing ancestor) and opens its files.
    fn setup_source(
        &mut self,
        i: usize,
        inotify: &mut notify::RecommendedWatcher,
        running: bool,
    ) -> Flow {
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
                return Flow::Go;
            }
        }
        if let Err(e) = inotify.watch(&src.root, RecursiveMode::Recursive) {
            // Typically the inotify watch limit: polling by rescans still works.
            self.poll_tree(i, &e.to_string());
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
                return Flow::Go;
            }
        };
        self.report_problems(&scan.problems);
        // Each directory is listed once for the whole set-up.
        let mut listings = Listings::default();
        // Files we were following when the daemon last stopped, maybe
        // rotated to another name since: finish them first.
        if self.resume_dormant(i, &mut listings) == Flow::Stop {
            return Flow::Stop;
        }
        let mut files = scan.files;
        files.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
        let newest = discover::newest(&files).map(|f| f.path.clone());
        // Rotated copies written while we were stopped (rotated once more
        // before we came back): read them, oldest first, before the file.
        if let Some(seen) = last_seen {
            for f in &files {
                if self.poll_control() == Flow::Stop {
                    return Flow::Stop;
                }
                if src.follow == Follow::Newest && Some(&f.path) != newest.as_ref() {
                    continue;
                }
                let (Some(dir), Some(name)) = (f.path.parent(), f.path.file_name()) else {
                    continue;
                };
                for p in listings.of(dir).rotated_siblings(name) {
                    let changed = std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m > seen);
                    if changed {
                        let rel = p.strip_prefix(&src.root).unwrap_or(&p).to_path_buf();
                        self.adopt_copy(&src.name, &f.path, &p);
                        if let Some(k) = self.follow(i, &p, &rel, false) {
                            self.retire(k);
                        }
                    }
                }
            }
        }
        drop(listings);
        for f in &files {
            if self.poll_control() == Flow::Stop {
                return Flow::Stop;
            }
            let is_newest = Some(&f.path) == newest.as_ref();
            let changed_while_down = last_seen.is_some_and(|t| f.mtime > t);
            if let Some(k) = self.files.by_inode(f.dev, f.ino) {
                // Opened by `resume_dormant` already (which retired it in
                // newest mode: it is the current file after all).
                if src.follow == Follow::Newest && is_newest {
                    self.make_current(i, k);
                }
                continue;
            }
            match src.follow {
                Follow::All => {
                    self.follow(i, &f.path, &f.rel, running);
                }
                Follow::Newest if is_newest => {
                    if let Some(k) = self.follow(i, &f.path, &f.rel, running) {
                        self.make_current(i, k);
                    }
                }
                Follow::Newest => {
                    // An older file: only finish it if it holds lines we
                    // have not delivered (known with a lower offset, or
                    // written while we were not running).
                    if changed_while_down || running {
                        if let Some(k) = self.follow(i, &f.path, &f.rel, running) {
                            self.retire(k);
                        }
                    }
                }
            }
        }
        if let Err(e) = self.store.touch_source(&src.name) {
            log::error!("{e}");
        }
        Flow::Go
    }

    fn report_problems(&mut self, problems: &[(PathBuf, String)]) {
        for (p, why) in problems {
            self.warn_once(p, || format!("skipping {}: {why}", p.display()));
        }
    }

    /// Finds files from the checkpoint that are not followed (typically
    /// renamed by logrotate while the daemon was stopped) by device, inode
    /// and fingerprint in their directory, and reads them to their end.
    /// Each directory is listed once, whatever the number of records.
    fn resume_dormant(&mut self, i: usize, listings: &mut Listings) -> Flow {
        let src = self.cfg.sources[i].clone();
        let mut found = Vec::new();
        for (n, rec) in self.store.dormant(&src.name).into_iter().enumerate() {
            if n % 256 == 0 && self.poll_control() == Flow::Stop {
                return Flow::Stop;
            }
            if self.files.by_inode(rec.dev, rec.ino).is_some() {
                continue;
            }
            let Some(dir) = rec.path.parent() else {
                continue;
            };
            let Some(p) = listings.of(dir).find_inode(rec.dev, rec.ino) else {
                continue;
            };
            let mtime = std::fs::symlink_metadata(&p).and_then(|m| m.modified());
            found.push((mtime.ok(), p));
        }
        // Files are read in the order they are opened (their keys). The
        // store gives its records in no particular order, so a log and its
        // rotated copy (both with lines not delivered at a kill) could come
        // in either order and the new file's lines be posted before the
        // old one's: open them oldest first.
        found.sort_by(|a, b| dirs::oldest_first((a.0, &a.1), (b.0, &b.1)));
        for (n, (_, p)) in found.into_iter().enumerate() {
            if n % 256 == 0 && self.poll_control() == Flow::Stop {
                return Flow::Stop;
            }
            let rel = p.strip_prefix(&src.root).unwrap_or(&p).to_path_buf();
            if let Some(k) = self.open_tailer(i, &p, &rel, false) {
                // A rotated name, or an older Ekos file: read to the end,
                // then let go.
                if !src.matches(&rel) || src.follow == Follow::Newest {
                    self.retire(k);
                }
            }
        }
        Flow::Go
    }

    /// A rotated sibling `copy` of `path` that appeared while the daemon
    /// was stopped may be logrotate's copytruncate copy of the content we
    /// were reading: a new inode that no record claims, whose first bytes
    /// and bytes at the read mark are those of a dormant record of `path`.
    /// Then that record moves to the copy, so the copy is read from where
    /// Discord's delivery stopped rather than from its first line (issue 9
    /// probe: stop, copytruncate, start re-posted the whole copy). While
    /// running, `recover::find` does the same.
    fn adopt_copy(&self, source: &str, path: &Path, copy: &Path) {
        let Ok((file, meta)) = tail::open_regular(copy) else {
            return;
        };
        if self.files.by_inode(meta.dev(), meta.ino()).is_some() {
            return;
        }
        for (id, rec, mark) in self.store.dormant_at(source, path) {
            if (rec.dev, rec.ino) == (meta.dev(), meta.ino()) {
                return;
            }
            let Some(mark) = mark else { continue };
            let first = tail::first_bytes(&file, rec.fp_len as usize).ok();
            let same_start = first.is_some_and(|b| {
                b.len() == rec.fp_len as usize && checkpoint::fingerprint(&b) == rec.fp_hash
            });
            let at_mark = tail::read_mark(&file, &mark).ok();
            if same_start
                && rec.offset <= meta.len()
                && start::mark_holds(&mark, meta.len(), at_mark.as_deref())
            {
                log::info!(
                    "{} is a copy of {} as it was read: it takes over its checkpoint",
                    copy.display(),
                    path.display()
                );
                self.store.moved(id, copy, meta.dev(), meta.ino());
                return;
            }
        }
    }

    /// Opens a file for following unless it is followed already.
    fn follow(&mut self, i: usize, path: &Path, rel: &Path, running: bool) -> Option<Key> {
        if let Ok(m) = std::fs::metadata(path) {
            if let Some(k) = self.files.by_inode(m.dev(), m.ino()) {
                return Some(k);
            }
        }
        self.open_tailer(i, path, rel, running)
    }

    /// Opens `path` and starts following it where [`start::decide`] says.
    fn open_tailer(&mut self, i: usize, path: &Path, rel: &Path, running: bool) -> Option<Key> {
        let src = &self.cfg.sources[i];
        // Followed files may not take the descriptors the rest of the
        // daemon needs: the POST's socket, the checkpoint, the night
        // watch's state. Same warning as a real EMFILE.
        let opened = if over_fd_budget(self.files.len(), nofile_limit()) {
            Err(TailError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            })
        } else {
            tail::open_regular(path)
        };
        let (file, meta) = match opened {
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
            Err(TailError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                // Thousands of files would each say the same: say it once.
                // The files are tried again at each rescan.
                if !self.fd_limit_warned {
                    self.fd_limit_warned = true;
                    let m = format!(
                        "too many open files ({source}): {} and further files of source {} are not followed until descriptors are free; raise LimitNOFILE= in a drop-in for ekos-log-monitor.service, or narrow the source's include globs",
                        path.display(),
                        src.name
                    );
                    log::warn!("{m}");
                    self.stats.record_error(Some(m));
                }
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
        if let Some(k) = self.files.by_inode(meta.dev(), meta.ino()) {
            return Some(k);
        }
        let claimed = self.store.claim(&src.name, meta.dev(), meta.ino(), |n| {
            tail::first_bytes(&file, n).ok()
        });
        let at_mark = claimed
            .and_then(|c| c.mark)
            .and_then(|m| tail::read_mark(&file, &m).ok());
        let last_seen = self.store.source_last_seen(&src.name);
        let facts = start::Facts {
            known: claimed.map(|c| start::Known {
                delivered: c.offset,
                mark: c.mark,
                at_mark: at_mark.as_deref(),
                read_upto: self.files.read_upto(c.id),
            }),
            size: meta.len(),
            start_at: src.start_at,
            new_while_running: running && newer_than(&meta, self.started),
            changed_while_stopped: last_seen.is_some_and(|t| meta.modified().is_ok_and(|m| m > t)),
        };
        let d = start::decide(&facts);
        let start = match d.at {
            start::Position::At(o) => o,
            start::Position::LastLineEnd => last_line_end(&file, meta.len()),
        };
        let label: Option<Arc<str>> = match src.follow {
            Follow::All => Some(Arc::from(rel.to_string_lossy().as_ref())),
            Follow::Newest => None,
        };
        let id = match claimed {
            Some(c) if d.keep_id => c.id,
            other => {
                if let Some(c) = other {
                    // The old content's record stays for commits of its
                    // lines; this content is a new file.
                    self.store.release(c.id);
                }
                self.store.track(FileRecord {
                    source: src.name.clone(),
                    path: path.to_path_buf(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                    fp_len: 0,
                    fp_hash: 0,
                    offset: start,
                    seen: now_secs(),
                })
            }
        };
        let t = match Tailer::new(id, i, path.to_path_buf(), label, file, &meta, start) {
            Ok(t) => t,
            Err(e) => {
                self.warn_once(path, || format!("cannot read {}: {e}", path.display()));
                self.store.release(id);
                return None;
            }
        };
        self.store.update(id, Some(path), Some(t.fingerprint()));
        self.store.note_read(id, t.mark());
        let key = self.files.insert(t);
        if let Some(e) = self.files.get_mut(key) {
            // What is there already is not the file growing.
            e.unread_known = meta.len().saturating_sub(start);
        }
        log::info!(
            file = path.display().to_string().as_str();
            "following {} from offset {start} ({})",
            path.display(),
            d.why
        );
        Some(key)
    }

    /// Lets go of a file now.
    fn release(&mut self, key: Key) {
        let Some(e) = self.files.remove(key) else {
            return;
        };
        if let Some(r) = e.recovery {
            self.store.release(r.id());
        }
        self.store.release(e.tailer.id);
        for st in self.sources.iter_mut() {
            if st.current == Some(key) {
                st.current = None;
            }
        }
        log::debug!("released {}", e.tailer.path.display());
    }

    /// From now on the file is only read to its end, then let go.
    fn retire(&mut self, key: Key) {
        if let Some(e) = self.files.get_mut(key) {
            e.retired.get_or_insert_with(Instant::now);
        }
    }

    /// Newest mode: `key` is the file being followed.
    fn make_current(&mut self, i: usize, key: Key) {
        if let Some(e) = self.files.get_mut(key) {
            e.retired = None;
        }
        self.sources[i].current = Some(key);
    }

    /// Read to its end (as far as its size tells), the copy of its old
    /// content included.
    fn finished(&self, key: Key) -> bool {
        self.files
            .get(key)
            .is_none_or(|e| e.recovery.is_none() && e.tailer.pending().unwrap_or(0) == 0)
    }

    /// Releases a file that was read to its end; retires one that was not
    /// (its route is held up), so it is finished later.
    fn release_or_retire(&mut self, key: Key) {
        if self.finished(key) {
            self.release(key);
        } else {
            self.retire(key);
        }
    }

    /// Reads one file to its current end (or until its route is full),
    /// sending its lines.
    fn drain(&mut self, key: Key) -> Flow {
        loop {
            if self.poll_control() == Flow::Stop {
                return Flow::Stop;
            }
            let Some(e) = self.files.get_mut(key) else {
                return Flow::Go;
            };
            let source = e.tailer.source;
            let route = self.cfg.sources[source].route;
            if self.pending.get(route).is_some_and(Option::is_some) {
                self.stalled[route] = true;
                // Its lines wait, but a truncation is noticed now, while
                // the copy logrotate made is surely still there: the
                // recovery holds it open even if it is compressed and
                // deleted before the route has room again.
                if e.recovery.is_none() {
                    if let Ok(report) = e.tailer.check() {
                        if report.restarted {
                            let name = &self.cfg.sources[source].name;
                            renew(&self.store, name, e, report.previous);
                            // Read from 0 again: the new content was
                            // written since the last look.
                            e.unread_known = 0;
                        }
                    }
                }
                // The night watch measures silence by lines read; these
                // are not read, but the Ekos log writing them is not
                // silent. One fstat: the read position does not move while
                // the route is held up, so more unread bytes than at the
                // last look is the file growing. The same size (a
                // metadata change, a rescan) says nothing, so a log that
                // really stops during an outage still raises the alarm.
                if let Some(tap) = self.tap.as_ref().filter(|t| t.wants_growth(source)) {
                    if let Ok(unread) = e.tailer.pending() {
                        if unread > e.unread_known {
                            tap.grew(source);
                        }
                        e.unread_known = unread;
                    }
                }
                return Flow::Go;
            }
            // The end of the old content first, from its copy.
            if let Some(rec) = e.recovery.as_mut() {
                let step = rec.next(&mut self.buf);
                let (id, label) = (rec.id(), e.tailer.label.clone());
                let path = e.tailer.path.clone();
                if step.done {
                    let rec = e.recovery.take().expect("recovering");
                    log::info!(
                        "recovered {} lines written to {} just before it was truncated, from its copy {}",
                        rec.lines,
                        e.tailer.path.display(),
                        rec.path().display()
                    );
                    self.store.release(id);
                }
                if !step.lines.is_empty() {
                    // The followed file's time, not the copy's: lines of
                    // the old content end a silence only if the log was
                    // written (or truncated) since.
                    let modified = self.modified_for_tap(key);
                    let c = self.chunk(id, source, label, step.start, step.lines);
                    let c = self.offered(c, &path, modified);
                    if self.send(c) == Flow::Stop {
                        return Flow::Stop;
                    }
                    self.note_unread(key, route, true);
                }
                continue;
            }
            let t = &mut e.tailer;
            let start = t.line_end();
            let mut lines = Vec::new();
            let report = match t.read(&mut self.buf, &mut lines, tail::READ_CHUNK) {
                Ok(r) => r,
                Err(err) => {
                    let p = t.path.clone();
                    self.warn_once(&p, || format!("cannot read {}: {err}", p.display()));
                    return Flow::Go;
                }
            };
            if report.restarted {
                let name = &self.cfg.sources[source].name;
                renew(&self.store, name, e, report.previous);
                continue;
            }
            if let Some(since) = report.unread_since {
                // Nothing of this file was read and it was empty: lines
                // written and then `copytruncate`d before a look (the
                // route was held up, or inotify does not see the writer)
                // are only in the copy, and no size or mark shows it.
                let (path, label, old) = (t.path.clone(), t.label.clone(), t.id);
                let files = &self.files;
                let found = recover::find_unread(&path, since, old, source, label, |d, i| {
                    files.by_inode(d, i).is_some()
                });
                if let Some(r) = found {
                    log::info!(
                        file = path.display().to_string().as_str();
                        "{} was truncated before its lines were read; reading them from its copy {}",
                        path.display(),
                        r.path().display()
                    );
                    let Some(e) = self.files.get_mut(key) else {
                        return Flow::Go;
                    };
                    // As after a rewrite: the copy takes the old identity,
                    // the file's new content is a new record from 0.
                    new_identity(&self.store, &self.cfg.sources[source].name, e, Some(r));
                } else if let Some(e) = self.files.get(key).filter(|_| report.fingerprint_changed) {
                    self.store.update(old, None, Some(e.tailer.fingerprint()));
                }
                continue;
            }
            let id = t.id;
            if report.fingerprint_changed {
                self.store.update(id, None, Some(t.fingerprint()));
            }
            if !lines.is_empty() {
                self.store.note_read(id, t.mark());
                let (label, path) = (t.label.clone(), t.path.clone());
                let modified = self.modified_for_tap(key);
                let c = self.chunk(id, source, label, start, lines);
                let c = self.offered(c, &path, modified);
                if self.send(c) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            self.note_unread(key, route, report.more);
            if !report.more {
                return Flow::Go;
            }
        }
    }

    /// After a read of `key`: what is left unread is not growth. Read to
    /// its end (`more` false), nothing is; read in part and its route just
    /// filled up, the rest is (one fstat, once per hold-up).
    fn note_unread(&mut self, key: Key, route: usize, more: bool) {
        let held = self.pending.get(route).is_some_and(Option::is_some);
        if more && !held {
            // Read on at once.
            return;
        }
        if let Some(e) = self.files.get_mut(key) {
            e.unread_known = if more {
                e.tailer.pending().unwrap_or(0)
            } else {
                0
            };
        }
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

    /// The night watch gets a copy of the chunk (never waited for).
    fn offered(&self, mut chunk: Chunk, path: &Path, modified: Option<SystemTime>) -> Chunk {
        if let Some(tap) = &self.tap {
            tap.offer(&mut chunk, path, modified);
        }
        chunk
    }

    /// The modification time of the file `key` after a read, if the night
    /// watch wants it (the Ekos log's: one `fstat`; see `Seen::modified_ms`).
    fn modified_for_tap(&self, key: Key) -> Option<SystemTime> {
        let e = self.files.get(key)?;
        let tap = self.tap.as_ref()?;
        if !tap.wants_growth(e.tailer.source) {
            return None;
        }
        e.tailer.modified().ok()
    }

    /// Copies every chunk read to the night watch.
    pub fn with_tap(mut self, tap: crate::nightwatch::Tap) -> Watcher {
        self.tap = Some(tap);
        self
    }

    /// Hands a chunk to its route without ever blocking: when the route's
    /// channel is full, the chunk waits as the route's pending chunk (the
    /// caller checked there was none) and the route's files are not read
    /// until it went.
    fn send(&mut self, chunk: Chunk) -> Flow {
        let r = chunk.route;
        let Some(tx) = self.out.get(r) else {
            // No channel for this route (cannot happen with a valid
            // configuration): nothing could ever take these lines.
            return Flow::Stop;
        };
        match tx.try_send(chunk) {
            Ok(()) => Flow::Go,
            Err(TrySendError::Full(c)) => {
                debug_assert!(self.pending[r].is_none());
                self.pending[r] = Some(c);
                Flow::Go
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stopping = true;
                Flow::Stop
            }
        }
    }

    /// Route `r` took its pending chunk: read the files left unread.
    fn resume_route(&mut self, r: usize) -> Flow {
        if !std::mem::take(&mut self.stalled[r]) {
            return Flow::Go;
        }
        let keys = self
            .files
            .keys_where(|e| self.cfg.sources[e.tailer.source].route == r);
        self.drain_then_release(keys)
    }

    fn drain_all(&mut self) -> Flow {
        let keys = self.files.keys_where(|_| true);
        self.drain_then_release(keys)
    }

    /// Reads these files (oldest first), then lets go of retired files that
    /// were read to their end.
    fn drain_then_release(&mut self, keys: Vec<Key>) -> Flow {
        for k in keys {
            if self.drain(k) == Flow::Stop {
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
    ) -> Flow {
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        let mut rescan = false;
        for ev in events {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    // A watch that could not be added for a new directory
                    // (the watch limit): that tree is polled from now on.
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        let why = e.to_string();
                        let hit: Vec<usize> = if e.paths.is_empty() {
                            (0..self.cfg.sources.len()).collect()
                        } else {
                            e.paths.iter().filter_map(|p| self.source_of(p)).collect()
                        };
                        for i in hit {
                            self.poll_tree(i, &why);
                        }
                    } else {
                        log::debug!("inotify error: {e}");
                    }
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
            if was_present && self.root_vanished(i) == Flow::Stop {
                return Flow::Stop;
            }
            // Watches the root, or follows the creation of its parents.
            if self.setup_source(i, inotify, true) == Flow::Stop {
                return Flow::Stop;
            }
            if self.sources[i].present {
                self.add_rechecks();
                self.publish_followed();
                if self.drain_all() == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
        if rescan {
            return self.rescan(inotify, true);
        }
        for (p, created) in paths {
            if self.on_path(&p, created) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    fn add_rechecks(&mut self) {
        let now = Instant::now();
        self.rechecks.push(now + Duration::from_millis(100));
        self.rechecks.push(now + Duration::from_millis(1000));
    }

    /// One path changed: read the file it names (if followed), follow it
    /// (if new and matching), and let go of files renamed away or deleted.
    fn on_path(&mut self, path: &Path, created: bool) -> Flow {
        let meta = std::fs::metadata(path).ok();
        // The common case, a followed file grew: no need to look through
        // every followed file for one that lost this name.
        let known = meta
            .as_ref()
            .and_then(|m| self.files.by_inode(m.dev(), m.ino()))
            .and_then(|k| self.files.get(k))
            .is_some_and(|e| e.tailer.path == path);
        // Files that were known under this path but no longer are it.
        let stale: Vec<Key> = if known {
            Vec::new()
        } else {
            self.files.keys_where(|e| {
                e.tailer.path == path
                    && meta
                        .as_ref()
                        .is_none_or(|m| (m.dev(), m.ino()) != (e.tailer.dev, e.tailer.ino))
            })
        };
        for k in stale {
            if self.drain(k) == Flow::Stop {
                return Flow::Stop;
            }
            self.lost_name(k);
        }
        let Some(meta) = meta else {
            return Flow::Go;
        };
        if meta.is_dir() {
            // A new directory: files created in it before its watch was
            // added sent no event, so look now.
            if created {
                if let Some(i) = self.source_of(path) {
                    self.add_rechecks();
                    return self.scan_source(i, true);
                }
            }
            return Flow::Go;
        }
        if let Some(k) = self.files.by_inode(meta.dev(), meta.ino()) {
            if let Some(e) = self.files.get_mut(k) {
                if e.tailer.path != path {
                    e.tailer.path = path.to_path_buf();
                    self.store.update(e.tailer.id, Some(path), None);
                }
            }
            return self.drain(k);
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
                if let Some(k) = self.open_tailer(i, path, &rel, true) {
                    self.publish_followed();
                    return self.drain(k);
                }
            }
            Follow::Newest => {
                // A new file is a new Ekos session: switch to it. A write
                // to an older file (rare: Ekos writes only its current one)
                // is read without switching, so nothing is lost either way.
                if created || self.sources[i].current.is_none() {
                    return self.switch_to(i, path, &rel);
                }
                if let Some(k) = self.open_tailer(i, path, &rel, true) {
                    self.retire(k);
                    return self.drain(k);
                }
            }
        }
        Flow::Go
    }

    /// Newest mode: finish the current file, then follow `path`.
    fn switch_to(&mut self, i: usize, path: &Path, rel: &Path) -> Flow {
        if let Some(old) = self.sources[i].current.take() {
            if self.drain(old) == Flow::Stop {
                return Flow::Stop;
            }
            if let Some(e) = self.files.get(old) {
                log::info!(
                    "a newer log file appeared; finished {}",
                    e.tailer.path.display()
                );
            }
            self.release_or_retire(old);
        }
        if let Some(k) = self.open_tailer(i, path, rel, true) {
            self.make_current(i, k);
            self.publish_followed();
            return self.drain(k);
        }
        Flow::Go
    }

    /// A file no longer has its name: deleted files are let go once read
    /// to their end; renamed ones are kept a little for writers that have
    /// not reopened yet.
    fn lost_name(&mut self, key: Key) {
        let deleted = self
            .files
            .get(key)
            .is_none_or(|e| e.tailer.links().unwrap_or(0) == 0);
        for st in self.sources.iter_mut() {
            if st.current == Some(key) {
                st.current = None;
            }
        }
        if deleted {
            self.release_or_retire(key);
        } else {
            self.retire(key);
        }
        self.publish_followed();
    }

    fn root_vanished(&mut self, i: usize) -> Flow {
        log::warn!(
            "logs directory {} disappeared; waiting for it to come back",
            self.cfg.sources[i].root.display()
        );
        self.sources[i].present = false;
        self.sources[i].warned_missing = true;
        self.sources[i].current = None;
        let keys = self.files.keys_where(|e| e.tailer.source == i);
        for k in keys {
            if self.drain(k) == Flow::Stop {
                return Flow::Stop;
            }
            self.release_or_retire(k);
        }
        Flow::Go
    }

    /// The short looks after a new directory: its files, then every file.
    fn recheck_sources(&mut self) -> Flow {
        for i in 0..self.cfg.sources.len() {
            if self.sources[i].present && self.scan_source(i, true) == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.drain_all()
    }

    /// Looks for files events did not announce (new directories, missed
    /// events, files that became readable) in one source.
    fn scan_source(&mut self, i: usize, running: bool) -> Flow {
        let src = self.cfg.sources[i].clone();
        let known: HashSet<PathBuf> = self
            .files
            .iter()
            .filter(|(_, e)| e.tailer.source == i)
            .map(|(_, e)| e.tailer.path.clone())
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
                    if let Some(k) = self.follow(i, &f.path, &f.rel, running) {
                        if self.drain(k) == Flow::Stop {
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
                        .and_then(|k| self.files.get(k))
                        .is_some_and(|e| e.tailer.path == n.path);
                    if !is_current {
                        let (p, r) = (n.path.clone(), n.rel.clone());
                        return self.switch_to(i, &p, &r);
                    }
                }
            }
        }
        Flow::Go
    }

    /// The periodic check: roots, new files, and every followed file whose
    /// size or times changed since it was read (inotify misses writes over
    /// NFS or CIFS, and through a hard link in another directory).
    ///
    /// Costs one `stat` per followed file when nothing changed. Trees under
    /// a working inotify watch are walked for new files every tenth time
    /// only (their directory reads would wake inotify, and walking
    /// thousands of files every minute would be most of an idle daemon's
    /// work), polled trees every time; with `full` (after an inotify queue
    /// overflow) everything is walked and read.
    fn rescan(&mut self, inotify: &mut notify::RecommendedWatcher, full: bool) -> Flow {
        for i in 0..self.cfg.sources.len() {
            if self.poll_control() == Flow::Stop {
                return Flow::Stop;
            }
            let present = self.cfg.sources[i].root.is_dir();
            if !self.sources[i].present {
                if present && self.setup_source(i, inotify, true) == Flow::Stop {
                    return Flow::Stop;
                }
                continue;
            }
            if !present {
                if self.root_vanished(i) == Flow::Stop {
                    return Flow::Stop;
                }
                if self.setup_source(i, inotify, true) == Flow::Stop {
                    return Flow::Stop;
                }
                continue;
            }
            let walk = full
                || self.sources[i].polled
                || self.cfg.sources[i].follow == Follow::Newest
                || self.rescans % 10 == 0;
            if walk && self.scan_source(i, true) == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.rescans += 1;
        // One stat per followed file. Through its descriptor (the cheapest)
        // where inotify reports renames; by its name in polled trees, where
        // the name may now belong to another file or to none.
        let mut moved = Vec::new();
        let mut changed = Vec::new();
        for (k, e) in self.files.iter() {
            if full || e.retired.is_some() || e.recovery.is_some() {
                changed.push(k);
                continue;
            }
            let t = &e.tailer;
            if !self.sources[t.source].polled {
                if t.stamp_now().is_ok_and(|m| t.stale(m)) {
                    changed.push(k);
                }
                continue;
            }
            match std::fs::metadata(&t.path) {
                Ok(m) if (m.dev(), m.ino()) == (t.dev, t.ino) => {
                    if t.stale(tail::Stamp::of(&m)) {
                        changed.push(k);
                    }
                }
                _ => moved.push(k),
            }
        }
        for k in moved {
            if self.drain(k) == Flow::Stop {
                return Flow::Stop;
            }
            self.lost_name(k);
        }
        changed.sort();
        let r = self.drain_then_release(changed);
        self.prune();
        self.publish_followed();
        r
    }

    /// Forgets what no longer matters, so that memory stays flat however
    /// many files come and go.
    fn prune(&mut self) {
        let store = self.store.clone();
        self.files.prune_read_upto(|id| store.offset(id));
        if self.rescans % 10 == 0 {
            self.warned.retain(|p| std::fs::symlink_metadata(p).is_ok());
        }
        self.rechecks.retain(|t| *t > Instant::now());
    }

    /// A retired file (renamed away, or an older file finished) is let go
    /// once read to its end and either deleted or left alone for a while:
    /// a writer that keeps its descriptor after a rotation (until its next
    /// reopen) still writes to it.
    fn release_finished_retired(&mut self) {
        let grace = (self.cfg.file_check_interval * 2).max(Duration::from_secs(2));
        let done: Vec<Key> = self
            .files
            .iter()
            .filter(|(_, e)| {
                e.retired.is_some_and(|since| {
                    e.recovery.is_none()
                        && e.tailer.pending().unwrap_or(0) == 0
                        && (e.tailer.links().unwrap_or(0) == 0 || since.elapsed() >= grace)
                })
            })
            .map(|(k, _)| k)
            .collect();
        for k in done {
            self.release(k);
        }
    }
}

/// The soft limit on open descriptors (`u64::MAX` if unknown).
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        // rlim_t is 32 bits on armhf.
        #[allow(clippy::unnecessary_cast)]
        let cur = r.rlim_cur as u64;
        cur
    } else {
        u64::MAX
    }
}

/// Whether following one more file would leave the daemon too few
/// descriptors of its own: a quarter of the limit, between 8 and 64, stays
/// free for sockets and state files.
fn over_fd_budget(followed: usize, limit: u64) -> bool {
    let reserve = (limit / 4).clamp(8, 64);
    followed as u64 + reserve >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followed_files_leave_descriptors_for_the_rest() {
        // 64 descriptors: 16 stay free, 48 files at most.
        assert!(!over_fd_budget(47, 64));
        assert!(over_fd_budget(48, 64));
        // Large limits keep 64; tiny ones 8.
        assert!(!over_fd_budget(65_000, 65_536));
        assert!(over_fd_budget(65_472, 65_536));
        assert!(over_fd_budget(12, 20));
        assert!(!over_fd_budget(0, u64::MAX));
    }
    use crate::config::Inputs;
    use std::io::Write;

    fn append(p: &Path, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    fn texts(chunks: &[Chunk]) -> Vec<String> {
        chunks
            .iter()
            .flat_map(|c| c.lines.iter().map(|l| l.text.clone()))
            .collect()
    }

    fn two_sources(d: &Path) -> (Arc<Config>, PathBuf, PathBuf) {
        let (ra, rb) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(&ra).unwrap();
        std::fs::create_dir_all(&rb).unwrap();
        let cfg_path = d.join("config.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "state_directory = \"{}\"\n[[source]]\nname = \"a\"\nroot = \"{}\"\ninclude = [\"**/*.log\"]\nfollow = \"all\"\ndiscord_webhook_url = \"https://discord.com/api/webhooks/1/aaa\"\n[[source]]\nname = \"b\"\nroot = \"{}\"\ninclude = [\"**/*.log\"]\nfollow = \"all\"\ndiscord_webhook_url = \"https://discord.com/api/webhooks/2/bbb\"\n",
                d.join("state").display(),
                ra.display(),
                rb.display()
            ),
        )
        .unwrap();
        let env = [("HOME".to_string(), d.display().to_string())].into();
        let cfg = Config::load(&Inputs {
            config_file: Some(cfg_path),
            env,
            dry_run: false,
            dotenv: None,
        })
        .unwrap();
        (Arc::new(cfg), ra, rb)
    }

    /// inotify could not watch a new directory (the watch limit): that
    /// tree is polled from then on, said once, and a file created in it is
    /// found and read by the next periodic rescan without any event.
    #[test]
    fn a_tree_without_watches_is_polled_and_read_at_rescans() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, ra, rb) = two_sources(d.path());
        let store = Arc::new(Store::open(&cfg.state_dir, true).unwrap());
        let (ready_tx, _ready_rx) = bounded(1);
        let mut w = Watcher::new(cfg.clone(), store, Arc::new(Stats::default()), ready_tx);
        let (_ctl_tx, ctl_rx) = bounded(4);
        let (txs, rxs): (Vec<_>, Vec<_>) = cfg.webhooks.iter().map(|_| bounded(8)).unzip();
        w.attach(&ctl_rx, &txs);
        // No callback: this test delivers the events itself.
        let mut inotify = notify::recommended_watcher(|_| {}).unwrap();
        for i in 0..2 {
            assert_eq!(w.setup_source(i, &mut inotify, false), Flow::Go);
        }
        assert!(!w.sources[0].polled && !w.sources[1].polled);
        let sub = ra.join("new-dir");
        std::fs::create_dir(&sub).unwrap();
        let err = notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(sub.clone());
        assert_eq!(w.on_events(vec![Err(err)], &mut inotify), Flow::Go);
        assert!(w.sources[0].polled && w.told_watch_limit);
        assert!(!w.sources[1].polled, "only the tree that lost its watch");
        std::fs::write(sub.join("late.log"), "written unseen\n").unwrap();
        std::fs::write(rb.join("quiet.log"), "").unwrap();
        assert_eq!(w.rescan(&mut inotify, false), Flow::Go);
        let c = rxs[cfg.sources[0].route]
            .recv_timeout(Duration::from_secs(1))
            .unwrap();
        assert_eq!(texts(&[c]), vec!["written unseen".to_string()]);
    }

    /// Two sources, two webhooks: while nobody takes route A's chunks, the
    /// watcher still reads and sends B's lines, answers pings and stops at
    /// once; then A's lines all come, in order, with exact start offsets.
    #[test]
    fn a_full_route_holds_back_only_its_own_files() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, ra, rb) = two_sources(d.path());
        let (fa, fb) = (ra.join("a.log"), rb.join("b.log"));
        std::fs::write(&fa, "").unwrap();
        std::fs::write(&fb, "").unwrap();
        let (route_a, route_b) = (cfg.sources[0].route, cfg.sources[1].route);
        assert_ne!(route_a, route_b);
        let store = Arc::new(Store::open(&cfg.state_dir, true).unwrap());
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = bounded(1);
        let (ctl_tx, ctl_rx) = bounded(4);
        let (txs, rxs): (Vec<_>, Vec<_>) = cfg.webhooks.iter().map(|_| bounded(1)).unzip();
        let w = Watcher::new(cfg.clone(), store, stats.clone(), ready_tx);
        let h = std::thread::spawn(move || w.run(ctl_rx, txs));
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

        // Far more than route A's channel and pending slot hold.
        let a: Vec<String> = (0..20_000)
            .map(|i| format!("a-{i:06} {}", "x".repeat(40)))
            .collect();
        append(&fa, &a);
        let b: Vec<String> = (0..50).map(|i| format!("b-{i:06}")).collect();
        let mut got_b = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        for (n, part) in b.chunks(10).enumerate() {
            append(&fb, part);
            while texts(&got_b).len() < (n + 1) * 10 && Instant::now() < deadline {
                if let Ok(c) = rxs[route_b].recv_timeout(Duration::from_millis(50)) {
                    got_b.push(c);
                }
            }
        }
        assert_eq!(texts(&got_b), b, "route B went on while A was full");
        // Pings are answered while A is held up.
        ctl_tx.send(Control::Ping(7)).unwrap();
        let answered = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            stats
                .watcher_pong
                .load(std::sync::atomic::Ordering::Relaxed)
                == 7
        });
        assert!(answered);
        // Now take A: everything, in order, each chunk starting where the
        // previous one ended.
        let mut got_a: Vec<Chunk> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while texts(&got_a).len() < a.len() && Instant::now() < deadline {
            if let Ok(c) = rxs[route_a].recv_timeout(Duration::from_millis(100)) {
                got_a.push(c);
            }
        }
        assert_eq!(texts(&got_a), a);
        let mut at = 0;
        for c in &got_a {
            assert_eq!(c.start, at);
            at = c.lines.last().unwrap().end;
        }
        ctl_tx.send(Control::Shutdown).unwrap();
        let t0 = Instant::now();
        h.join().unwrap().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    /// Route A (the Ekos log's) is held up: its file is not read, but each
    /// look at it that finds it grown tells the night watch, once per
    /// growth; a look that finds the same size (an event for a metadata
    /// change, a rescan, the rest of a large read left for later) says
    /// nothing, so a log that really stops still goes silent. Files of
    /// other sources never count. Once the route has room, everything is
    /// read, in order.
    #[test]
    fn a_held_up_route_still_tells_the_night_watch_its_ekos_log_grows() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, ra, rb) = two_sources(d.path());
        let (fa, fb) = (ra.join("a.log"), rb.join("b.log"));
        std::fs::write(&fa, "").unwrap();
        std::fs::write(&fb, "").unwrap();
        let (route_a, route_b) = (cfg.sources[0].route, cfg.sources[1].route);
        let store = Arc::new(Store::open(&cfg.state_dir, true).unwrap());
        let (ready_tx, _ready_rx) = bounded(1);
        let mut settings = crate::nightwatch::Settings::from_config(&cfg);
        settings.ekos_source = Some(0);
        let (tap, seen_rx, counters) = crate::nightwatch::channel(&settings);
        let mut w =
            Watcher::new(cfg.clone(), store, Arc::new(Stats::default()), ready_tx).with_tap(tap);
        let (_ctl_tx, ctl_rx) = bounded(4);
        let (txs, rxs): (Vec<_>, Vec<_>) = cfg.webhooks.iter().map(|_| bounded(1)).unzip();
        w.attach(&ctl_rx, &txs);
        let mut inotify = notify::recommended_watcher(|_| {}).unwrap();
        for i in 0..2 {
            assert_eq!(w.setup_source(i, &mut inotify, false), Flow::Go);
        }
        let grew = || counters.grew.load(Ordering::SeqCst);
        let mut n = 0;
        let mut lines = |k: usize| -> Vec<String> {
            (0..k)
                .map(|_| {
                    n += 1;
                    format!("line {n:06} {}", "y".repeat(60))
                })
                .collect()
        };
        let mut written = Vec::new();
        let write = |p: &Path, v: Vec<String>, w_: &mut Vec<String>| {
            append(p, &v);
            w_.extend(v);
        };

        // One chunk fills route A's channel, the next is its pending one.
        write(&fa, lines(3), &mut written);
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        write(&fa, lines(3), &mut written);
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert!(w.pending[route_a].is_some());
        assert_eq!(grew(), 0, "lines read are no growth news");
        // Looks without growth: nothing.
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert_eq!(w.rescan(&mut inotify, false), Flow::Go);
        assert_eq!(grew(), 0);
        // Ekos writes: each look that finds more says so, once.
        for i in 1..=3 {
            write(&fa, lines(2), &mut written);
            assert_eq!(w.on_path(&fa, false), Flow::Go);
            assert!(w.stalled[route_a]);
            assert_eq!(grew(), i);
            assert_eq!(w.on_path(&fa, false), Flow::Go);
            assert_eq!(grew(), i, "the same size twice is one growth");
        }
        // A metadata change is an event, not growth.
        let f = std::fs::File::open(&fa).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert_eq!(w.rescan(&mut inotify, false), Flow::Go);
        assert_eq!(grew(), 3);
        // A write no event reported is found by the rescan.
        write(&fa, lines(1), &mut written);
        assert_eq!(w.rescan(&mut inotify, false), Flow::Go);
        assert_eq!(grew(), 4);
        // Another source's file, its route held up too: not the Ekos log.
        append(&fb, &["b1".into()]);
        assert_eq!(w.on_path(&fb, false), Flow::Go);
        append(&fb, &["b2".into()]);
        assert_eq!(w.on_path(&fb, false), Flow::Go);
        append(&fb, &["b3".into()]);
        assert_eq!(w.on_path(&fb, false), Flow::Go);
        assert!(w.pending[route_b].is_some());
        assert_eq!(grew(), 4);

        // Route A takes its chunks: everything comes, in order, and the
        // night watch had a copy of each read.
        let mut got = Vec::new();
        for _ in 0..100 {
            while let Ok(c) = rxs[route_a].try_recv() {
                got.push(c);
            }
            if let Some(c) = w.pending[route_a].take() {
                txs[route_a].try_send(c).unwrap();
                assert_eq!(w.resume_route(route_a), Flow::Go);
            }
            if texts(&got).len() == written.len() {
                break;
            }
        }
        assert_eq!(texts(&got), written);
        let copied: usize = seen_rx
            .try_iter()
            .filter(|s| s.source == 0)
            .map(|s| s.lines().count())
            .sum();
        assert_eq!(copied, written.len());
        // Read to its end: a look finds nothing new.
        assert_eq!(
            w.files
                .get(w.files.keys_where(|e| e.tailer.source == 0)[0])
                .unwrap()
                .unread_known,
            0
        );
        assert_eq!(grew(), 4);

        // A large write read in part when the route filled up: the rest
        // was there before the hold-up, it is not growth.
        let big = lines(2 * tail::READ_CHUNK / 70 + 100);
        write(&fa, big, &mut written);
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert!(w.pending[route_a].is_some());
        let k = w.files.keys_where(|e| e.tailer.source == 0)[0];
        assert!(w.files.get(k).unwrap().tailer.pending().unwrap() > 0);
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert_eq!(w.rescan(&mut inotify, false), Flow::Go);
        assert_eq!(grew(), 4);
        write(&fa, lines(1), &mut written);
        assert_eq!(w.on_path(&fa, false), Flow::Go);
        assert_eq!(grew(), 5);
    }
}
