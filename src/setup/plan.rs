//! What setup will do, decided from the answers and the machine's current
//! state without touching anything: the list of [`Action`]s that `apply`
//! carries out, and the drop-in files' text.
//!
//! A file whose content and mode would not change is not in the plan, so
//! running setup again with the same answers changes nothing and restarts
//! nothing.

use std::path::{Path, PathBuf};

use super::SetupError;
use super::config_edit::{self, Want};
use super::users::EkosDir;
use crate::webhook::Webhook;

pub const UNIT: &str = "ekos-log-monitor.service";
pub const SERVICE_USER: &str = "ekos-log-monitor";
pub const CONFIG: &str = "/etc/ekos-log-monitor/config.toml";
pub const CREDENTIAL: &str = "/etc/ekos-log-monitor/webhook";
/// The webhook as `KEY=VALUE` for `EnvironmentFile=`, only where systemd
/// cannot pass credentials (see [`State::no_credentials`]).
pub const WEBHOOK_ENV: &str = "/etc/ekos-log-monitor/webhook.env";
pub const DROPIN_DIR: &str = "/etc/systemd/system/ekos-log-monitor.service.d";
/// Named like the examples in /usr/share/doc/ekos-log-monitor/examples, so a
/// copy made by hand from the documentation is replaced, not doubled.
pub const DROPIN_WEBHOOK: &str =
    "/etc/systemd/system/ekos-log-monitor.service.d/webhook-credential.conf";
pub const DROPIN_HOME: &str = "/etc/systemd/system/ekos-log-monitor.service.d/read-home-logs.conf";
/// The script-log tree of the prototype's layout.
pub const SCRIPTS_DEFAULT: &str = "/srv/service/event";
/// What `ProtectHome=` hides from the service.
const HOME_TREES: &[&str] = &["/home", "/root", "/run/user"];

/// A file as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNow {
    pub text: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The files setup manages, as found (None: absent).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub config: Option<FileNow>,
    pub credential: Option<FileNow>,
    pub dropin_webhook: Option<FileNow>,
    pub dropin_home: Option<FileNow>,
    pub webhook_env: Option<FileNow>,
    /// This systemd cannot set up credentials for a service (it fails with
    /// 243/CREDENTIALS: seen in an arm64 system emulated by qemu-user). The
    /// webhook then goes through `EnvironmentFile=` from a root-only file,
    /// which systemd reads as root like a credential; the service sees it in
    /// its environment instead of `$CREDENTIALS_DIRECTORY`.
    pub no_credentials: bool,
    /// Group of the service user: the config is 0640 root:that group.
    pub service_gid: u32,
    /// Whether the service runs now.
    pub active: bool,
}

/// Every answer, validated.
#[derive(Debug, Clone)]
pub struct Answers {
    pub webhook: Webhook,
    pub ekos: Vec<EkosDir>,
    pub scripts: Option<PathBuf>,
    pub no_start: bool,
}

/// An ACL to grant the service user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    /// `rX` on the whole tree and as the default for new files; else only
    /// `x` on this directory, to pass through it.
    pub tree: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace (or create) a file atomically.
    Write {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
        content: String,
    },
    Remove {
        path: PathBuf,
    },
    Grant(Grant),
    DaemonReload,
    /// `systemctl enable` and start, or restart when it already runs and
    /// something it reads changed.
    Start {
        restart: bool,
    },
}

/// Whether `dir` is hidden by `ProtectHome=` and so needs a bind mount.
pub fn under_home(dir: &Path) -> bool {
    HOME_TREES.iter().any(|h| dir.starts_with(h))
}

/// A path as one word of a unit file setting: `%` doubled (specifiers),
/// quoted when it holds a blank or a colon (the separators of
/// `BindReadOnlyPaths=`). Quotes, backslashes and control characters are
/// refused rather than escaped.
pub fn unit_word(path: &str) -> Result<String, SetupError> {
    if path
        .chars()
        .any(|c| c == '"' || c == '\'' || c == '\\' || c.is_control())
    {
        return Err(SetupError::UnitPath(path.to_string()));
    }
    let w = path.replace('%', "%%");
    Ok(if w.contains(|c: char| c.is_whitespace() || c == ':') {
        format!("\"{w}\"")
    } else {
        w
    })
}

/// The drop-in that passes the webhook file as a credential.
pub fn dropin_webhook_text() -> String {
    format!(
        "# Written by `ekos-log-monitor setup` (run it again to change the webhook).\n\
         # systemd reads the root-only file and hands it to the service as the\n\
         # credential discord-webhook; see WEBHOOK SECRET in ekos-log-monitor(8).\n\
         [Service]\n\
         LoadCredential=discord-webhook:{CREDENTIAL}\n"
    )
}

/// The drop-in that passes the webhook through the environment, where
/// credentials do not work.
pub fn dropin_webhook_env_text() -> String {
    format!(
        "# Written by `ekos-log-monitor setup` (run it again to change the webhook).\n\
         # This system's systemd cannot pass credentials to services (243/CREDENTIALS,\n\
         # e.g. under emulation): systemd reads the root-only file instead and puts\n\
         # DISCORD_WEBHOOK_URL in the service's environment. See WEBHOOK SECRET in\n\
         # ekos-log-monitor(8).\n\
         [Service]\n\
         EnvironmentFile={WEBHOOK_ENV}\n"
    )
}

/// The drop-in that shows the service these directories of home
/// directories, read-only. `-`: a directory that is missing (a user
/// removed) does not stop the service.
pub fn dropin_home_text(dirs: &[&Path]) -> Result<String, SetupError> {
    let mut s = String::from(
        "# Written by `ekos-log-monitor setup` (run it again to change the directories).\n\
         # Home directories are hidden from the service (and 0700); these log\n\
         # directories are shown to it, read-only. A leading \"-\": a missing\n\
         # directory does not stop the service. See READING LOGS in ekos-log-monitor(8).\n\
         [Service]\n\
         ProtectHome=tmpfs\n",
    );
    for d in dirs {
        let p = d
            .to_str()
            .ok_or_else(|| SetupError::NotUtf8(d.to_path_buf()))?;
        s += &format!("BindReadOnlyPaths={}\n", unit_word(&format!("-{p}"))?);
    }
    Ok(s)
}

fn write_if_changed(
    actions: &mut Vec<Action>,
    now: Option<&FileNow>,
    path: &str,
    (mode, uid, gid): (u32, u32, u32),
    content: String,
) {
    let same = now.is_some_and(|f| {
        f.text == content && f.mode & 0o7777 == mode && f.uid == uid && f.gid == gid
    });
    if !same {
        actions.push(Action::Write {
            path: PathBuf::from(path),
            mode,
            uid,
            gid,
            content,
        });
    }
}

/// The plan, and notes for the user (what setup removes from the config).
pub fn plan(
    answers: &Answers,
    state: &State,
    grants: &[Grant],
) -> Result<(Vec<Action>, Vec<String>), SetupError> {
    let mut actions = Vec::new();

    let old_config = state.config.as_ref().map_or("", |f| f.text.as_str());
    let want = Want {
        ekos: answers.ekos.clone(),
        scripts: answers.scripts.clone(),
    };
    let (config_text, notes) = config_edit::edit(old_config, Path::new(CONFIG), &want)?;
    // A conffile keeps its owner and mode; a new one is the package's.
    let config_owner = state
        .config
        .as_ref()
        .map_or((0o640, 0, state.service_gid), |f| {
            (f.mode & 0o7777, f.uid, f.gid)
        });
    write_if_changed(
        &mut actions,
        state.config.as_ref(),
        CONFIG,
        config_owner,
        config_text,
    );
    write_if_changed(
        &mut actions,
        state.credential.as_ref(),
        CREDENTIAL,
        (0o600, 0, 0),
        format!("{}\n", answers.webhook.url()),
    );
    if state.no_credentials {
        write_if_changed(
            &mut actions,
            state.webhook_env.as_ref(),
            WEBHOOK_ENV,
            (0o600, 0, 0),
            format!("DISCORD_WEBHOOK_URL={}\n", answers.webhook.url()),
        );
    } else if state.webhook_env.is_some() {
        actions.push(Action::Remove {
            path: PathBuf::from(WEBHOOK_ENV),
        });
    }
    let units_before = actions.len();
    write_if_changed(
        &mut actions,
        state.dropin_webhook.as_ref(),
        DROPIN_WEBHOOK,
        (0o644, 0, 0),
        if state.no_credentials {
            dropin_webhook_env_text()
        } else {
            dropin_webhook_text()
        },
    );
    let homes: Vec<&Path> = answers
        .ekos
        .iter()
        .map(|d| d.dir.as_path())
        .chain(answers.scripts.as_deref())
        .filter(|d| under_home(d))
        .collect();
    if homes.is_empty() {
        if state.dropin_home.is_some() {
            actions.push(Action::Remove {
                path: PathBuf::from(DROPIN_HOME),
            });
        }
    } else {
        write_if_changed(
            &mut actions,
            state.dropin_home.as_ref(),
            DROPIN_HOME,
            (0o644, 0, 0),
            dropin_home_text(&homes)?,
        );
    }
    let units_changed = actions.len() > units_before;
    let changed = !actions.is_empty() || !grants.is_empty();
    actions.extend(grants.iter().cloned().map(Action::Grant));
    if units_changed {
        actions.push(Action::DaemonReload);
    }
    if !answers.no_start {
        actions.push(Action::Start {
            restart: changed && state.active,
        });
    }
    Ok((actions, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://discord.com/api/webhooks/123/s3cr3t";

    fn answers(users: &[&str], scripts: Option<&str>) -> Answers {
        Answers {
            webhook: Webhook::parse(URL).unwrap(),
            ekos: users
                .iter()
                .map(|u| EkosDir {
                    user: Some(u.to_string()),
                    dir: format!("/home/{u}/.local/share/kstars/logs").into(),
                })
                .collect(),
            scripts: scripts.map(PathBuf::from),
            no_start: false,
        }
    }

    /// The state after `actions` were applied to `state`.
    fn applied(mut state: State, actions: &[Action]) -> State {
        for a in actions {
            let (path, now) = match a {
                Action::Write {
                    path,
                    mode,
                    uid,
                    gid,
                    content,
                } => (
                    path,
                    Some(FileNow {
                        text: content.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    }),
                ),
                Action::Remove { path } => (path, None),
                Action::Start { .. } => {
                    state.active = true;
                    continue;
                }
                _ => continue,
            };
            let slot = match path.to_str().unwrap() {
                CONFIG => &mut state.config,
                CREDENTIAL => &mut state.credential,
                DROPIN_WEBHOOK => &mut state.dropin_webhook,
                DROPIN_HOME => &mut state.dropin_home,
                WEBHOOK_ENV => &mut state.webhook_env,
                p => panic!("unexpected {p}"),
            };
            *slot = now;
        }
        state
    }

    fn writes(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Write { path, .. } | Action::Remove { path } => path.to_str(),
                _ => None,
            })
            .collect()
    }

    fn shipped() -> State {
        State {
            config: Some(FileNow {
                text: include_str!("../../packaging/config.toml").into(),
                mode: 0o100640,
                uid: 0,
                gid: 999,
            }),
            service_gid: 999,
            ..State::default()
        }
    }

    #[test]
    fn first_run_writes_everything_then_starts() {
        let a = answers(&["astro"], Some("/srv/service/event"));
        let grants = vec![Grant {
            path: "/srv/service/event".into(),
            tree: true,
        }];
        let (acts, _) = plan(&a, &shipped(), &grants).unwrap();
        assert_eq!(
            writes(&acts),
            vec![CONFIG, CREDENTIAL, DROPIN_WEBHOOK, DROPIN_HOME]
        );
        let cred = acts
            .iter()
            .find(|a| matches!(a, Action::Write { path, .. } if path == Path::new(CREDENTIAL)))
            .unwrap();
        assert_eq!(
            cred,
            &Action::Write {
                path: CREDENTIAL.into(),
                mode: 0o600,
                uid: 0,
                gid: 0,
                content: format!("{URL}\n"),
            }
        );
        // The conffile keeps its mode and group.
        assert!(acts.iter().any(|a| matches!(a, Action::Write { path, mode: 0o640, gid: 999, .. } if path == Path::new(CONFIG))));
        assert_eq!(
            &acts[4..],
            &[
                Action::Grant(grants[0].clone()),
                Action::DaemonReload,
                Action::Start { restart: false }
            ]
        );
    }

    #[test]
    fn without_credentials_the_webhook_goes_through_a_root_only_environment_file() {
        let a = answers(&["astro"], None);
        let state = State {
            no_credentials: true,
            ..shipped()
        };
        let (acts, _) = plan(&a, &state, &[]).unwrap();
        assert_eq!(
            writes(&acts),
            vec![CONFIG, CREDENTIAL, WEBHOOK_ENV, DROPIN_WEBHOOK, DROPIN_HOME]
        );
        assert!(acts.contains(&Action::Write {
            path: WEBHOOK_ENV.into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            content: format!("DISCORD_WEBHOOK_URL={URL}\n"),
        }));
        let dropin = acts.iter().find_map(|a| match a {
            Action::Write { path, content, .. } if path == Path::new(DROPIN_WEBHOOK) => {
                Some(content)
            }
            _ => None,
        });
        let dropin = dropin.unwrap();
        assert!(dropin.contains("\nEnvironmentFile=/etc/ekos-log-monitor/webhook.env\n"));
        assert!(!dropin.contains("LoadCredential=") && !dropin.contains(URL));
        // Idempotent; and where credentials work again, back to them.
        let after = applied(state, &acts);
        let (again, _) = plan(&a, &after, &[]).unwrap();
        assert_eq!(again, vec![Action::Start { restart: false }]);
        let healed = State {
            no_credentials: false,
            ..after
        };
        let (acts, _) = plan(&a, &healed, &[]).unwrap();
        assert!(acts.contains(&Action::Remove {
            path: WEBHOOK_ENV.into()
        }));
        assert_eq!(writes(&acts), vec![WEBHOOK_ENV, DROPIN_WEBHOOK]);
    }

    #[test]
    fn same_answers_again_change_nothing_and_restart_nothing() {
        let a = answers(&["astro", "bob"], Some("/srv/service/event"));
        let (acts, _) = plan(&a, &shipped(), &[]).unwrap();
        let after = applied(shipped(), &acts);
        let (again, _) = plan(&a, &after, &[]).unwrap();
        assert_eq!(again, vec![Action::Start { restart: false }]);
    }

    #[test]
    fn a_changed_answer_rewrites_only_its_files_and_restarts() {
        let (acts, _) = plan(&answers(&["astro"], None), &shipped(), &[]).unwrap();
        let after = applied(shipped(), &acts);
        // Scripts outside /home: only the config changes, the units do not.
        let (acts, _) = plan(
            &answers(&["astro"], Some("/srv/service/event")),
            &after,
            &[],
        )
        .unwrap();
        assert_eq!(writes(&acts), vec![CONFIG]);
        assert_eq!(acts.last(), Some(&Action::Start { restart: true }));
        assert!(!acts.contains(&Action::DaemonReload));
    }

    #[test]
    fn no_home_directory_left_removes_the_bind_drop_in() {
        let (acts, _) = plan(&answers(&["astro"], None), &shipped(), &[]).unwrap();
        let after = applied(shipped(), &acts);
        let (acts, _) = plan(&answers(&[], Some("/srv/service/event")), &after, &[]).unwrap();
        assert!(acts.contains(&Action::Remove {
            path: DROPIN_HOME.into()
        }));
        assert!(acts.contains(&Action::DaemonReload));
    }

    #[test]
    fn no_start_skips_systemctl_start() {
        let mut a = answers(&["astro"], None);
        a.no_start = true;
        let (acts, _) = plan(&a, &shipped(), &[]).unwrap();
        assert!(!acts.iter().any(|a| matches!(a, Action::Start { .. })));
    }

    #[test]
    fn the_bind_drop_in_has_one_optional_path_per_directory() {
        let t = dropin_home_text(&[
            Path::new("/home/astro/.local/share/kstars/logs"),
            Path::new("/home/bob smith/50%/logs"),
        ])
        .unwrap();
        assert!(t.contains("\n[Service]\nProtectHome=tmpfs\n"));
        assert!(t.contains("\nBindReadOnlyPaths=-/home/astro/.local/share/kstars/logs\n"));
        assert!(t.contains("\nBindReadOnlyPaths=\"-/home/bob smith/50%%/logs\"\n"));
        assert!(unit_word("/home/a\"b").is_err());
        assert!(dropin_webhook_text().ends_with(
            "[Service]\nLoadCredential=discord-webhook:/etc/ekos-log-monitor/webhook\n"
        ));
    }

    #[test]
    fn which_directories_need_a_bind() {
        assert!(under_home(Path::new("/home/astro/x")));
        assert!(under_home(Path::new("/root/.local/share/kstars/logs")));
        assert!(!under_home(Path::new("/srv/service/event")));
        assert!(!under_home(Path::new("/homes/x")));
    }
}
