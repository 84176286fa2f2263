//! The watcher's table of open files and everything kept per file.
//!
//! Each followed file has one [`Entry`] under a [`Key`] that stays the same
//! while the file is open, even when its checkpoint identity ([`FileId`])
//! is renewed after a rewrite; the rest of the watcher refers to files by
//! key only, so no map of old ids to new ones is needed. Invariants (checked
//! by [`Files::check`] in tests): one entry per device and inode, and the
//! inode index names exactly the entries; `read_upto` holds only files that
//! are not open and is pruned once their lines are delivered, so a cron job
//! that rewrites a log every minute, or a directory of short-lived files,
//! never grows memory.

use std::collections::HashMap;
use std::time::Instant;

use crate::checkpoint::FileId;
use crate::tail::Tailer;

use super::recover::Recovery;

/// A followed file, for as long as it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(u64);

#[derive(Debug)]
pub struct Entry {
    pub tailer: Tailer,
    /// Since when the file is only read to its end, then let go (renamed
    /// away, an older Ekos file, a deleted file not read to its end yet).
    pub retired: Option<Instant>,
    /// The unread end of the old content, from the copy `copytruncate`
    /// made: read before the new content.
    /// (Boxed: rare, and as large as a tailer.)
    pub recovery: Option<Box<Recovery>>,
    /// Bytes past the read position that were there when the file was last
    /// looked at (read, opened, or found grown while its route was held
    /// up): more than this is the file growing, which the night watch
    /// hears of even while the lines cannot be read (see `Watcher::drain`).
    pub unread_known: u64,
}

#[derive(Debug, Default)]
pub struct Files {
    entries: HashMap<Key, Entry>,
    by_inode: HashMap<(u64, u64), Key>,
    next: u64,
    /// How far files let go of were read (see `start::Known::read_upto`).
    read_upto: HashMap<FileId, u64>,
}

impl Files {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds an open file. The caller checked that its inode is not followed.
    pub fn insert(&mut self, tailer: Tailer) -> Key {
        let key = Key(self.next);
        self.next += 1;
        let old = self.by_inode.insert((tailer.dev, tailer.ino), key);
        debug_assert!(old.is_none(), "inode followed twice");
        self.read_upto.remove(&tailer.id);
        self.entries.insert(
            key,
            Entry {
                tailer,
                retired: None,
                recovery: None,
                unread_known: 0,
            },
        );
        key
    }

    /// Lets go of a file, remembering how far it was read.
    pub fn remove(&mut self, key: Key) -> Option<Entry> {
        let e = self.entries.remove(&key)?;
        self.by_inode.remove(&(e.tailer.dev, e.tailer.ino));
        self.read_upto.insert(e.tailer.id, e.tailer.line_end());
        Some(e)
    }

    pub fn get(&self, key: Key) -> Option<&Entry> {
        self.entries.get(&key)
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut Entry> {
        self.entries.get_mut(&key)
    }

    pub fn by_inode(&self, dev: u64, ino: u64) -> Option<Key> {
        self.by_inode.get(&(dev, ino)).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &Entry)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }

    /// Keys matching `f`, oldest first (the order files were opened in).
    pub fn keys_where(&self, f: impl Fn(&Entry) -> bool) -> Vec<Key> {
        let mut v: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| f(e))
            .map(|(k, _)| *k)
            .collect();
        v.sort();
        v
    }

    /// Changes whenever a file is opened (keys only grow).
    pub fn newest_key(&self) -> u64 {
        self.next
    }

    pub fn read_upto(&self, id: FileId) -> Option<u64> {
        self.read_upto.get(&id).copied()
    }

    /// Forgets read positions that no longer matter: `delivered(id)` is the
    /// delivered offset of a record (`None` once it expired). Once every
    /// line read was delivered, the checkpoint says as much.
    pub fn prune_read_upto(&mut self, delivered: impl Fn(FileId) -> Option<u64>) {
        self.read_upto
            .retain(|id, upto| delivered(*id).is_some_and(|d| d < *upto));
    }

    #[cfg(test)]
    pub fn read_upto_len(&self) -> usize {
        self.read_upto.len()
    }

    /// Asserts the table's invariants.
    #[cfg(test)]
    pub fn check(&self) {
        assert_eq!(self.by_inode.len(), self.entries.len());
        for (k, e) in &self.entries {
            assert_eq!(self.by_inode.get(&(e.tailer.dev, e.tailer.ino)), Some(k));
            assert!(!self.read_upto.contains_key(&e.tailer.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail;

    fn tailer(path: &std::path::Path, id: u64) -> Tailer {
        let (f, m) = tail::open_regular(path).unwrap();
        Tailer::new(FileId(id), 0, path.into(), None, f, &m, 0).unwrap()
    }

    /// Random opens, releases and prunes of a few files: the invariants
    /// hold after every step and nothing grows without bound.
    #[test]
    fn random_operations_keep_the_invariants_and_stay_bounded() {
        let d = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..5)
            .map(|i| {
                let p = d.path().join(format!("{i}.log"));
                std::fs::write(&p, format!("line {i}\n")).unwrap();
                p
            })
            .collect();
        let mut files = Files::default();
        let mut open: HashMap<usize, Key> = HashMap::new();
        let mut rng = 12345u64;
        let mut next_id = 0;
        let mut delivered: HashMap<FileId, u64> = HashMap::new();
        for _ in 0..3000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % 5) as usize;
            match (rng >> 8) % 3 {
                0 => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = open.entry(i) {
                        let t = tailer(&paths[i], next_id);
                        next_id += 1;
                        let m = std::fs::metadata(&paths[i]).unwrap();
                        use std::os::unix::fs::MetadataExt;
                        assert!(files.by_inode(m.dev(), m.ino()).is_none());
                        slot.insert(files.insert(t));
                    }
                }
                1 => {
                    if let Some(k) = open.remove(&i) {
                        let e = files.remove(k).unwrap();
                        // Half the files had their lines delivered.
                        if rng & 1 == 0 {
                            delivered.insert(e.tailer.id, e.tailer.line_end());
                        } else {
                            delivered.insert(e.tailer.id, 0);
                        }
                    }
                }
                _ => {
                    // Lines get delivered over time; old records expire.
                    let ids: Vec<FileId> = delivered.keys().copied().collect();
                    for id in ids {
                        if id.0 + 20 < next_id {
                            delivered.remove(&id);
                        } else {
                            delivered.insert(id, u64::MAX);
                        }
                    }
                    files.prune_read_upto(|id| delivered.get(&id).copied());
                }
            }
            files.check();
            assert_eq!(files.len(), open.len());
            assert!(files.read_upto_len() <= 60, "{}", files.read_upto_len());
        }
    }
}
