//! Carrying out a plan: files replaced atomically, ACLs granted, systemd
//! told.
//!
//! Every file is first written in full beside its destination (a hidden
//! temporary name in the same directory, flushed with fsync, with its final
//! owner and mode) and the new configuration is loaded by the daemon's own
//! loader from there; only when all of that succeeded are the files renamed
//! into place, one after the other, and their directories synced. A failure
//! before the renames leaves the machine as it was. Under a test root
//! (`Sys::test_root`) `systemctl` is printed, not run.

use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::plan::{Action, CONFIG, Grant, SERVICE_USER, UNIT};
use super::{SetupError, Sys};
use crate::config::{Config, Inputs};
use crate::webhook::Webhook;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

/// A file written beside its destination, not yet renamed.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

fn stage(
    sys: &Sys,
    path: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    content: &str,
) -> Result<Staged, SetupError> {
    let dest = sys.path(path);
    let dir = dest.parent().unwrap_or(Path::new("/"));
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.setup-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        // Created 0600 so a secret is never readable, even for a moment.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    };
    match write() {
        Ok(()) => Ok(Staged { tmp, dest }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(SetupError::Io {
                what: format!("cannot write {}", tmp.display()),
                source: e,
            })
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Loads the configuration as the service will: `file` with the webhook
/// given (the credential is not readable outside the service), nothing from
/// this process's environment.
pub fn load_config(file: &Path, webhook: &Webhook) -> Result<Config, SetupError> {
    let inputs = Inputs {
        config_file: Some(file.to_path_buf()),
        env: HashMap::from([("DISCORD_WEBHOOK_URL".to_string(), webhook.url().to_string())]),
        dry_run: false,
        dotenv: None,
    };
    Config::load(&inputs).map_err(SetupError::NewConfig)
}

/// Writes and renames the plan's files. Nothing is renamed unless every
/// file was written and the configuration loads.
pub fn write_files(sys: &Sys, actions: &[Action], webhook: &Webhook) -> Result<(), SetupError> {
    let mut staged: Vec<Staged> = Vec::new();
    let discard = |staged: &[Staged]| {
        for s in staged {
            let _ = std::fs::remove_file(&s.tmp);
        }
    };
    for a in actions {
        if let Action::Write {
            path,
            mode,
            uid,
            gid,
            content,
        } = a
        {
            match stage(sys, path, *mode, *uid, *gid, content) {
                Ok(s) => {
                    if path == Path::new(CONFIG)
                        && let Err(e) = load_config(&s.tmp, webhook)
                    {
                        discard(&staged);
                        let _ = std::fs::remove_file(&s.tmp);
                        return Err(e);
                    }
                    staged.push(s)
                }
                Err(e) => {
                    discard(&staged);
                    return Err(e);
                }
            }
        }
    }
    super::prompt::APPLYING.store(true, std::sync::atomic::Ordering::SeqCst);
    for (i, s) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(&s.tmp, &s.dest) {
            discard(&staged[i..]);
            return Err(SetupError::Io {
                what: format!("cannot rename into {}", s.dest.display()),
                source: e,
            });
        }
        sync_dir(s.dest.parent().unwrap_or(Path::new("/")));
        println!("  wrote {}", s.dest.display());
    }
    for a in actions {
        if let Action::Remove { path } = a {
            let p = sys.path(path);
            match std::fs::remove_file(&p) {
                Ok(()) => println!("  removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("cannot remove {}", p.display()))(e)),
            }
            sync_dir(p.parent().unwrap_or(Path::new("/")));
        }
    }
    Ok(())
}

/// Whether a program is on `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_else(|| vec!["/usr/bin".into(), "/bin".into()])
        .iter()
        .any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

use std::os::unix::fs::MetadataExt;

/// The setfacl command line for a grant (the service user by number, so
/// that it works under a test root too).
pub fn setfacl_args(g: &Grant, uid: u32, path: &Path) -> Vec<String> {
    let p = path.display().to_string();
    if g.tree {
        vec![
            "-R".into(),
            "-m".into(),
            format!("u:{uid}:rX"),
            "-m".into(),
            format!("d:u:{uid}:rX"),
            p,
        ]
    } else {
        vec!["-m".into(), format!("u:{uid}:x"), p]
    }
}

/// How a grant is shown to the user.
pub fn describe_grant(g: &Grant) -> String {
    if g.tree {
        format!(
            "setfacl -R -m u:{SERVICE_USER}:rX -m d:u:{SERVICE_USER}:rX {}",
            g.path.display()
        )
    } else {
        format!("setfacl -m u:{SERVICE_USER}:x {}", g.path.display())
    }
}

pub fn grant(sys: &Sys, g: &Grant, uid: u32) -> Result<(), SetupError> {
    let out = Command::new("setfacl")
        .args(setfacl_args(g, uid, &sys.path(&g.path)))
        .output()
        .map_err(io("cannot run setfacl"))?;
    if !out.status.success() {
        return Err(SetupError::Command {
            what: describe_grant(g),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    println!("  {}", describe_grant(g));
    Ok(())
}

/// Whether systemd can hand a credential to a service here: a throw-away
/// transient service with one inline credential must run. Under qemu-user
/// emulation systemd cannot set credentials up (the service fails with
/// 243/CREDENTIALS) and setup then passes the webhook through
/// `EnvironmentFile=`. Assumed to work under a test root, and when the
/// probe itself cannot run (no systemd-run).
pub fn credentials_work(sys: &Sys) -> bool {
    if sys.test_root() {
        return true;
    }
    match Command::new("systemd-run")
        .args([
            "--quiet",
            "--wait",
            "--collect",
            "--service-type=exec",
            "-p",
            "SetCredential=ekos-log-monitor-probe:ok",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(st) => st.success(),
        Err(_) => true,
    }
}

/// Runs `systemctl ARGS`; under a test root only prints it.
pub fn systemctl(sys: &Sys, args: &[&str]) -> Result<(), SetupError> {
    let shown = format!("systemctl {}", args.join(" "));
    if sys.test_root() {
        println!("  (test root) would run: {shown}");
        return Ok(());
    }
    println!("  {shown}");
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(io("cannot run systemctl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SetupError::Command {
            what: shown,
            why: String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        })
    }
}

pub fn is_active(sys: &Sys) -> bool {
    !sys.test_root()
        && Command::new("systemctl")
            .args(["is-active", "--quiet", UNIT])
            .status()
            .is_ok_and(|s| s.success())
}

/// The `Active:` and `Status:` lines of `systemctl status`.
pub fn status_lines(sys: &Sys) -> Vec<String> {
    if sys.test_root() {
        return Vec::new();
    }
    let out = Command::new("systemctl")
        .args(["status", "--no-pager", "--lines=0", UNIT])
        .env("SYSTEMD_COLORS", "0")
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Active:") || l.starts_with("Status:"))
        .map(crate::webhook::redact_secrets)
        .collect()
}

/// What the service will follow, as `check` shows it.
pub fn show_check(sys: &Sys, cfg: &Config) {
    for s in &cfg.sources {
        let mut src = s.clone();
        src.root = sys.path(&s.root);
        match crate::discover::scan(&src, |_| false) {
            Ok(scan) => match s.follow {
                crate::config::Follow::Newest => match crate::discover::newest(&scan.files) {
                    Some(f) => println!(
                        "  {}: follows the newest file, now {}",
                        s.name,
                        s.root.join(&f.rel).display()
                    ),
                    None => println!(
                        "  {}: {} has no log file yet (waiting for one)",
                        s.name,
                        s.root.display()
                    ),
                },
                crate::config::Follow::All => println!(
                    "  {}: follows {} files under {}",
                    s.name,
                    scan.files.len(),
                    s.root.display()
                ),
            },
            Err(e) => println!(
                "  {}: {} cannot be read now ({e}); followed when it appears",
                s.name,
                s.root.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::plan::Action;

    fn write(path: &str, content: &str) -> Action {
        Action::Write {
            path: path.into(),
            mode: 0o640,
            uid: 0,
            gid: 0,
            content: content.into(),
        }
    }

    #[test]
    fn files_land_whole_with_their_mode_and_no_temporary_is_left() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(Some(t.path().to_path_buf()));
        let w = Webhook::parse("https://discord.com/api/webhooks/1/t").unwrap();
        let actions = vec![
            write(CONFIG, "ekos_logs_directory = \"/srv\"\n"),
            write("/etc/systemd/system/x.d/a.conf", "[Service]\n"),
        ];
        write_files(&sys, &actions, &w).unwrap();
        let cfg = t.path().join("etc/ekos-log-monitor/config.toml");
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap(),
            "ekos_logs_directory = \"/srv\"\n"
        );
        assert_eq!(std::fs::metadata(&cfg).unwrap().mode() & 0o7777, 0o640);
        let names: Vec<_> = std::fs::read_dir(cfg.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["config.toml"]);
    }

    #[test]
    fn a_config_the_daemon_refuses_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(Some(t.path().to_path_buf()));
        let w = Webhook::parse("https://discord.com/api/webhooks/1/t").unwrap();
        let actions = vec![
            write("/etc/ekos-log-monitor/webhook", "x\n"),
            write(CONFIG, "batch_size = \"ten\"\n"),
        ];
        let e = write_files(&sys, &actions, &w).unwrap_err().to_string();
        assert!(e.contains("BATCH_SIZE"), "{e}");
        let left: Vec<_> = std::fs::read_dir(t.path().join("etc/ekos-log-monitor"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn setfacl_lines() {
        let g = Grant {
            path: "/srv/service/event".into(),
            tree: true,
        };
        assert_eq!(
            setfacl_args(&g, 999, Path::new("/r/srv/service/event")).join(" "),
            "-R -m u:999:rX -m d:u:999:rX /r/srv/service/event"
        );
        let g = Grant {
            path: "/srv".into(),
            tree: false,
        };
        assert_eq!(describe_grant(&g), "setfacl -m u:ekos-log-monitor:x /srv");
    }
}
