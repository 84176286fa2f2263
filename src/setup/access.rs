//! Can the service user read a tree? POSIX permissions and ACLs, decided
//! the way the kernel does, so that an ACL is granted only where needed.
//!
//! The decision ([`permits`]) is pure; [`first_unreadable`] walks a tree and
//! reads each entry's mode and `system.posix_acl_access` attribute. The
//! service runs with `PrivateUsers=yes`, so only its own user and group
//! count (no supplementary groups are assumed: at worst an ACL is granted
//! that a group already gave).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Read, write, execute bits of a permission triple.
pub const R: u16 = 4;
pub const X: u16 = 1;

/// One entry of a POSIX ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    UserObj,
    User(u32),
    GroupObj,
    Group(u32),
    Mask,
    Other,
}

/// Parses the kernel's `system.posix_acl_access` value: a little-endian
/// version 2 header, then 8-byte entries (tag u16, perm u16, id u32).
pub fn parse_acl_xattr(bytes: &[u8]) -> Option<Vec<(Tag, u16)>> {
    let (head, rest) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != 2 || rest.len() % 8 != 0 {
        return None;
    }
    rest.chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]) & 7;
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let tag = match tag {
                0x01 => Tag::UserObj,
                0x02 => Tag::User(id),
                0x04 => Tag::GroupObj,
                0x08 => Tag::Group(id),
                0x10 => Tag::Mask,
                0x20 => Tag::Other,
                _ => return None,
            };
            Some((tag, perm))
        })
        .collect()
}

/// What the kernel's access check (acl(5), "ACCESS CHECK ALGORITHM")
/// answers for a process of `uid` and `gids` wanting `want` on a file of
/// `mode`, owner and group, with its ACL if it has one.
pub fn permits(
    mode: u32,
    owner: u32,
    group: u32,
    acl: Option<&[(Tag, u16)]>,
    uid: u32,
    gids: &[u32],
    want: u16,
) -> bool {
    let ok = |perm: u16| perm & want == want;
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    if uid == owner {
        return ok(bits(6));
    }
    let Some(acl) = acl else {
        return if gids.contains(&group) {
            ok(bits(3))
        } else {
            ok(bits(0))
        };
    };
    let mask = acl
        .iter()
        .find(|(t, _)| *t == Tag::Mask)
        .map_or(7, |(_, p)| *p);
    if let Some((_, p)) = acl.iter().find(|(t, _)| *t == Tag::User(uid)) {
        return ok(p & mask);
    }
    let mut in_group_class = false;
    for (t, p) in acl {
        let matches = match t {
            Tag::GroupObj => gids.contains(&group),
            Tag::Group(g) => gids.contains(g),
            _ => false,
        };
        if matches {
            in_group_class = true;
            if ok(p & mask) {
                return true;
            }
        }
    }
    if in_group_class {
        return false;
    }
    acl.iter()
        .find(|(t, _)| *t == Tag::Other)
        .is_some_and(|(_, p)| ok(*p))
}

/// The access ACL of a path (not following a final symlink), if it has one.
fn acl_of(path: &Path) -> Option<Vec<(Tag, u16)>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = c"system.posix_acl_access";
    let mut buf = vec![0u8; 1024];
    // SAFETY: both strings are NUL-terminated and buf is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    parse_acl_xattr(&buf)
}

/// Whether `uid`/`gids` may do `want` on `path` (stat and ACL of the path).
pub fn may(path: &Path, uid: u32, gids: &[u32], want: u16) -> std::io::Result<bool> {
    let m = std::fs::symlink_metadata(path)?;
    let acl = acl_of(path);
    Ok(permits(
        m.mode(),
        m.uid(),
        m.gid(),
        acl.as_deref(),
        uid,
        gids,
        want,
    ))
}

/// Entries walked at most before the tree is taken as not readable (an ACL
/// is then granted, which is harmless): a bound on the time setup takes.
const WALK_LIMIT: usize = 200_000;

/// The first entry of the tree at `root` the user cannot read (a
/// directory it cannot list or enter, a file it cannot read), if any.
/// Symbolic links are not followed.
pub fn first_unreadable(root: &Path, uid: u32, gids: &[u32]) -> std::io::Result<Option<PathBuf>> {
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        if !may(&dir, uid, gids, R | X)? {
            return Ok(Some(dir));
        }
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            seen += 1;
            if seen > WALK_LIMIT {
                return Ok(Some(dir));
            }
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && !may(&p, uid, gids, R)? {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: u32 = 999;

    fn xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (t, p, id) in entries {
            v.extend(t.to_le_bytes());
            v.extend(p.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn mode_bits_alone() {
        // 0644 root:root: others read.
        assert!(permits(0o100644, 0, 0, None, SVC, &[SVC], R));
        // 0640 root:root: no.
        assert!(!permits(0o100640, 0, 0, None, SVC, &[SVC], R));
        // 0640 root:svc: the group reads.
        assert!(permits(0o100640, 0, SVC, None, SVC, &[SVC], R));
        // 0044: the owner's bits are empty, so the owner is denied even
        // though everyone else may read.
        assert!(!permits(0o100044, SVC, 0, None, SVC, &[SVC], R));
        assert!(permits(0o100044, 0, 0, None, SVC, &[SVC], R));
        // A directory needs r and x.
        assert!(!permits(0o40744, 0, 0, None, SVC, &[SVC], R | X));
        assert!(permits(0o40755, 0, 0, None, SVC, &[SVC], R | X));
    }

    #[test]
    fn acl_entries_and_mask() {
        let acl = parse_acl_xattr(&xattr(&[
            (0x01, 6, u32::MAX),
            (0x02, 4, SVC),
            (0x04, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ]))
        .unwrap();
        assert_eq!(acl[1], (Tag::User(SVC), 4));
        assert!(permits(0o100640, 0, 0, Some(&acl), SVC, &[SVC], R));
        // The same named entry under an empty mask gives nothing.
        let mut masked = acl.clone();
        masked[3] = (Tag::Mask, 0);
        assert!(!permits(0o100600, 0, 0, Some(&masked), SVC, &[SVC], R));
        // Someone else falls through to other (0).
        assert!(!permits(0o100640, 0, 0, Some(&acl), 1234, &[1234], R));
    }

    #[test]
    fn a_matching_group_that_denies_hides_other() {
        // group:svc:--- and other::r--: denied, as the kernel does.
        let acl = vec![
            (Tag::UserObj, 6),
            (Tag::GroupObj, 4),
            (Tag::Group(SVC), 0),
            (Tag::Mask, 4),
            (Tag::Other, 4),
        ];
        assert!(!permits(0o100644, 0, 0, Some(&acl), SVC, &[SVC], R));
    }

    #[test]
    fn rejects_malformed_xattrs() {
        assert!(parse_acl_xattr(&[1, 0, 0, 0]).is_none());
        assert_eq!(parse_acl_xattr(&[2, 0, 0, 0]), Some(vec![]));
        assert!(parse_acl_xattr(&[2, 0, 0]).is_none());
        assert!(parse_acl_xattr(&xattr(&[(0x40, 4, 0)])).is_none());
        let mut odd = xattr(&[(0x01, 6, 0)]);
        odd.push(0);
        assert!(parse_acl_xattr(&odd).is_none());
    }

    #[test]
    fn walks_a_real_tree_and_sees_a_real_acl() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("event");
        std::fs::create_dir_all(root.join("deploy")).unwrap();
        let log = root.join("deploy/deploy.log");
        std::fs::write(&log, "x\n").unwrap();
        let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        set(&root, 0o755).unwrap();
        set(&root.join("deploy"), 0o755).unwrap();
        set(&log, 0o644).unwrap();
        // Not the test's own uid, so mode bits decide.
        let uid = 4_000_000;
        assert_eq!(first_unreadable(&root, uid, &[uid]).unwrap(), None);
        set(&log, 0o640).unwrap();
        assert_eq!(
            first_unreadable(&root, uid, &[uid]).unwrap(),
            Some(log.clone())
        );
        // A real ACL entry (when the tools and the file system have them).
        let granted = std::process::Command::new("setfacl")
            .args(["-m", &format!("u:{uid}:r")])
            .arg(&log)
            .status()
            .is_ok_and(|s| s.success());
        if granted {
            assert!(acl_of(&log).is_some());
            assert_eq!(first_unreadable(&root, uid, &[uid]).unwrap(), None);
        }
    }
}
