//! Finding a source's files: a recursive walk of its root that matches the
//! include and exclude globs.
//!
//! The walk follows symbolic links to directories but remembers every
//! directory it entered (by device and inode), so a link loop cannot hang
//! it. Only regular files are returned; a FIFO, socket or device whose name
//! matches is reported as a problem, never opened. Directories that cannot
//! be read are reported too, and the walk goes on with the rest.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    let mut visited = HashSet::new();
    visited.insert((root_meta.dev(), root_meta.ino()));
    let mut stack = vec![source.root.clone()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if first => return Err(e),
            Err(e) => {
                out.problems.push((dir, e.to_string()));
                continue;
            }
        };
        first = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            let is_dir = if ft.is_symlink() {
                std::fs::metadata(&path)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
            } else {
                ft.is_dir()
            };
            if is_dir {
                if let Ok(m) = std::fs::metadata(&path) {
                    if visited.insert((m.dev(), m.ino())) {
                        stack.push(path);
                    }
                }
                continue;
            }
            // Known files first: a hash lookup is cheaper than the globs.
            if skip(&path) {
                continue;
            }
            let rel = path
                .strip_prefix(&source.root)
                .unwrap_or(&path)
                .to_path_buf();
            if !source.matches(&rel) {
                continue;
            }
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
    }
    Ok(out)
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
    fn missing_root_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(scan(&source(&d.path().join("nope"), &["*.log"]), |_| false).is_err());
    }
}
