//! Who runs KStars here: the passwd database and the KStars log directories
//! in the users' homes.
//!
//! Discovery is a pure function of a passwd list and a filesystem root (the
//! real `/`, or a test's directory), so it is tested on made-up machines.

use std::path::{Path, PathBuf};

use super::{SetupError, Sys};

/// Where KStars writes its logs, relative to the home directory: the
/// distribution package, then the Flatpak.
pub const KSTARS_LOGS: &[&str] = &[
    ".local/share/kstars/logs",
    ".var/app/org.kde.kstars/data/kstars/logs",
];

/// One line of the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PwEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// A KStars logs directory and the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkosDir {
    /// `None` for a directory configured by hand that belongs to no known
    /// user's home.
    pub user: Option<String>,
    pub dir: PathBuf,
}

/// Parses `/etc/passwd` text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PwEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PwEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
            })
        })
        .collect()
}

/// The KStars logs directory of a home, if one exists under `sys`'s root.
fn kstars_dir_of(sys: &Sys, home: &Path) -> Option<PathBuf> {
    KSTARS_LOGS
        .iter()
        .map(|rel| home.join(rel))
        .find(|d| sys.path(d).is_dir())
}

/// Every KStars logs directory of the machine: those of the passwd
/// entries' homes, and those under `/home/*` (a home whose user is not in
/// the list, e.g. from LDAP, is named after its directory). `first` (the
/// user who ran sudo) comes first, the others by name.
pub fn discover(sys: &Sys, passwd: &[PwEntry], first: Option<&str>) -> Vec<EkosDir> {
    let mut found: Vec<EkosDir> = Vec::new();
    let mut add = |user: String, dir: PathBuf| {
        if !found.iter().any(|f| f.dir == dir) {
            found.push(EkosDir {
                user: Some(user),
                dir,
            });
        }
    };
    for pw in passwd {
        if pw.home.as_os_str().is_empty() || pw.home == Path::new("/") {
            continue;
        }
        if let Some(dir) = kstars_dir_of(sys, &pw.home) {
            add(pw.name.clone(), dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(sys.path(Path::new("/home"))) {
        let mut homes: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        homes.sort();
        for name in homes {
            let home = Path::new("/home").join(&name);
            if let Some(dir) = kstars_dir_of(sys, &home) {
                let user = passwd
                    .iter()
                    .find(|p| p.home == home)
                    .map_or(name, |p| p.name.clone());
                add(user, dir);
            }
        }
    }
    found.sort_by(|a, b| {
        let key = |d: &EkosDir| (d.user.as_deref() != first, d.user.clone());
        key(a).cmp(&key(b))
    });
    found
}

/// The KStars logs directory of the user named on the command line.
pub fn dir_of_user(sys: &Sys, passwd: &[PwEntry], name: &str) -> Result<EkosDir, SetupError> {
    let pw = passwd
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .or_else(|| sys.getpwnam(name))
        .ok_or_else(|| SetupError::NoSuchUser(name.to_string()))?;
    match kstars_dir_of(sys, &pw.home) {
        Some(dir) => Ok(EkosDir {
            user: Some(pw.name),
            dir,
        }),
        None => Err(SetupError::NoKstarsLogs {
            user: name.to_string(),
            dir: pw.home.join(KSTARS_LOGS[0]),
        }),
    }
}

/// The user a configured directory belongs to, if it is a KStars logs
/// directory of a known home.
pub fn owner_of(passwd: &[PwEntry], found: &[EkosDir], dir: &Path) -> Option<String> {
    if let Some(f) = found.iter().find(|f| f.dir == dir) {
        return f.user.clone();
    }
    passwd
        .iter()
        .find(|p| KSTARS_LOGS.iter().any(|rel| p.home.join(rel) == dir))
        .map(|p| p.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
broken line
ekos-log-monitor:x:999:999::/nonexistent:/usr/sbin/nologin
astro:x:1000:1000:Astro,,,:/home/astro:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
zed:x:1002:1002::/data/zed:/bin/bash
";

    fn machine() -> (tempfile::TempDir, Sys) {
        let t = tempfile::tempdir().unwrap();
        for d in [
            "home/astro/.local/share/kstars/logs/2026-01-17",
            "home/bob/.local/share/kstars",
            "home/ldapuser/.var/app/org.kde.kstars/data/kstars/logs",
            "data/zed/.local/share/kstars/logs",
        ] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let sys = Sys::new(Some(t.path().to_path_buf()));
        (t, sys)
    }

    #[test]
    fn parses_passwd_and_skips_junk() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 5);
        assert_eq!(
            p[2],
            PwEntry {
                name: "astro".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/astro".into()
            }
        );
    }

    #[test]
    fn finds_kstars_dirs_sudo_user_first() {
        let (_t, sys) = machine();
        let pw = parse_passwd(PASSWD);
        let names = |v: Vec<EkosDir>| -> Vec<(String, String)> {
            v.into_iter()
                .map(|d| (d.user.unwrap(), d.dir.display().to_string()))
                .collect()
        };
        let all = names(discover(&sys, &pw, None));
        assert_eq!(
            all,
            vec![
                (
                    "astro".into(),
                    "/home/astro/.local/share/kstars/logs".into()
                ),
                (
                    "ldapuser".into(),
                    "/home/ldapuser/.var/app/org.kde.kstars/data/kstars/logs".into()
                ),
                ("zed".into(), "/data/zed/.local/share/kstars/logs".into()),
            ]
        );
        let zed_first = names(discover(&sys, &pw, Some("zed")));
        assert_eq!(zed_first[0].0, "zed");
        assert_eq!(zed_first[1].0, "astro");
    }

    #[test]
    fn a_named_user_needs_a_logs_directory() {
        let (_t, sys) = machine();
        let pw = parse_passwd(PASSWD);
        assert_eq!(
            dir_of_user(&sys, &pw, "astro").unwrap().dir,
            Path::new("/home/astro/.local/share/kstars/logs")
        );
        let e = dir_of_user(&sys, &pw, "bob").unwrap_err().to_string();
        assert!(
            e.contains("bob") && e.contains("/home/bob/.local/share/kstars/logs"),
            "{e}"
        );
        let e = dir_of_user(&sys, &pw, "nobody-here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no user named \"nobody-here\""), "{e}");
    }
}
