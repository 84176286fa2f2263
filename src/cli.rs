//! The command line, defined once.
//!
//! [`Cli`] is the single definition of every command and option: clap
//! derives the parser and `--help` from it, and the man page's SYNOPSIS,
//! COMMANDS and OPTIONS sections and the bash and zsh completions shipped in
//! the package are generated from it too (see the tests at the bottom, which
//! fail when a committed file no longer matches this definition and rewrite
//! it with `EKOS_REGENERATE=1`). An option parsed but missing from `--help`
//! or from the man page can therefore no longer happen.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Follow Ekos (KStars) and script log files and post their new lines to a
/// Discord channel through a webhook.
#[derive(Debug, Parser)]
#[command(
    name = "ekos-log-monitor",
    version,
    disable_help_subcommand = true,
    after_help = "See ekos-log-monitor(8) and ekos-log-monitor.toml(5)."
)]
pub struct Cli {
    /// Read the configuration from FILE.
    ///
    /// Without this option, /etc/ekos-log-monitor/config.toml is read if it
    /// exists. Environment variables override the file's keys.
    #[arg(short = 'c', long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Print each request body as one JSON line on standard output instead of
    /// posting it; needs no webhook.
    ///
    /// Checkpoints are not saved. For a file attachment, the line is the
    /// message's payload_json plus a "files" array with each attached file's
    /// name and size. Copies for the alerts webhook are printed too, like any
    /// other request.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Print what a whole existing log file would post, then exit; implies
    /// --dry-run.
    ///
    /// The typical use is to tune [[rule]] tables and filters against last
    /// night's log. Nothing is posted, no webhook is needed, no checkpoint is
    /// read or written. Every line of LOGFILE goes through the filters, the
    /// events mode and the rules of the first source (the Ekos source if there
    /// is one, else the first [[source]]), then the messages are packed as a
    /// backlog would be (as many lines as fit in each message, events as
    /// embeds with their mentions, a flood as an attachment), and each request
    /// body is printed as one JSON line. The copies for alerts_webhook_url are
    /// not shown. Exits 1 if LOGFILE cannot be read.
    #[arg(long, value_name = "LOGFILE")]
    pub replay: Option<PathBuf>,

    /// With --replay: print the end-of-night summary card of each night in
    /// LOGFILE instead of what it would post.
    ///
    /// Each summary is one JSON line, the message body the daemon would post
    /// (one embed: frames and exposure per target and filter, autofocus runs,
    /// plate solves, guiding aborts and star losses, meridian flips, driver
    /// crashes, silences, first and last frame). Each line's own timestamp is
    /// taken as its arrival time, so a silence is a gap between timestamps
    /// longer than the session explains; nights follow night_start and
    /// night_end. For checking the numbers of a past night.
    #[arg(long, requires = "replay")]
    pub night_card: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; `run` when no command is given.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Follow the logs and post new lines (the default).
    ///
    /// Stays in the foreground; logs to the journal when started by systemd,
    /// to standard error otherwise. SIGHUP re-reads the configuration;
    /// SIGTERM and SIGINT stop cleanly.
    Run,
    /// Validate the configuration, print the effective settings and which
    /// files would be followed.
    ///
    /// The webhook token is never shown. Exits 0 if the configuration is
    /// usable, 1 otherwise.
    Check,
    /// Post one short test message to each configured webhook and report
    /// Discord's answer.
    ///
    /// Exits 1 if a post failed.
    TestWebhook,
    /// Set the service up: webhook, logs to follow, permissions, start.
    ///
    /// Run as root. Asks for the webhook URL (hidden input) and checks it by
    /// posting a test message, finds the KStars log directories of the
    /// machine's users and the script logs under /srv/service/event, then
    /// writes the webhook as a root-only credential with its systemd drop-in,
    /// the drop-in that shows the log directories to the sandboxed service,
    /// the configuration and any ACL the service user needs; runs check,
    /// enables and starts the service and prints its status. Run again, it
    /// offers the current settings as defaults. Nothing is changed until every
    /// answer is valid. With --yes it asks nothing.
    Setup(SetupArgs),
}

/// The options of `setup`; each one answers a question it would ask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct SetupArgs {
    /// Read the webhook URL from the first line of FILE (- for standard
    /// input) instead of asking.
    #[arg(long, value_name = "FILE")]
    pub webhook_file: Option<PathBuf>,

    /// Follow the KStars logs of USER (~USER/.local/share/kstars/logs);
    /// repeat for several users.
    #[arg(long = "ekos-user", value_name = "USER")]
    pub ekos_users: Vec<String>,

    /// Also follow the script logs under DIR (every **/*.log).
    #[arg(long, value_name = "DIR", conflicts_with = "no_scripts")]
    pub scripts: Option<PathBuf>,

    /// Follow no script logs.
    #[arg(long)]
    pub no_scripts: bool,

    /// Ask nothing: take the options given and the current settings, and fail
    /// when an answer is missing.
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Write the settings but do not enable nor start the service.
    #[arg(long)]
    pub no_start: bool,

    /// Tests only: treat DIR as / for every file read or written, do not
    /// require root, print the systemctl commands instead of running them.
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

impl From<SetupArgs> for crate::setup::Options {
    fn from(a: SetupArgs) -> Self {
        crate::setup::Options {
            webhook_file: a.webhook_file,
            ekos_users: a.ekos_users,
            scripts: a.scripts,
            no_scripts: a.no_scripts,
            yes: a.yes,
            no_start: a.no_start,
            root: a.root,
        }
    }
}

impl Cli {
    /// Parses the process's arguments; on a usage error prints it and exits
    /// 2, on `--help` or `--version` prints them and exits 0.
    pub fn from_env() -> Cli {
        Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name), with the rules clap
    /// cannot express in the derive.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, Parser};
        let cli = Cli::try_parse_from(args)?;
        if cli.replay.is_some() && cli.command.is_some() {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--replay prints what a file would post and takes no command",
            ));
        }
        Ok(cli)
    }

    /// The command to run: `run` when none was given.
    pub fn effective_command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }
}

#[cfg(test)]
mod docs;
