//! `ekos-log-monitor setup`: from `apt install` to the first message on
//! Discord without editing a file.
//!
//! It asks (or takes from options, with `--yes` never asking) the webhook
//! URL, which KStars log directories to follow and whether to follow the
//! script-log tree; checks every answer (the webhook's syntax, then one test
//! message through the real client); and only then writes, each file
//! atomically: the webhook as a root-only credential file with its
//! `LoadCredential=` drop-in, a `BindReadOnlyPaths=` drop-in for logs in
//! home directories, the configuration (editing only what setup manages),
//! and ACLs where the service user could not read a tree. Then it enables
//! and starts (or restarts) the service and shows its status. A run with
//! the same answers changes nothing; a bad answer changes nothing.
//!
//! The decisions are pure and tested on their own ([`plan`],
//! [`config_edit`], [`users::discover`], [`access::permits`]); this file
//! gathers the answers and [`apply`] carries the plan out.

pub mod access;
pub mod apply;
pub mod config_edit;
pub mod plan;
pub mod prompt;
pub mod users;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::discord::{Client, Outcome, Sink};
use crate::webhook::{Webhook, WebhookError};
use plan::{
    Action, Answers, CONFIG, CREDENTIAL, DROPIN_HOME, DROPIN_WEBHOOK, FileNow, Grant,
    SCRIPTS_DEFAULT, SERVICE_USER, State, UNIT, WEBHOOK_ENV,
};
use prompt::Prompter;
use users::{EkosDir, PwEntry};

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read the webhook URL from the first line of this file (`-`: standard
    /// input) instead of asking.
    pub webhook_file: Option<PathBuf>,
    /// Follow the KStars logs of these users (instead of asking).
    pub ekos_users: Vec<String>,
    /// Follow this script-log tree.
    pub scripts: Option<PathBuf>,
    /// Do not follow a script-log tree (removes the one setup added).
    pub no_scripts: bool,
    /// Ask nothing: options, else the current settings, else the defaults.
    pub yes: bool,
    /// Write the files but neither enable nor start the service.
    pub no_start: bool,
    /// Tests only (hidden option `--root DIR`): treat DIR as `/` for every
    /// file read or written, do not require root, and print the systemctl
    /// commands instead of running them. ACLs are granted for real, on the
    /// files under DIR.
    pub root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("must run as root: sudo ekos-log-monitor setup")]
    NotRoot,
    #[error(
        "this system was not booted with systemd (no /run/systemd/system): the service needs it (a container or WSL without systemd cannot run it)"
    )]
    NoSystemd,
    #[error("--scripts and --no-scripts contradict each other")]
    ScriptsConflict,
    #[error(
        "the service user {SERVICE_USER} does not exist: install the package first (apt install ./ekos-log-monitor_<version>_<arch>.deb)"
    )]
    NoServiceUser,
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error(
        "user {user} has no KStars logs directory ({dir}): run KStars once as {user}, or leave out --ekos-user {user}"
    )]
    NoKstarsLogs { user: String, dir: PathBuf },
    #[error("script logs directory {0}: not a directory")]
    ScriptsDir(PathBuf),
    #[error(
        "nothing to follow: no KStars logs directory and no script logs chosen (KStars creates ~/.local/share/kstars/logs when it first starts)"
    )]
    NothingToFollow,
    #[error("{key}: {source}")]
    Webhook {
        key: String,
        #[source]
        source: WebhookError,
    },
    #[error("cannot read the webhook file {path}: {source}")]
    WebhookFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no webhook configured: give one with --webhook-file FILE (the URL on its first line), or run without --yes"
    )]
    NoWebhook,
    #[error("{0}")]
    TestMessage(String),
    #[error("config file {path} is not valid TOML: {message}; fix it, then run setup again")]
    ConfigSyntax { path: PathBuf, message: String },
    #[error("cannot edit {path}: {what}")]
    ConfigShape { path: PathBuf, what: String },
    #[error("the new configuration would not load: {0}")]
    NewConfig(crate::config::ConfigError),
    #[error("path {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error(
        "path {0:?} cannot be written in a unit file (quotes, backslashes or control characters)"
    )]
    UnitPath(String),
    #[error(
        "the service user cannot read {0}, and setfacl, needed to let it, is missing: apt install acl"
    )]
    NoSetfacl(PathBuf),
    #[error("bad answer: {0}")]
    Answer(String),
    #[error("no answer (end of input): for a run without questions use --yes with options")]
    EndOfInput,
    #[error("cancelled: nothing was changed")]
    Cancelled,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {why}")]
    Command { what: String, why: String },
    #[error("the service did not start: see journalctl -u ekos-log-monitor")]
    StartFailed,
}

/// The machine setup works on: `/`, or a test's directory standing for it.
#[derive(Debug, Clone)]
pub struct Sys {
    root: Option<PathBuf>,
}

impl Sys {
    pub fn new(root: Option<PathBuf>) -> Sys {
        Sys { root }
    }

    /// Whether this is a test's directory rather than the real system.
    pub fn test_root(&self) -> bool {
        self.root.is_some()
    }

    /// Where an absolute path of the machine is on this one.
    pub fn path(&self, abs: &Path) -> PathBuf {
        match &self.root {
            Some(r) => r.join(abs.strip_prefix("/").unwrap_or(abs)),
            None => abs.to_path_buf(),
        }
    }

    fn passwd(&self) -> Vec<PwEntry> {
        std::fs::read_to_string(self.path(Path::new("/etc/passwd")))
            .map(|t| users::parse_passwd(&t))
            .unwrap_or_default()
    }

    /// A user from the system's databases (NSS: LDAP and the like), for a
    /// name not in /etc/passwd. Never under a test root.
    fn getpwnam(&self, name: &str) -> Option<PwEntry> {
        if self.test_root() {
            return None;
        }
        let c = std::ffi::CString::new(name).ok()?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the sizes given; on success
        // `out` points to `pw`, whose strings live in `buf`.
        let rc =
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 || out.is_null() {
            return None;
        }
        // SAFETY: pw_name and pw_dir are NUL-terminated strings in buf.
        let (n, home) = unsafe {
            (
                std::ffi::CStr::from_ptr(pw.pw_name),
                std::ffi::CStr::from_ptr(pw.pw_dir),
            )
        };
        Some(PwEntry {
            name: n.to_string_lossy().into_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            home: PathBuf::from(home.to_string_lossy().into_owned()),
        })
    }

    fn read_file(&self, abs: &str) -> Result<Option<FileNow>, SetupError> {
        use std::os::unix::fs::MetadataExt;
        let p = self.path(Path::new(abs));
        match std::fs::read(&p) {
            Ok(bytes) => {
                let m = std::fs::metadata(&p).map_err(|source| SetupError::Io {
                    what: format!("cannot read {}", p.display()),
                    source,
                })?;
                Ok(Some(FileNow {
                    text: String::from_utf8(bytes).map_err(|_| SetupError::NotUtf8(p.clone()))?,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SetupError::Io {
                what: format!("cannot read {}", p.display()),
                source,
            }),
        }
    }
}

/// Runs `setup`; errors are one line on stderr and exit status 1.
pub fn run(opts: Options) -> ExitCode {
    match run_inner(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekos-log-monitor setup: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(opts: &Options) -> Result<(), SetupError> {
    let sys = Sys::new(opts.root.clone());
    // SAFETY: geteuid has no preconditions.
    if !sys.test_root() && unsafe { libc::geteuid() } != 0 {
        return Err(SetupError::NotRoot);
    }
    if !sys.path(Path::new("/run/systemd/system")).is_dir() {
        return Err(SetupError::NoSystemd);
    }
    if opts.no_scripts && opts.scripts.is_some() {
        return Err(SetupError::ScriptsConflict);
    }
    let passwd = sys.passwd();
    let svc = passwd
        .iter()
        .find(|p| p.name == SERVICE_USER)
        .cloned()
        .or_else(|| sys.getpwnam(SERVICE_USER))
        .ok_or(SetupError::NoServiceUser)?;

    let mut state = State {
        config: sys.read_file(CONFIG)?,
        credential: sys.read_file(CREDENTIAL)?,
        dropin_webhook: sys.read_file(DROPIN_WEBHOOK)?,
        dropin_home: sys.read_file(DROPIN_HOME)?,
        webhook_env: sys.read_file(WEBHOOK_ENV)?,
        no_credentials: !apply::credentials_work(&sys),
        service_gid: svc.gid,
        active: false,
    };
    let current = match &state.config {
        Some(f) => config_edit::read(&f.text, Path::new(CONFIG))?,
        None => config_edit::Managed::default(),
    };
    // Setup ran before when its credential file exists: then the current
    // settings are the defaults, even where they are "none".
    let configured = state.credential.is_some();
    let current_webhook = state
        .credential
        .as_ref()
        .and_then(|f| f.text.lines().next().map(str::to_string))
        .or(current.webhook.clone())
        .and_then(|u| Webhook::parse(&u).ok());

    // Before the prompter takes standard input: `--webhook-file -` reads it.
    let from_file = match &opts.webhook_file {
        Some(f) => Some(webhook_from_file(f)?),
        None => None,
    };
    let interactive = !opts.yes;
    if interactive {
        prompt::install_interrupt_handler();
    }
    let stdin = std::io::stdin();
    // SAFETY: isatty has no preconditions.
    let terminal = unsafe { libc::isatty(0) } == 1;
    let mut p = Prompter::new(stdin.lock(), std::io::stdout(), terminal);

    // 1. The webhook.
    let (webhook, new_webhook) = match from_file {
        Some(w) => (w, true),
        None if !interactive => (current_webhook.clone().ok_or(SetupError::NoWebhook)?, false),
        None => ask_webhook(&mut p, current_webhook.as_ref())?,
    };

    // 2. KStars logs.
    let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| u != "root");
    let found = users::discover(&sys, &passwd, sudo_user.as_deref());
    let ekos = if !opts.ekos_users.is_empty() {
        let mut v: Vec<EkosDir> = Vec::new();
        for u in &opts.ekos_users {
            let d = users::dir_of_user(&sys, &passwd, u)?;
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    } else {
        let default: Vec<EkosDir> = if configured || !current.ekos.is_empty() {
            current
                .ekos
                .iter()
                .map(|d| EkosDir {
                    user: users::owner_of(&passwd, &found, d),
                    dir: d.clone(),
                })
                .collect()
        } else {
            found.clone()
        };
        if interactive {
            ask_ekos(&mut p, &found, default)?
        } else {
            default
        }
    };

    // 3. Script logs.
    let scripts_default_dir = PathBuf::from(SCRIPTS_DEFAULT);
    let scripts = if opts.no_scripts {
        None
    } else if let Some(d) = &opts.scripts {
        Some(d.clone())
    } else {
        let default = if configured || current.scripts.is_some() {
            current.scripts.clone()
        } else {
            Some(scripts_default_dir.clone()).filter(|d| sys.path(d).is_dir())
        };
        let offer = default
            .clone()
            .or(Some(scripts_default_dir).filter(|d| sys.path(d).is_dir()));
        match offer {
            Some(d) if interactive => p
                .yes_no(
                    &format!("Follow the script logs in {}?", d.display()),
                    default.is_some(),
                )?
                .then_some(d),
            _ => default,
        }
    };
    if let Some(d) = &scripts
        && (!d.is_absolute() || !sys.path(d).is_dir())
    {
        return Err(SetupError::ScriptsDir(d.clone()));
    }
    if ekos.is_empty() && scripts.is_none() {
        return Err(SetupError::NothingToFollow);
    }

    // 4. What the service user cannot read yet.
    let dirs: Vec<PathBuf> = ekos
        .iter()
        .map(|d| d.dir.clone())
        .chain(scripts.clone())
        .collect();
    let grants = grants_needed(&sys, &dirs, svc.uid, svc.gid)?;
    if let Some(g) = grants.first()
        && !apply::have("setfacl")
    {
        return Err(SetupError::NoSetfacl(g.path.clone()));
    }

    // 5. The test message, once every local answer is valid.
    if new_webhook {
        test_message(&mut p, &webhook)?;
    }

    // 6. The plan.
    state.active = apply::is_active(&sys);
    let answers = Answers {
        webhook: webhook.clone(),
        ekos,
        scripts,
        no_start: opts.no_start,
    };
    let (actions, mut notes) = plan::plan(&answers, &state, &grants)?;
    if state.no_credentials {
        notes.push(format!(
            "This system's systemd cannot pass credentials to services (an emulated machine?): \
             the webhook goes through EnvironmentFile={WEBHOOK_ENV} (root only) instead."
        ));
    }
    show_plan(&mut p, &answers, &actions, &notes);
    if interactive
        && actions.iter().any(|a| !matches!(a, Action::Start { .. }))
        && !p.yes_no("Apply?", true)?
    {
        return Err(SetupError::Cancelled);
    }
    drop(p);

    // 7. Apply.
    apply::write_files(&sys, &actions, &webhook)?;
    for a in &actions {
        if let Action::Grant(g) = a {
            apply::grant(&sys, g, svc.uid)?;
        }
    }
    let still = grants_needed(&sys, &dirs, svc.uid, svc.gid)?;
    for g in &still {
        println!(
            "warning: the service user still cannot read {} (does its file system support ACLs?)",
            g.path.display()
        );
    }
    let cfg = apply::load_config(&sys.path(Path::new(CONFIG)), &webhook)?;
    println!("Configuration OK; the service will follow:");
    apply::show_check(&sys, &cfg);

    if actions.contains(&Action::DaemonReload) {
        apply::systemctl(&sys, &["daemon-reload"])?;
    }
    match actions.iter().find_map(|a| match a {
        Action::Start { restart } => Some(*restart),
        _ => None,
    }) {
        None => {
            println!(
                "Not started (--no-start): systemctl enable --now {UNIT}{}",
                if state.active {
                    " (it runs: systemctl restart it to use the new settings)"
                } else {
                    ""
                }
            );
        }
        Some(restart) => {
            apply::systemctl(&sys, &["enable", "--quiet", UNIT])?;
            let started =
                apply::systemctl(&sys, &[if restart { "restart" } else { "start" }, UNIT]);
            for l in apply::status_lines(&sys) {
                println!("  {l}");
            }
            if let Err(e) = started {
                eprintln!("ekos-log-monitor setup: {e}");
                return Err(SetupError::StartFailed);
            }
            println!("Done. Follow it with: journalctl -u ekos-log-monitor -f");
        }
    }
    Ok(())
}

fn webhook_from_file(f: &Path) -> Result<Webhook, SetupError> {
    let text = if f == Path::new("-") {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|source| SetupError::WebhookFile {
                path: f.to_path_buf(),
                source,
            })?;
        line
    } else {
        // Named on the command line: a path of this machine, not of the
        // test root.
        std::fs::read_to_string(f).map_err(|source| SetupError::WebhookFile {
            path: f.to_path_buf(),
            source,
        })?
    };
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Webhook::parse(first).map_err(|source| SetupError::Webhook {
        key: format!("DISCORD_WEBHOOK_URL_FILE ({})", f.display()),
        source,
    })
}

fn ask_webhook<R: BufRead, W: Write>(
    p: &mut Prompter<R, W>,
    current: Option<&Webhook>,
) -> Result<(Webhook, bool), SetupError> {
    if let Some(w) = current
        && p.yes_no(&format!("Keep the current webhook {w}?"), true)?
    {
        return Ok((w.clone(), false));
    }
    p.say(
        "Paste the Discord webhook URL (Server Settings > Integrations > Webhooks > Copy Webhook URL).",
    );
    let raw = p.hidden("Webhook URL (not shown): ")?;
    let w = Webhook::parse(&raw).map_err(|source| SetupError::Webhook {
        key: "DISCORD_WEBHOOK_URL".into(),
        source,
    })?;
    Ok((w, true))
}

fn ask_ekos<R: BufRead, W: Write>(
    p: &mut Prompter<R, W>,
    found: &[EkosDir],
    default: Vec<EkosDir>,
) -> Result<Vec<EkosDir>, SetupError> {
    let mut list: Vec<EkosDir> = found.to_vec();
    for d in &default {
        if !list.iter().any(|f| f.dir == d.dir) {
            list.push(d.clone());
        }
    }
    if list.is_empty() {
        p.say("No KStars logs directory found (KStars creates ~/.local/share/kstars/logs when it first starts).");
        return Ok(Vec::new());
    }
    p.say("KStars log directories:");
    for (i, d) in list.iter().enumerate() {
        let mark = if default.iter().any(|x| x.dir == d.dir) {
            "  [followed]"
        } else {
            ""
        };
        p.say(&format!(
            "  {}) {:<12} {}{mark}",
            i + 1,
            d.user.as_deref().unwrap_or("?"),
            d.dir.display()
        ));
    }
    let default_idx: Vec<String> = list
        .iter()
        .enumerate()
        .filter(|(_, d)| default.iter().any(|x| x.dir == d.dir))
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let shown = if default_idx.is_empty() {
        "none".to_string()
    } else {
        default_idx.join(" ")
    };
    let a = p.ask(&format!(
        "Follow which? (numbers separated by spaces, or none) [{shown}] "
    ))?;
    Ok(match prompt::parse_selection(&a, list.len())? {
        None => default,
        Some(idx) => idx.into_iter().map(|i| list[i].clone()).collect(),
    })
}

/// Directories the service user needs an ACL for: trees it cannot read,
/// and, outside home directories (which the service sees through a bind
/// mount), parent directories it cannot pass through.
fn grants_needed(
    sys: &Sys,
    dirs: &[PathBuf],
    uid: u32,
    gid: u32,
) -> Result<Vec<Grant>, SetupError> {
    let mut grants: Vec<Grant> = Vec::new();
    let gids = [gid];
    for dir in dirs {
        let phys = sys.path(dir);
        if !phys.is_dir() {
            // Bound with "-": followed when it appears.
            continue;
        }
        if !plan::under_home(dir) {
            for a in dir
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if a == Path::new("/") {
                    continue;
                }
                let ok = access::may(&sys.path(a), uid, &gids, access::X).unwrap_or(false);
                let g = Grant {
                    path: a.to_path_buf(),
                    tree: false,
                };
                if !ok && !grants.contains(&g) {
                    grants.push(g);
                }
            }
        }
        let unreadable =
            access::first_unreadable(&phys, uid, &gids).map_err(|source| SetupError::Io {
                what: format!("cannot read {}", dir.display()),
                source,
            })?;
        if unreadable.is_some() {
            grants.push(Grant {
                path: dir.to_path_buf(),
                tree: true,
            });
        }
    }
    Ok(grants)
}

/// Posts one short message and shows what Discord answered.
fn test_message<R: BufRead, W: Write>(
    p: &mut Prompter<R, W>,
    webhook: &Webhook,
) -> Result<(), SetupError> {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".into());
    let text = format!(
        "ekos-log-monitor {} set up on {host}: log lines will be posted here",
        env!("CARGO_PKG_VERSION")
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "content": text,
        "allowed_mentions": {"parse": []},
    }))
    .expect("json");
    let payload = crate::format::Payload {
        content_type: "application/json".into(),
        printable: body.clone(),
        body,
    };
    p.say(&format!("Posting a test message to {webhook}..."));
    let mut client = Client::new(webhook.clone());
    let outcome = client.post(&payload, Duration::from_secs(15));
    let fail = |s: String| Err(SetupError::TestMessage(webhook.redact(&s)));
    match outcome {
        Outcome::Delivered(_) => {
            p.say("Discord accepted the test message.");
            Ok(())
        }
        // The webhook exists; it is only busy.
        Outcome::RateLimited { wait, .. } => {
            p.say(&format!(
                "Discord rate-limited the test message (retry in {:.1} s): the webhook exists.",
                wait.as_secs_f64()
            ));
            Ok(())
        }
        Outcome::Retry { why } => fail(format!(
            "could not reach Discord with the test message: {why}"
        )),
        Outcome::Rejected { status, why } => fail(format!(
            "Discord rejected the test message (HTTP {status}): {why}"
        )),
        Outcome::Stop { status, why } => fail(format!(
            "Discord refuses messages to this webhook (HTTP {status}: {why}): check that the URL was copied whole and the webhook was not deleted"
        )),
        // Only edits and thread posts get this answer; a plain post never does.
        Outcome::Gone { why, .. } => fail(format!(
            "Discord answered the test message as if it were an edit: {why}"
        )),
    }
}

fn show_plan<R: BufRead, W: Write>(
    p: &mut Prompter<R, W>,
    answers: &Answers,
    actions: &[Action],
    notes: &[String],
) {
    p.say(&format!("Webhook: {}", answers.webhook));
    if answers.ekos.is_empty() {
        p.say("KStars logs: none");
    }
    for d in &answers.ekos {
        p.say(&format!("KStars logs: {}", d.dir.display()));
    }
    p.say(&format!(
        "Script logs: {}",
        answers
            .scripts
            .as_ref()
            .map_or("none".to_string(), |d| d.display().to_string())
    ));
    for n in notes {
        p.say(&format!("Note: {n}"));
    }
    let changes: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Write { path, mode, .. } => {
                Some(format!("write {} (mode {mode:04o})", path.display()))
            }
            Action::Remove { path } => Some(format!("remove {}", path.display())),
            Action::Grant(g) => Some(apply::describe_grant(g)),
            _ => None,
        })
        .collect();
    if changes.is_empty() {
        p.say("Nothing to change.");
    } else {
        p.say("Changes:");
        for c in changes {
            p.say(&format!("  {c}"));
        }
    }
}
