//! One listing per directory, shared by every look-up of a start-up or a
//! copy search.
//!
//! Finding rotated copies (`x.log.1`, `x.log-20240101`) of each file and
//! finding the files of the checkpoint again by inode used to read the
//! directory once per file and once per record: quadratic, 40 s for 10,000
//! files in one directory. A [`Listing`] reads a directory once (names and
//! inode numbers come with the entries, no `stat`), indexes its entries by
//! inode and by the name they are a rotation of, and answers each look-up
//! in constant time; only the candidates found are `stat`ed by the caller.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Compressed rotated logs are never read (they would be posted as garbage).
pub fn is_compressed(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".gz", ".xz", ".zst", ".bz2", ".lz4", ".Z"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// The names `name` would be a rotated copy of: `x.log` for `x.log.1`
/// (digits after the last dot), and every prefix before a `-`
/// (`x.log-20240101`, also `x.log-1-2` → `x.log` and `x.log-1`).
pub fn rotation_bases(name: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    if let Some(dot) = name.iter().rposition(|&b| b == b'.') {
        let d = &name[dot + 1..];
        if dot > 0 && !d.is_empty() && d.iter().all(u8::is_ascii_digit) {
            v.push(&name[..dot]);
        }
    }
    for (i, &b) in name.iter().enumerate() {
        if b == b'-' && i > 0 {
            v.push(&name[..i]);
        }
    }
    v
}

/// The order in which to read files whose unread lines wait: by
/// modification time (a rotated copy was last written before the file
/// that replaced it), and on a tie (or an unknown time, first) a rotated
/// name before the name it is a rotation of (`x.log.2`, `x.log.1`, `x.log`).
pub fn oldest_first(
    a: (Option<std::time::SystemTime>, &Path),
    b: (Option<std::time::SystemTime>, &Path),
) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1))
}

/// A directory's entries, read once.
#[derive(Debug, Default)]
pub struct Listing {
    dev: u64,
    by_inode: HashMap<u64, Vec<PathBuf>>,
    /// Uncompressed entries by the name they would be a rotation of.
    rotated: HashMap<OsString, Vec<PathBuf>>,
}

impl Listing {
    /// Reads `dir`; an unreadable directory gives an empty listing.
    pub fn read(dir: &Path) -> Listing {
        let mut l = Listing::default();
        let Ok(meta) = std::fs::metadata(dir) else {
            return l;
        };
        l.dev = meta.dev();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return l;
        };
        for e in entries.flatten() {
            let p = e.path();
            // gzip makes a new inode anyway; never read compressed data.
            if is_compressed(&p) {
                continue;
            }
            for base in rotation_bases(e.file_name().as_bytes()) {
                l.rotated
                    .entry(OsStr::from_bytes(base).to_os_string())
                    .or_default()
                    .push(p.clone());
            }
            l.by_inode.entry(e.ino()).or_default().push(p);
        }
        l
    }

    /// The regular file with this device and inode, if one is listed.
    pub fn find_inode(&self, dev: u64, ino: u64) -> Option<PathBuf> {
        if dev != self.dev {
            // Another file system mounted below (rare): look at each name.
            return None;
        }
        self.by_inode.get(&ino)?.iter().find_map(|p| {
            std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file() && m.dev() == dev && m.ino() == ino)
                .map(|_| p.clone())
        })
    }

    /// Rotated copies of `name` in this directory, regular files only,
    /// oldest first.
    pub fn rotated_siblings(&self, name: &OsStr) -> Vec<PathBuf> {
        let Some(c) = self.rotated.get(name) else {
            return Vec::new();
        };
        let mut v: Vec<(std::time::SystemTime, PathBuf)> = c
            .iter()
            .filter_map(|p| {
                let m = std::fs::symlink_metadata(p).ok().filter(|m| m.is_file())?;
                Some((m.modified().ok()?, p.clone()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    }
}

/// Listings made during one start-up, each directory once. Keyed by the
/// path's bytes: hashing a `Path` walks its components, which for 100,000
/// checkpoint records is most of the look-up's cost.
#[derive(Debug, Default)]
pub struct Listings(HashMap<OsString, Listing>);

impl Listings {
    pub fn of(&mut self, dir: &Path) -> &Listing {
        if !self.0.contains_key(dir.as_os_str()) {
            self.0
                .insert(dir.as_os_str().to_os_string(), Listing::read(dir));
        }
        &self.0[dir.as_os_str()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dormant_files_are_read_oldest_first() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = |s| Some(UNIX_EPOCH + Duration::from_secs(s));
        let mut v = [
            (t(30), PathBuf::from("d/x.log")),
            (t(10), PathBuf::from("d/x.log.2")),
            (t(20), PathBuf::from("d/x.log.1")),
            (t(20), PathBuf::from("d/y.log")),
            (None, PathBuf::from("d/z.log")),
        ];
        v.sort_by(|a, b| oldest_first((a.0, &a.1), (b.0, &b.1)));
        let order: Vec<&str> = v.iter().map(|(_, p)| p.to_str().unwrap()).collect();
        assert_eq!(
            order,
            ["d/z.log", "d/x.log.2", "d/y.log", "d/x.log.1", "d/x.log"]
        );
        // The same time: the rotated names first.
        let mut w = [
            (t(5), PathBuf::from("d/x.log")),
            (t(5), PathBuf::from("d/x.log.1")),
            (t(5), PathBuf::from("d/x.log.2")),
        ];
        w.sort_by(|a, b| oldest_first((a.0, &a.1), (b.0, &b.1)));
        let order: Vec<&str> = w.iter().map(|(_, p)| p.to_str().unwrap()).collect();
        assert_eq!(order, ["d/x.log.2", "d/x.log.1", "d/x.log"]);
    }

    fn names(v: Vec<&[u8]>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn bases_of_rotated_names() {
        assert_eq!(names(rotation_bases(b"x.log.1")), vec!["x.log"]);
        assert_eq!(names(rotation_bases(b"x.log.12")), vec!["x.log"]);
        assert_eq!(names(rotation_bases(b"x.log-20240101")), vec!["x.log"]);
        assert_eq!(names(rotation_bases(b"a-b.log-1")), vec!["a", "a-b.log"]);
        assert!(rotation_bases(b"x.log").is_empty());
        assert!(rotation_bases(b"x.log.").is_empty());
        assert!(rotation_bases(b"x.log.1a").is_empty());
        assert!(rotation_bases(b"-x").is_empty());
    }

    #[test]
    fn one_listing_finds_siblings_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (n, age) in [
            ("x.log.2", 30),
            ("x.log.1", 20),
            ("x.log-2024", 10),
            ("x.log.3.gz", 5),
        ] {
            let p = r.join(n);
            std::fs::write(&p, n).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::write(r.join("x.log"), "x").unwrap();
        std::fs::write(r.join("x.logger"), "y").unwrap();
        std::fs::create_dir(r.join("x.log.9")).unwrap();
        let l = Listing::read(r);
        let sib: Vec<String> = l
            .rotated_siblings(OsStr::new("x.log"))
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(sib, vec!["x.log.2", "x.log.1", "x.log-2024"]);
        let m = std::fs::metadata(r.join("x.log.1")).unwrap();
        assert_eq!(l.find_inode(m.dev(), m.ino()), Some(r.join("x.log.1")));
        assert_eq!(l.find_inode(m.dev(), u64::MAX), None);
        let dm = std::fs::metadata(r.join("x.log.9")).unwrap();
        assert_eq!(
            l.find_inode(dm.dev(), dm.ino()),
            None,
            "directories are not files"
        );
    }
}
