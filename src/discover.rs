//! Finding a source's files: a recursive walk of its root that matches the
//! include and exclude globs.
//!
//! The walk (`walkdir`) follows symbolic links to directories: a link back
//! to an ancestor is dropped by walkdir's loop check, and every directory
//! entered is remembered (by device and inode), so one reached through two
//! links is walked once. Only regular files are returned; a FIFO, socket or
//! device whose name matches is reported as a problem, never opened.
//! Directories that cannot be read are reported too, and the walk goes on
//! with the rest.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use walkdir::WalkDir;

use crate::config::Source;

/// A matching regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// Relative to the source's root.
    pub rel: PathBuf,
    pub mtime: SystemTime,
    pub len: u64,
    /// Device and inode, to tell a file already followed without a `stat`.
    pub dev: u64,
    pub ino: u64,
}

/// The result of one walk.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: Vec<Found>,
    /// Paths that could not be walked or are not regular files, with why.
    pub problems: Vec<(PathBuf, String)>,
}

/// Walks `source.root`. Paths for which `skip` is true are neither
/// stat'ed nor returned (the caller already follows them). Fails only if
/// the root itself cannot be read.
pub fn scan(source: &Source, skip: impl Fn(&Path) -> bool) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let root_meta = std::fs::metadata(&source.root)?;
    if !root_meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    // walkdir only stops a link back to an ancestor; two links to one
    // directory (or a link to a sibling) would still walk it twice and
    // find its files under two names.
    let mut visited = HashSet::new();
    visited.insert((root_meta.dev(), root_meta.ino()));
    // The directories being read, by depth: walkdir's error for a linked
    // directory it cannot open names no path, only a depth.
    let mut dirs = vec![source.root.clone()];
    let mut walk = WalkDir::new(&source.root).follow_links(true).into_iter();
    while let Some(item) = walk.next() {
        let entry = match item {
            Ok(e) => e,
            Err(e) => {
                if e.depth() == 0 {
                    return Err(io_error(e));
                }
                if e.loop_ancestor().is_none() {
                    let dir = dirs.get(e.depth() - 1).cloned();
                    problem(source, &skip, &mut out, e, dir);
                }
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        // With `follow_links`, a link's type is its target's, and only
        // links are stat'ed: a known regular file costs no system call.
        if entry.file_type().is_dir() {
            match entry.metadata() {
                Ok(m) if visited.insert((m.dev(), m.ino())) => {
                    dirs.truncate(entry.depth());
                    dirs.push(entry.into_path());
                }
                _ => walk.skip_current_dir(),
            }
            continue;
        }
        let path = entry.into_path();
        // Known files first: a hash lookup is cheaper than the globs.
        if skip(&path) {
            continue;
        }
        let Some(rel) = matching(source, &path) else {
            continue;
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => out.files.push(Found {
                mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                len: m.len(),
                dev: m.dev(),
                ino: m.ino(),
                path,
                rel,
            }),
            Ok(_) => out.problems.push((
                path,
                "not a regular file (FIFO, socket or device), skipped".into(),
            )),
            Err(e) => out.problems.push((path, e.to_string())),
        }
    }
    Ok(out)
}

/// `path` relative to the root, if the source's globs take it.
fn matching(source: &Source, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(&source.root).unwrap_or(path);
    source.matches(rel).then(|| rel.to_path_buf())
}

/// Records a walk error below the root. A directory that cannot be read is
/// always a problem; a link that cannot be followed (dangling) is one only
/// if its name is a file the source would follow, as before walkdir.
fn problem(
    source: &Source,
    skip: &impl Fn(&Path) -> bool,
    out: &mut Scan,
    e: walkdir::Error,
    dir: Option<PathBuf>,
) {
    let Some(path) = e.path().map(Path::to_path_buf) else {
        // walkdir could not open a linked directory of `dir` to compare it
        // with its ancestors (or reading `dir` failed half-way): name the
        // links that cannot be opened, as the hand walk did.
        let dir = dir.unwrap_or_else(|| source.root.clone());
        let before = out.problems.len();
        for (link, why) in unopenable_links(&dir) {
            if !out.problems.iter().any(|(p, _)| *p == link) {
                out.problems.push((link, why.to_string()));
            }
        }
        if out.problems.len() == before && !out.problems.iter().any(|(p, _)| *p == dir) {
            out.problems.push((dir, io_error(e).to_string()));
        }
        return;
    };
    let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
    if !is_dir && (skip(&path) || matching(source, &path).is_none()) {
        return;
    }
    out.problems.push((path, io_error(e).to_string()));
}

/// The links in `dir` to directories that cannot be opened, with why.
fn unopenable_links(dir: &Path) -> Vec<(PathBuf, std::io::Error)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir()))
        .filter_map(|p| std::fs::read_dir(&p).err().map(|e| (p, e)))
        .collect()
}

/// The system's error without walkdir's "IO error for operation on PATH"
/// prefix (the path is reported beside it).
fn io_error(e: walkdir::Error) -> std::io::Error {
    let text = e.to_string();
    e.into_io_error()
        .unwrap_or_else(|| std::io::Error::other(text))
}

/// The most recently modified file; on equal times, the greater path
/// (Ekos names sort by time).
pub fn newest(files: &[Found]) -> Option<&Found> {
    files
        .iter()
        .max_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Follow, StartAt};

    fn source(root: &Path, include: &[&str]) -> Source {
        Source {
            name: "t".into(),
            root: root.into(),
            include: include
                .iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect(),
            exclude: vec![],
            follow: Follow::All,
            start_at: StartAt::End,
            route: 0,
            root_key: "root".into(),
            filter: Default::default(),
            events: crate::format::EventMode::On,
        }
    }

    #[test]
    fn finds_matching_regular_files_and_survives_loops_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("2024-01-15")).unwrap();
        std::fs::create_dir_all(r.join("deploy")).unwrap();
        std::fs::write(r.join("2024-01-15/log_21-00-00.txt"), "a\n").unwrap();
        std::fs::write(r.join("deploy/deploy.log"), "b\n").unwrap();
        std::fs::write(r.join("notes.md"), "c\n").unwrap();
        std::os::unix::fs::symlink(r, r.join("deploy/loop")).unwrap();
        let fifo = std::ffi::CString::new(r.join("x.log").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let s = scan(&source(r, &["log_*.txt", "*.log"]), |_| false).unwrap();
        let mut rels: Vec<_> = s
            .files
            .iter()
            .map(|f| f.rel.to_str().unwrap().to_string())
            .collect();
        rels.sort();
        assert_eq!(
            rels,
            vec!["2024-01-15/log_21-00-00.txt", "deploy/deploy.log"]
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
    }

    #[test]
    fn a_directory_behind_two_links_is_walked_once() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/deep")).unwrap();
        std::fs::write(r.join("a/deep/x.log"), "x\n").unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("b")).unwrap();
        std::os::unix::fs::symlink("../a", r.join("a/deep/up")).unwrap();
        std::fs::create_dir(r.join("c")).unwrap();
        std::os::unix::fs::symlink(r.join("a/deep"), r.join("c/d")).unwrap();
        let s = scan(&source(r, &["*.log"]), |_| false).unwrap();
        assert_eq!(s.files.len(), 1, "{:?}", s.files);
        assert!(s.files[0].path.ends_with("x.log"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    #[test]
    fn known_files_are_not_looked_at_and_dangling_links_only_if_they_match() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("sub")).unwrap();
        std::os::unix::fs::symlink(r.join("nowhere"), r.join("sub/gone.log")).unwrap();
        std::os::unix::fs::symlink(r.join("nowhere"), r.join("sub/gone.txt")).unwrap();
        let fifo = std::ffi::CString::new(r.join("sub/known.log").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let known = r.join("sub/known.log");
        let s = scan(&source(r, &["*.log"]), |p| p == known).unwrap();
        assert!(s.files.is_empty(), "{:?}", s.files);
        let paths: Vec<_> = s.problems.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(paths, vec![r.join("sub/gone.log")], "{:?}", s.problems);
        assert!(s.problems[0].1.contains("No such file"), "{:?}", s.problems);
        // Unknown, the FIFO is reported (and never opened).
        let s = scan(&source(r, &["*.log"]), |_| false).unwrap();
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    }

    #[test]
    fn a_root_that_is_a_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f.log"), "x\n").unwrap();
        let e = scan(&source(&d.path().join("f.log"), &["*.log"]), |_| false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
    }

    #[test]
    fn missing_root_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(scan(&source(&d.path().join("nope"), &["*.log"]), |_| false).is_err());
    }
}
