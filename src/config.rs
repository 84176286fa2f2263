//! Configuration: the prototype's environment variables, a TOML file and
//! systemd credentials, validated into one typed [`Config`].
//!
//! Loading happens in two stages. First the raw layers are merged with the
//! `config` crate: the TOML file at the bottom, then a `.env` file in the
//! working directory (parsed by `dotenvy`), then the process environment on
//! top. Every TOML key is
//! the prototype's environment variable in lower case (`BATCH_SIZE` is
//! `batch_size`), so one name serves both. Second, [`Config::from_layers`]
//! checks every value and turns it into a typed field; the first bad value
//! stops loading with one message that names the key, the value and what is
//! expected. Relative paths resolve against the config file's directory, so a
//! test can point everything at a temporary directory.
//!
//! Error messages never carry a secret: the configuration holds webhook URLs
//! whose path is a credential, and these messages go to the terminal, the
//! journal and (after a failed reload, in short) `STATUS=`, which any local
//! user can read. A TOML syntax error is reported by file, line, column and
//! key, without the source line the TOML library quotes; values quoted in
//! other errors go through [`redact_secrets`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ekos::{Filter, FilterSpec, RuleError, RuleSpec, Rules};
use crate::format::EventMode;
use crate::webhook::{Webhook, WebhookError, redact_secrets};

/// Where the packaged service keeps its configuration.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ekos-log-monitor/config.toml";
/// The name of the systemd credential that may hold the webhook URL.
pub const CREDENTIAL_NAME: &str = "discord-webhook";

/// Every scalar key, as an environment variable (the TOML key is the same
/// name in lower case). The order is the order `check` prints them in.
pub const ENV_KEYS: &[&str] = &[
    "DISCORD_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL_FILE",
    "EKOS_LOGS_DIRECTORY",
    "EKOS_LOG_PATTERNS",
    "START_AT",
    "LOG_LEVEL",
    "RATE_LIMIT_DELAY",
    "BATCH_SIZE",
    "BATCH_TIMEOUT",
    "FILE_CHECK_INTERVAL",
    "MAX_RETRIES",
    "STATE_DIRECTORY",
    "EVENTS",
    "MIN_LEVEL",
    "ALERTS_WEBHOOK_URL",
    "ALERTS_MIN_SEVERITY",
    "ALERTS_FORUM",
    "ATTACHMENT_THRESHOLD",
    "SILENCE_AFTER",
    "INCIDENT_WINDOW",
    "CONTEXT_LINES",
    "HEARTBEAT_URL",
    "HEARTBEAT_INTERVAL",
    "NIGHT_START",
    "NIGHT_END",
    "NIGHT_CARD",
    "FORUM",
];

/// Keys that may appear in the TOML file besides the scalar ones.
const TABLE_KEYS: &[&str] = &["source", "rule", "expect"];

/// Keys of a `[[source]]` table.
const SOURCE_KEYS: &[&str] = &[
    "name",
    "root",
    "include",
    "exclude",
    "follow",
    "start_at",
    "discord_webhook_url",
    "forum",
    "events",
    "min_level",
    "include_regex",
    "exclude_regex",
    "modules",
    "drop_modules",
];

/// Keys of a `[[rule]]` table.
const RULE_KEYS: &[&str] = &["name", "pattern", "severity", "title", "mention", "module"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key} = {value:?}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error("unknown key `{key}` in {path} (known keys: {known})")]
    UnknownKey {
        key: String,
        path: PathBuf,
        known: String,
    },
    #[error("{key}: {source}")]
    Webhook {
        key: String,
        #[source]
        source: WebhookError,
    },
    #[error("cannot read {key} file {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "DISCORD_WEBHOOK_URL is not set: set it in the environment, in {file} (discord_webhook_url), in a file named by DISCORD_WEBHOOK_URL_FILE or as the systemd credential `discord-webhook`, or use --dry-run"
    )]
    NoWebhook { file: String },
    #[error("{key}: {source}")]
    Rule {
        key: String,
        #[source]
        source: RuleError,
    },
    #[error("logs directory {path} does not exist (key {key})")]
    MissingRoot { key: String, path: PathBuf },
    #[error("{path}: {problem}")]
    Dotenv {
        path: PathBuf,
        problem: DotenvProblem,
    },
}

/// A bad value. Everything quoted is scrubbed: a value may be a webhook URL
/// pasted into the wrong key, and `expected` may quote a library's message.
fn invalid(key: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: redact_secrets(key),
        value: redact_secrets(&value.to_string()),
        expected: redact_secrets(expected),
    }
}

/// Longest description of a syntax error kept from the TOML library.
const SYNTAX_MESSAGE_MAX: usize = 200;

/// One line for a TOML syntax error: `line L, column C, key `k`: what is
/// wrong`, from the TOML library's message (which draws the offending source
/// line over several lines) and the file's text. No source text is kept:
/// the key is named only when it is one of ours, the library's own words
/// are scrubbed and capped.
fn syntax_message(error: &str, text: &str) -> String {
    // The snippet the library draws: `  |`, `2 | a = "...`, `  |   ^^^`.
    let is_snippet = |l: &str| {
        let t = l
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        t.trim_start().starts_with('|')
    };
    let position = error.lines().next().and_then(|first| {
        let rest = &first[first.find("line ")? + "line ".len()..];
        let (line, rest) = rest.split_once(',')?;
        let col = rest.trim_start().strip_prefix("column ")?;
        let col: String = col.chars().take_while(char::is_ascii_digit).collect();
        Some((
            line.trim().parse::<usize>().ok()?,
            col.parse::<usize>().ok()?,
        ))
    });
    let what: Vec<&str> = error
        .lines()
        .skip(usize::from(position.is_some()))
        .filter(|l| !is_snippet(l) && !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut what = redact_secrets(&what.join("; "));
    if what.is_empty() {
        what = "syntax error".into();
    }
    if what.chars().count() > SYNTAX_MESSAGE_MAX {
        what = what.chars().take(SYNTAX_MESSAGE_MAX).collect::<String>() + "...";
    }
    match position {
        Some((line, col)) => {
            let key = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(known_key_of_line)
                .map(|k| format!(", key `{k}`"))
                .unwrap_or_default();
            format!("line {line}, column {col}{key}: {what}")
        }
        None => what,
    }
}

/// The key a TOML line sets (`key = ...`) or the table it opens
/// (`[[source]]`), if it is one this program knows: a name we print cannot
/// be a secret the user wrote.
fn known_key_of_line(line: &str) -> Option<String> {
    let t = line.trim();
    let name = match t.strip_prefix('[') {
        Some(h) => h.trim_start_matches('[').split(']').next()?,
        None => t.split('=').next()?,
    };
    let name = name.trim().trim_matches(['"', '\'']);
    ENV_KEYS
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .chain(
            TABLE_KEYS
                .iter()
                .chain(SOURCE_KEYS)
                .chain(RULE_KEYS)
                .chain(crate::nightwatch::expect::KEYS)
                .map(|k| k.to_string()),
        )
        .find(|k| k == name)
}

/// Whether a file that exists when the daemon first sees it is read from its
/// first line or only for what is appended from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// `newest` follows only the most recently modified matching file (Ekos
/// writes one file per KStars start); `all` follows every matching file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Newest,
    All,
}

/// One tree of log files and how to follow it.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub root: PathBuf,
    pub include: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
    pub follow: Follow,
    pub start_at: StartAt,
    /// Index into [`Config::webhooks`]; `None` only in dry-run mode.
    pub route: usize,
    /// Which key set `root`, for messages such as a missing directory.
    pub root_key: String,
    /// Which lines are posted at all.
    pub filter: Filter,
    /// Whether notable lines become embeds, and whether others are posted.
    pub events: EventMode,
}

impl Source {
    /// Whether a path relative to the root is one of this source's files.
    /// A pattern without `/` matches the file name at any depth (so the
    /// prototype's `*.log` keeps working), one with `/` the whole path.
    pub fn matches(&self, rel: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let name = rel.file_name().map(Path::new).unwrap_or(rel);
        let hit = |p: &glob::Pattern| {
            if p.as_str().contains('/') {
                p.matches_path_with(rel, opts)
            } else {
                p.matches_path_with(name, opts)
            }
        };
        self.include.iter().any(hit) && !self.exclude.iter().any(hit)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TOML file that was read, if any.
    pub file: Option<PathBuf>,
    /// Distinct destinations; sources refer to them by index. Empty only in
    /// dry-run mode without any webhook configured.
    pub webhooks: Vec<Webhook>,
    /// Per webhook (same index): whether it posts into a forum channel,
    /// each night in its own post (`forum`, see [`crate::sender::forum`]).
    pub forums: Vec<bool>,
    pub log_level: log::LevelFilter,
    pub rate_limit_delay: Duration,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub file_check_interval: Duration,
    pub max_retries: u32,
    pub state_dir: PathBuf,
    pub sources: Vec<Source>,
    /// A second destination for events of `alerts_min_severity` and above:
    /// (index into `webhooks`, threshold).
    pub alerts: Option<(usize, crate::ekos::Severity)>,
    /// Post a burst as one attached file when more than this many lines
    /// wait (0: never); `None` (the default, `auto`): when posting what
    /// waits would take more than about a minute (see `batch::Fold`).
    pub attachment_threshold: Option<usize>,
    /// Event rules (built-in and `[[rule]]` tables).
    pub rules: std::sync::Arc<Rules>,
    /// Night watch: how long the Ekos log may be quiet during work.
    pub silence_after: crate::nightwatch::silence::Threshold,
    /// Night watch: repeats of a rule this close are one incident (0: off).
    pub incident_window: Duration,
    /// Night watch: lines before an error attached to its alert (0: none).
    pub context_lines: usize,
    /// `heartbeat_url` and `heartbeat_interval` (see [`crate::heartbeat`]).
    pub heartbeat: Option<crate::heartbeat::Settings>,
    /// `[[expect]]` tables (see [`crate::nightwatch::expect`]).
    pub expect: Vec<crate::nightwatch::expect::Expectation>,
    /// `night_start` and `night_end` (see [`crate::nightwatch::card`]).
    pub night: crate::nightwatch::card::NightSettings,
    /// `night_card`: whether the night card is posted.
    pub night_card: bool,
    /// Effective values as strings, secrets redacted, for `check`.
    pub effective: BTreeMap<String, String>,
}

/// A `[[source]]` table as written in the TOML file.
#[derive(Debug, Deserialize)]
struct RawSource {
    name: Option<String>,
    root: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    follow: Option<String>,
    start_at: Option<String>,
    discord_webhook_url: Option<String>,
    forum: Option<config::Value>,
    events: Option<String>,
    #[serde(flatten)]
    filter: FilterSpec,
}

/// The inputs of configuration loading, gathered so tests can supply them.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// `--config FILE`; when `None`, [`DEFAULT_CONFIG_FILE`] is used if it exists.
    pub config_file: Option<PathBuf>,
    /// The process environment (with the `.env` file merged under it).
    pub env: HashMap<String, String>,
    /// Whether posting is replaced by printing: a webhook is then optional.
    pub dry_run: bool,
    /// A `.env` file that could not be used: [`Config::load`] reports it
    /// (with the file's path) instead of starting without its settings.
    pub dotenv: Option<(PathBuf, DotenvProblem)>,
}

impl Inputs {
    /// The real process environment, with `.env` from the working directory
    /// merged under it as the prototype did (the environment wins).
    pub fn from_process(config_file: Option<PathBuf>, dry_run: bool) -> Inputs {
        let mut env: HashMap<String, String> = std::env::vars().collect();
        let path = Path::new(".env");
        let parsed = match std::fs::read_to_string(path) {
            Ok(text) => parse_dotenv(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(DotenvProblem::Read(e.kind())),
        };
        let mut dotenv = None;
        match parsed {
            Ok(vars) => {
                for (k, v) in vars {
                    env.entry(k).or_insert(v);
                }
            }
            Err(p) => dotenv = Some((std::path::absolute(path).unwrap_or(path.into()), p)),
        }
        Inputs {
            config_file,
            env,
            dry_run,
            dotenv,
        }
    }
}

/// Why a `.env` file was not used. The offending line is named by number
/// only: it may hold a webhook URL, whose path is a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotenvProblem {
    /// This line (counted from 1) does not parse as `KEY=VALUE`; for a quote
    /// never closed, the line where the value starts.
    Line(usize),
    /// The file exists but cannot be read (or is not UTF-8).
    Read(std::io::ErrorKind),
}

impl fmt::Display for DotenvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DotenvProblem::Line(n) => write!(
                f,
                "line {n} is not KEY=VALUE (quote a value that holds spaces, close every quote; the line is not shown as it may hold a secret)"
            ),
            DotenvProblem::Read(kind) => write!(f, "cannot be read: {kind}"),
        }
    }
}

/// Parses a `.env` file with `dotenvy`, the common conventions: `#`
/// comments, blank lines, `export ` prefixes, single quotes (literal),
/// double quotes (escapes, may span lines), `$VAR`/`${VAR}` substitution
/// (from the process environment, then earlier lines), and ` # comment`
/// after an unquoted value. The first key given wins. A line that does not
/// parse is an error naming its number, never its text (dotenvy's own
/// error quotes the line).
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvProblem> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = LineByLine {
        rest: text.as_bytes(),
        lines: lines.clone(),
    };
    let mut out = Vec::new();
    for item in dotenvy::from_read_iter(reader) {
        match item {
            Ok(kv) => out.push(kv),
            Err(dotenvy::Error::LineParse(entry, _)) => {
                // `lines` is the last line read; an entry spanning lines
                // (an open quote) started that many lines earlier.
                let spans = entry.trim_end_matches(['\n', '\r']).matches('\n').count();
                return Err(DotenvProblem::Line(
                    lines.get().saturating_sub(spans).max(1),
                ));
            }
            // Reading from memory: no I/O error; dotenvy has no other
            // error while iterating, but keep the line number if it grows one.
            Err(_) => return Err(DotenvProblem::Line(lines.get().max(1))),
        }
    }
    Ok(out)
}

/// Hands `dotenvy` (through its `BufReader`) at most one line per read,
/// counting them, so the number of lines read when an entry fails is the
/// line the entry ends on.
struct LineByLine<'a> {
    rest: &'a [u8],
    lines: std::rc::Rc<std::cell::Cell<usize>>,
}

impl std::io::Read for LineByLine<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let line = memchr::memchr(b'\n', self.rest).map_or(self.rest.len(), |i| i + 1);
        let n = line.min(buf.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        if n > 0 && n == line {
            self.lines.set(self.lines.get() + 1);
        }
        Ok(n)
    }
}

/// The merged raw layers, with typed accessors that report bad values.
struct Layers {
    cfg: config::Config,
    base: PathBuf,
}

impl Layers {
    fn get(&self, key: &str) -> Option<String> {
        self.cfg.get_string(&key.to_ascii_lowercase()).ok()
    }

    fn number<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| invalid(key, v, expected)),
        }
    }

    fn seconds(&self, key: &str, default: f64, min: f64) -> Result<Duration, ConfigError> {
        let expected = if min > 0.0 {
            format!("a number of seconds greater than or equal to {min}")
        } else {
            "a number of seconds, 0 or more (e.g. 1.5)".to_string()
        };
        let secs: f64 = self.number(key, default, &expected)?;
        if !secs.is_finite() || secs < min || secs > 86_400.0 {
            return Err(invalid(key, self.get(key).unwrap_or_default(), &expected));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// The `[[key]]` tables of the file (none if absent); `keys` lists the
    /// keys a table may hold, for the error message.
    fn tables<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        keys: &str,
    ) -> Result<Vec<T>, ConfigError> {
        match self.cfg.get::<Vec<T>>(key) {
            Ok(v) => Ok(v),
            Err(config::ConfigError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(invalid(
                key,
                format!("[[{key}]]"),
                &format!("tables with keys {keys} ({e})"),
            )),
        }
    }

    /// A list from TOML (an array) or from the environment (comma separated).
    fn list(&self, key: &str) -> Option<Vec<String>> {
        let k = key.to_ascii_lowercase();
        if let Ok(arr) = self.cfg.get_array(&k) {
            return Some(
                arr.into_iter()
                    .filter_map(|v| v.into_string().ok())
                    .collect(),
            );
        }
        self.get(key).map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
    }

    fn path(&self, raw: &str, env: &HashMap<String, String>) -> PathBuf {
        let expanded = expand_home(raw, env);
        if expanded.is_absolute() {
            expanded
        } else {
            self.base.join(expanded)
        }
    }
}

fn expand_home(raw: &str, env: &HashMap<String, String>) -> PathBuf {
    let home = env.get("HOME").map(String::as_str).unwrap_or("/");
    if raw == "~" {
        PathBuf::from(home)
    } else if let Some(rest) = raw.strip_prefix("~/") {
        Path::new(home).join(rest)
    } else {
        PathBuf::from(raw)
    }
}

fn parse_start_at(key: &str, v: &str) -> Result<StartAt, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "end" => Ok(StartAt::End),
        "beginning" | "start" => Ok(StartAt::Beginning),
        _ => Err(invalid(key, v, "\"end\" or \"beginning\"")),
    }
}

fn parse_follow(key: &str, v: &str) -> Result<Follow, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "newest" => Ok(Follow::Newest),
        "all" => Ok(Follow::All),
        _ => Err(invalid(key, v, "\"newest\" or \"all\"")),
    }
}

fn parse_events(key: &str, v: &str) -> Result<EventMode, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(EventMode::On),
        "off" | "false" | "no" => Ok(EventMode::Off),
        "only" => Ok(EventMode::Only),
        _ => Err(invalid(
            key,
            v,
            "\"on\" (events as embeds), \"off\" (plain lines) or \"only\" (events only)",
        )),
    }
}

fn build_filter(key: &str, spec: &FilterSpec) -> Result<Filter, ConfigError> {
    Filter::new(spec).map_err(|source| ConfigError::Rule {
        key: key.to_string(),
        source,
    })
}

fn parse_level(v: &str) -> Result<log::LevelFilter, ConfigError> {
    Ok(match v.trim().to_ascii_uppercase().as_str() {
        "TRACE" => log::LevelFilter::Trace,
        "DEBUG" => log::LevelFilter::Debug,
        "INFO" => log::LevelFilter::Info,
        "WARNING" | "WARN" => log::LevelFilter::Warn,
        "ERROR" | "CRITICAL" => log::LevelFilter::Error,
        _ => {
            return Err(invalid(
                "LOG_LEVEL",
                v,
                "one of DEBUG, INFO, WARNING, ERROR",
            ));
        }
    })
}

fn patterns(key: &str, raw: &[String]) -> Result<Vec<glob::Pattern>, ConfigError> {
    raw.iter()
        .map(|p| {
            glob::Pattern::new(p)
                .map_err(|e| invalid(key, p, &format!("a glob pattern ({})", e.msg)))
        })
        .collect()
}

impl Config {
    /// Loads and validates the configuration from its inputs.
    pub fn load(inputs: &Inputs) -> Result<Config, ConfigError> {
        if let Some((path, problem)) = &inputs.dotenv {
            return Err(ConfigError::Dotenv {
                path: path.clone(),
                problem: *problem,
            });
        }
        let file = match &inputs.config_file {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut builder = config::Config::builder();
        let mut base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // Kept to name the key of a syntax error's line.
        let mut text = String::new();
        if let Some(path) = &file {
            text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            }
        }
        for key in ENV_KEYS {
            if let Some(v) = inputs.env.get(*key) {
                builder = builder
                    .set_override(key.to_ascii_lowercase(), v.clone())
                    .expect("a plain key is a valid config path");
            }
        }
        let cfg = builder.build().map_err(|e| ConfigError::Syntax {
            path: file.clone().unwrap_or_default(),
            message: syntax_message(&e.to_string(), &text),
        })?;
        if let Some(path) = &file {
            check_unknown_keys(&cfg, path)?;
        }
        Config::from_layers(Layers { cfg, base }, inputs, file)
    }

    fn from_layers(
        l: Layers,
        inputs: &Inputs,
        file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let env = &inputs.env;
        let mut effective = BTreeMap::new();

        let log_level = parse_level(&l.get("LOG_LEVEL").unwrap_or_else(|| "INFO".into()))?;
        let rate_limit_delay = l.seconds("RATE_LIMIT_DELAY", 1.0, 0.0)?;
        let batch_size: usize = l.number("BATCH_SIZE", 10, "a whole number of lines, 1 or more")?;
        if batch_size == 0 {
            return Err(invalid(
                "BATCH_SIZE",
                0,
                "a whole number of lines, 1 or more",
            ));
        }
        let batch_timeout = l.seconds("BATCH_TIMEOUT", 30.0, 0.0)?;
        let file_check_interval = l.seconds("FILE_CHECK_INTERVAL", 60.0, 0.1)?;
        let max_retries: u32 =
            l.number("MAX_RETRIES", 3, "a whole number of attempts, 0 or more")?;
        let start_at = match l.get("START_AT") {
            Some(v) => parse_start_at("START_AT", &v)?,
            None => StartAt::End,
        };

        // systemd's StateDirectory= sets $STATE_DIRECTORY, which is already
        // the top layer; without it, a per-user directory like other tools.
        let state_dir = match l.get("STATE_DIRECTORY") {
            Some(v) if !v.trim().is_empty() => {
                // systemd may pass several colon-separated directories.
                let first = v.split(':').next().unwrap_or(&v).to_string();
                l.path(&first, env)
            }
            _ => match env.get("XDG_STATE_HOME") {
                Some(x) if !x.is_empty() => Path::new(x).join("ekos-log-monitor"),
                _ => expand_home("~/.local/state/ekos-log-monitor", env),
            },
        };

        // The default destination.
        let mut webhooks: Vec<Webhook> = Vec::new();
        // Without one, each source needs its own (checked in `route_for`).
        let default_webhook = webhook_from_layers(&l, env)?;

        let rule_specs: Vec<RuleSpec> = l.tables("rule", &RULE_KEYS.join(", "))?;
        let rules = std::sync::Arc::new(Rules::with_user(&rule_specs).map_err(|source| {
            ConfigError::Rule {
                key: "rule".into(),
                source,
            }
        })?);
        let events = match l.get("EVENTS") {
            Some(v) => parse_events("EVENTS", &v)?,
            None => EventMode::On,
        };
        let global_filter = FilterSpec {
            min_level: l.get("MIN_LEVEL"),
            ..FilterSpec::default()
        };

        // Filter keys are flattened into the table, which serde cannot
        // combine with deny_unknown_fields: check names by hand, so a typo
        // (or a global key written below a [[source]] header) is reported.
        if let Ok(tables) = l.cfg.get::<Vec<HashMap<String, config::Value>>>("source") {
            for (n, t) in tables.iter().enumerate() {
                let mut keys: Vec<&String> = t.keys().collect();
                keys.sort();
                if let Some(k) = keys
                    .into_iter()
                    .find(|k| !SOURCE_KEYS.contains(&k.as_str()))
                {
                    return Err(invalid(
                        &format!("source[{}].{k}", n + 1),
                        k,
                        &format!(
                            "one of the [[source]] keys: {} (global keys go above the first [[source]] table)",
                            SOURCE_KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
        let raw_sources: Vec<RawSource> = l.tables("source", &SOURCE_KEYS.join(", "))?;

        let mut sources = Vec::new();
        let ekos_explicit = l.get("EKOS_LOGS_DIRECTORY").is_some();
        let pattern_list = l
            .list("EKOS_LOG_PATTERNS")
            .unwrap_or_else(|| vec!["log_*.txt".into(), "*.log".into()]);
        if pattern_list.is_empty() {
            return Err(invalid(
                "EKOS_LOG_PATTERNS",
                "",
                "at least one glob pattern, e.g. log_*.txt,*.log",
            ));
        }
        let default_forum = match l.get("FORUM") {
            None => false,
            Some(v) => parse_flag("FORUM", &v)?,
        };
        let mut forums: Vec<bool> = Vec::new();
        let mut route_for =
            |w: Option<Webhook>, forum: Option<(String, bool)>| -> Result<usize, ConfigError> {
                let forum = forum.map_or(("FORUM".to_string(), default_forum), |f| f);
                let w = match w.or_else(|| default_webhook.clone()) {
                    Some(w) => w,
                    None if inputs.dry_run => Webhook::dry_run(),
                    None => {
                        return Err(ConfigError::NoWebhook {
                            file: file
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string()),
                        });
                    }
                };
                Ok(match webhooks.iter().position(|x| x.url() == w.url()) {
                    // One webhook is one channel: forum or not, whoever names it.
                    Some(i) if forums[i] != forum.1 => {
                        return Err(invalid(
                            &forum.0,
                            forum.1.to_string(),
                            &format!(
                                "{} like the other sources posting to the same webhook",
                                forums[i]
                            ),
                        ));
                    }
                    Some(i) => i,
                    None => {
                        webhooks.push(w);
                        forums.push(forum.1);
                        webhooks.len() - 1
                    }
                })
            };

        if ekos_explicit || raw_sources.is_empty() {
            let root_raw = l
                .get("EKOS_LOGS_DIRECTORY")
                .unwrap_or_else(|| "~/.local/share/kstars/logs".to_string());
            if root_raw.trim().is_empty() {
                return Err(invalid("EKOS_LOGS_DIRECTORY", "", "a directory path"));
            }
            sources.push(Source {
                name: "ekos".to_string(),
                root: l.path(root_raw.trim(), env),
                include: patterns("EKOS_LOG_PATTERNS", &pattern_list)?,
                exclude: Vec::new(),
                follow: Follow::Newest,
                start_at,
                route: route_for(None, None)?,
                root_key: "EKOS_LOGS_DIRECTORY".to_string(),
                filter: build_filter("MIN_LEVEL", &global_filter)?,
                events,
            });
        }
        for (i, rs) in raw_sources.into_iter().enumerate() {
            let name = rs
                .name
                .clone()
                .unwrap_or_else(|| format!("source{}", i + 1));
            let key = |k: &str| format!("source[{}].{}", name, k);
            if sources.iter().any(|s: &Source| s.name == name) {
                return Err(invalid(
                    &key("name"),
                    &name,
                    "a name not used by another source",
                ));
            }
            if rs.root.trim().is_empty() {
                return Err(invalid(&key("root"), "", "a directory path"));
            }
            let include = if rs.include.is_empty() {
                vec!["*.log".to_string()]
            } else {
                rs.include.clone()
            };
            let webhook = match &rs.discord_webhook_url {
                Some(u) => Some(Webhook::parse(u).map_err(|source| ConfigError::Webhook {
                    key: key("discord_webhook_url"),
                    source,
                })?),
                None => None,
            };
            let forum = match &rs.forum {
                None => None,
                Some(v) => {
                    let text = v.clone().into_string().unwrap_or_default();
                    let on = parse_flag(&key("forum"), &text)?;
                    if webhook.is_none() {
                        return Err(invalid(
                            &key("forum"),
                            &text,
                            "no forum key in a [[source]] table without its own discord_webhook_url (set forum at the top for the main webhook)",
                        ));
                    }
                    Some((key("forum"), on))
                }
            };
            sources.push(Source {
                include: patterns(&key("include"), &include)?,
                exclude: patterns(&key("exclude"), &rs.exclude)?,
                follow: match &rs.follow {
                    Some(f) => parse_follow(&key("follow"), f)?,
                    None => Follow::All,
                },
                start_at: match &rs.start_at {
                    Some(s) => parse_start_at(&key("start_at"), s)?,
                    None => start_at,
                },
                root: l.path(rs.root.trim(), env),
                route: route_for(webhook, forum)?,
                root_key: key("root"),
                filter: {
                    let mut spec = rs.filter.clone();
                    if spec.min_level.is_none() {
                        spec.min_level = global_filter.min_level.clone();
                    }
                    build_filter(&key("filter"), &spec)?
                },
                events: match &rs.events {
                    Some(v) => parse_events(&key("events"), v)?,
                    None => events,
                },
                name,
            });
        }

        let attachment_threshold: Option<usize> = match l.get("ATTACHMENT_THRESHOLD") {
            Some(v) if !v.trim().eq_ignore_ascii_case("auto") => Some(l.number(
                "ATTACHMENT_THRESHOLD",
                0,
                "auto, or a whole number of lines (0 turns attachments off)",
            )?),
            _ => None,
        };
        let alerts_min = match l.get("ALERTS_MIN_SEVERITY") {
            None => crate::ekos::Severity::Error,
            Some(v) => crate::ekos::Severity::parse(&v).ok_or_else(|| {
                invalid(
                    "ALERTS_MIN_SEVERITY",
                    &v,
                    "one of info, success, warning, error, critical",
                )
            })?,
        };
        let alerts = match l.get("ALERTS_WEBHOOK_URL").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(u) => {
                let w = Webhook::parse(&u).map_err(|source| ConfigError::Webhook {
                    key: "ALERTS_WEBHOOK_URL".into(),
                    source,
                })?;
                if webhooks.iter().any(|x| x.url() == w.url()) {
                    return Err(invalid(
                        "ALERTS_WEBHOOK_URL",
                        w.to_string(),
                        "a webhook other than the one(s) receiving the log lines (events would be posted twice)",
                    ));
                }
                webhooks.push(w);
                forums.push(match l.get("ALERTS_FORUM") {
                    None => false,
                    Some(v) => parse_flag("ALERTS_FORUM", &v)?,
                });
                Some((webhooks.len() - 1, alerts_min))
            }
        };
        effective.insert(
            "ATTACHMENT_THRESHOLD".into(),
            attachment_threshold.map_or("auto".into(), |n| n.to_string()),
        );
        effective.insert("EVENTS".into(), format!("{events:?}").to_ascii_lowercase());
        effective.insert(
            "MIN_LEVEL".into(),
            global_filter
                .min_level
                .clone()
                .unwrap_or_else(|| "(everything)".into()),
        );
        effective.insert(
            "RULES".into(),
            format!(
                "{} rules, {} of them from [[rule]] tables",
                rules.describe().len(),
                rule_specs.len()
            ),
        );
        if let Some((i, min)) = alerts {
            effective.insert("ALERTS_WEBHOOK_URL".into(), webhooks[i].to_string());
            effective.insert("ALERTS_MIN_SEVERITY".into(), min.to_string());
            effective.insert("ALERTS_FORUM".into(), forums[i].to_string());
        }
        let heartbeat_interval = l.seconds("HEARTBEAT_INTERVAL", 300.0, 1.0)?;
        let heartbeat = match l.get("HEARTBEAT_URL").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(u) => Some(
                crate::heartbeat::Settings::new(&u, heartbeat_interval).map_err(|_| {
                    invalid(
                        "HEARTBEAT_URL",
                        crate::heartbeat::redact(&u),
                        "an http:// or https:// URL with a host (a push monitor's ping URL)",
                    )
                })?,
            ),
        };
        // Shown set or not, so `check` tells the dead-man's switch is off.
        effective.insert(
            "HEARTBEAT_URL".into(),
            heartbeat
                .as_ref()
                .map_or_else(|| "(none: no heartbeat is sent)".to_string(), |h| h.shown()),
        );
        effective.insert(
            "HEARTBEAT_INTERVAL".into(),
            format!("{}", heartbeat_interval.as_secs_f64()),
        );
        let expect_specs: Vec<crate::nightwatch::expect::Spec> =
            l.tables("expect", &crate::nightwatch::expect::KEYS.join(", "))?;
        let expect = crate::nightwatch::expect::from_specs(&expect_specs, &l.base).map_err(
            |crate::nightwatch::expect::ExpectError::Invalid {
                 key,
                 value,
                 expected,
             }| { invalid(&key, value, &expected) },
        )?;
        for (i, e) in expect.iter().enumerate() {
            effective.insert(
                format!("EXPECT[{}]", i + 1),
                crate::nightwatch::expect::describe(e),
            );
        }
        let time_of_day = |key: &str| -> Result<Option<crate::localtime::TimeOfDay>, ConfigError> {
            match l.get(key).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => crate::localtime::TimeOfDay::parse(&v)
                    .map(Some)
                    .map_err(|_| {
                        invalid(key, &v, "a local time of day as \"HH:MM\", e.g. \"12:00\"")
                    }),
            }
        };
        let night = crate::nightwatch::card::NightSettings {
            start: time_of_day("NIGHT_START")?.unwrap_or(crate::localtime::TimeOfDay(12 * 3600)),
            end: time_of_day("NIGHT_END")?,
        };
        effective.insert("NIGHT_START".into(), night.start.to_string());
        let night_card = match l.get("NIGHT_CARD") {
            None => true,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" => true,
                "off" | "false" | "no" => false,
                _ => {
                    return Err(invalid(
                        "NIGHT_CARD",
                        &v,
                        "\"on\" (a card per night, the default) or \"off\"",
                    ));
                }
            },
        };
        effective.insert(
            "NIGHT_CARD".into(),
            if night_card { "on" } else { "off" }.into(),
        );
        effective.insert(
            "NIGHT_END".into(),
            night
                .end
                .map_or("(none: the log and night_start end a night)".into(), |e| {
                    e.to_string()
                }),
        );
        effective.insert("LOG_LEVEL".into(), log_level.to_string());
        effective.insert(
            "RATE_LIMIT_DELAY".into(),
            format!("{}", rate_limit_delay.as_secs_f64()),
        );
        effective.insert("BATCH_SIZE".into(), batch_size.to_string());
        effective.insert(
            "BATCH_TIMEOUT".into(),
            format!("{}", batch_timeout.as_secs_f64()),
        );
        effective.insert(
            "FILE_CHECK_INTERVAL".into(),
            format!("{}", file_check_interval.as_secs_f64()),
        );
        effective.insert("MAX_RETRIES".into(), max_retries.to_string());
        let (silence_after, incident_window, context_lines) = night_watch(&l, &mut effective)?;
        effective.insert("STATE_DIRECTORY".into(), state_dir.display().to_string());
        effective.insert(
            "FORUM".into(),
            match forums.iter().filter(|f| **f).count() {
                0 => "false".into(),
                n if n == forums.len() => "true".into(),
                n => format!("true for {n} of {} webhooks", forums.len()),
            },
        );
        effective.insert(
            "DISCORD_WEBHOOK_URL".into(),
            webhooks
                .first()
                .map(|w| w.to_string())
                .unwrap_or_else(|| "(none: dry run)".into()),
        );

        Ok(Config {
            file,
            webhooks,
            forums,
            log_level,
            rate_limit_delay,
            batch_size,
            batch_timeout,
            file_check_interval,
            max_retries,
            state_dir,
            sources,
            alerts,
            attachment_threshold,
            rules,
            silence_after,
            incident_window,
            context_lines,
            heartbeat,
            expect,
            night,
            night_card,
            effective,
        })
    }
}

/// The night watch's keys: `SILENCE_AFTER` is `auto` (what the session's
/// work explains), seconds, or 0 (off); `INCIDENT_WINDOW` seconds (0:
/// off); `CONTEXT_LINES` a count (0: no attachment).
fn night_watch(
    l: &Layers,
    effective: &mut BTreeMap<String, String>,
) -> Result<(crate::nightwatch::silence::Threshold, Duration, usize), ConfigError> {
    use crate::nightwatch::silence::Threshold;
    let silence = match l.get("SILENCE_AFTER") {
        Some(v) if !v.trim().eq_ignore_ascii_case("auto") => {
            let d = l.seconds("SILENCE_AFTER", 0.0, 0.0).map_err(|_| {
                invalid(
                    "SILENCE_AFTER",
                    &v,
                    "auto, or a number of seconds (0 turns the silence alarm off)",
                )
            })?;
            if d.is_zero() {
                Threshold::Off
            } else {
                Threshold::After(d)
            }
        }
        _ => Threshold::Auto,
    };
    let window = l.seconds("INCIDENT_WINDOW", 600.0, 0.0)?;
    let context: usize = l.number(
        "CONTEXT_LINES",
        30,
        "a whole number of lines from 0 to 1000",
    )?;
    if context > 1000 {
        return Err(invalid(
            "CONTEXT_LINES",
            context,
            "a whole number of lines from 0 to 1000",
        ));
    }
    effective.insert(
        "SILENCE_AFTER".into(),
        match silence {
            Threshold::Auto => "auto".into(),
            Threshold::Off => "0 (off)".into(),
            Threshold::After(d) => format!("{}", d.as_secs_f64()),
        },
    );
    effective.insert(
        "INCIDENT_WINDOW".into(),
        match window.as_secs_f64() {
            0.0 => "0 (off)".into(),
            w => format!("{w}"),
        },
    );
    effective.insert("CONTEXT_LINES".into(), context.to_string());
    Ok((silence, window, context))
}

/// Finds the default webhook: the URL itself (file or environment), else a
/// file named by `DISCORD_WEBHOOK_URL_FILE`, else the systemd credential.
/// `true` or `false` (TOML booleans, or the words in the environment).
fn parse_flag(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(invalid(key, v, "true or false")),
    }
}

fn webhook_from_layers(
    l: &Layers,
    env: &HashMap<String, String>,
) -> Result<Option<Webhook>, ConfigError> {
    let parse = |key: &str, v: &str| {
        Webhook::parse(v.trim())
            .map(Some)
            .map_err(|source| ConfigError::Webhook {
                key: key.to_string(),
                source,
            })
    };
    if let Some(v) = l
        .get("DISCORD_WEBHOOK_URL")
        .filter(|v| !v.trim().is_empty())
    {
        return parse("DISCORD_WEBHOOK_URL", &v);
    }
    if let Some(p) = l
        .get("DISCORD_WEBHOOK_URL_FILE")
        .filter(|v| !v.trim().is_empty())
    {
        let path = l.path(p.trim(), env);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
            key: "DISCORD_WEBHOOK_URL_FILE".into(),
            path: path.clone(),
            source,
        })?;
        return parse(
            &format!("DISCORD_WEBHOOK_URL_FILE ({})", path.display()),
            &text,
        );
    }
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(dir).join(CREDENTIAL_NAME);
        if let Ok(text) = std::fs::read_to_string(&path) {
            return parse("credential discord-webhook", &text);
        }
    }
    Ok(None)
}

fn check_unknown_keys(cfg: &config::Config, path: &Path) -> Result<(), ConfigError> {
    let table: HashMap<String, config::Value> = match cfg.clone().try_deserialize() {
        Ok(t) => t,
        Err(_) => return Ok(()),
    };
    let known: Vec<String> = ENV_KEYS
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .chain(TABLE_KEYS.iter().map(|k| k.to_string()))
        .collect();
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    for key in keys {
        if !known.iter().any(|k| k == key) {
            return Err(ConfigError::UnknownKey {
                key: redact_secrets(key),
                path: path.to_path_buf(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let config_file = toml.map(|t| {
            let p = dir.path().join("config.toml");
            std::fs::write(&p, t).unwrap();
            p
        });
        let mut envmap: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        envmap
            .entry("HOME".into())
            .or_insert_with(|| "/home/astro".into());
        Config::load(&Inputs {
            config_file,
            env: envmap,
            dry_run: false,
            dotenv: None,
        })
    }

    const URL: &str = "https://discord.com/api/webhooks/123/tok-en";

    #[test]
    fn night_watch_keys_have_defaults_off_switches_and_one_line_errors() {
        use crate::nightwatch::silence::Threshold;
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert_eq!(c.silence_after, Threshold::Auto);
        assert_eq!(c.incident_window, Duration::from_secs(600));
        assert_eq!(c.context_lines, 30);
        assert_eq!(c.effective["SILENCE_AFTER"], "auto");
        let c = load(
            None,
            &[
                ("DISCORD_WEBHOOK_URL", URL),
                ("SILENCE_AFTER", "90"),
                ("INCIDENT_WINDOW", "0"),
                ("CONTEXT_LINES", "0"),
            ],
        )
        .unwrap();
        assert_eq!(c.silence_after, Threshold::After(Duration::from_secs(90)));
        assert_eq!(c.incident_window, Duration::ZERO);
        assert_eq!(c.effective["INCIDENT_WINDOW"], "0 (off)");
        let off = load(
            None,
            &[("DISCORD_WEBHOOK_URL", URL), ("SILENCE_AFTER", "0")],
        );
        assert_eq!(off.unwrap().silence_after, Threshold::Off);
        for (k, v, want) in [
            ("SILENCE_AFTER", "soon", "auto, or a number of seconds"),
            ("INCIDENT_WINDOW", "-1", "a number of seconds"),
            ("CONTEXT_LINES", "5000", "from 0 to 1000"),
        ] {
            let e = load(None, &[("DISCORD_WEBHOOK_URL", URL), (k, v)])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{k} = \"{v}\"")) && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn prototype_defaults() {
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.batch_timeout, Duration::from_secs(30));
        assert_eq!(c.rate_limit_delay, Duration::from_secs(1));
        assert_eq!(c.file_check_interval, Duration::from_secs(60));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.sources.len(), 1);
        assert_eq!(
            c.sources[0].root,
            PathBuf::from("/home/astro/.local/share/kstars/logs")
        );
        assert!(c.sources[0].matches(Path::new("2024-01-15/log_21-00-00.txt")));
        assert!(c.sources[0].matches(Path::new("2024-01-15/ekos.log")));
        assert!(!c.sources[0].matches(Path::new("2024-01-15/notes.txt")));
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            Some("batch_size = 5\nbatch_timeout = 2.5\n"),
            &[("DISCORD_WEBHOOK_URL", URL), ("BATCH_SIZE", "7")],
        )
        .unwrap();
        assert_eq!(c.batch_size, 7);
        assert_eq!(c.batch_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_values_name_key_value_and_expectation() {
        let e = load(None, &[("DISCORD_WEBHOOK_URL", URL), ("BATCH_SIZE", "ten")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "BATCH_SIZE = \"ten\": expected a whole number of lines, 1 or more"
        );
        let e = load(
            None,
            &[("DISCORD_WEBHOOK_URL", URL), ("BATCH_TIMEOUT", "-1")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("BATCH_TIMEOUT = \"-1\": expected a number of seconds"),
            "{e}"
        );
        let e = load(Some("batch_sise = 3\n"), &[("DISCORD_WEBHOOK_URL", URL)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown key `batch_sise`"), "{e}");
    }

    #[test]
    fn attachment_threshold_is_auto_unless_a_number() {
        let t = |v: Option<&str>| {
            let mut env = vec![("DISCORD_WEBHOOK_URL", URL)];
            env.extend(v.map(|v| ("ATTACHMENT_THRESHOLD", v)));
            load(None, &env).map(|c| c.attachment_threshold)
        };
        assert_eq!(t(None).unwrap(), None);
        assert_eq!(t(Some("auto")).unwrap(), None);
        assert_eq!(t(Some("0")).unwrap(), Some(0));
        assert_eq!(t(Some("200")).unwrap(), Some(200));
        assert!(t(Some("lots")).is_err());
    }

    #[test]
    fn heartbeat_keys() {
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert!(c.heartbeat.is_none());
        assert_eq!(c.effective["HEARTBEAT_URL"], "(none: no heartbeat is sent)");
        assert_eq!(c.effective["HEARTBEAT_INTERVAL"], "300");
        let hc = "https://hc-ping.com/0f1e2d3c-aaaa-bbbb-cccc-123456789abc";
        let c = load(
            Some(&format!(
                "heartbeat_url = \"{hc}\"\nheartbeat_interval = 60\n"
            )),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        let h = c.heartbeat.unwrap();
        assert_eq!((h.url(), h.interval), (hc, Duration::from_secs(60)));
        assert_eq!(c.effective["HEARTBEAT_URL"], "https://hc-ping.com/****");
        let e = load(
            None,
            &[
                ("DISCORD_WEBHOOK_URL", URL),
                ("HEARTBEAT_URL", "hc-ping.com/0f1e2d3c-aaaa"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("HEARTBEAT_URL = "), "{e}");
        assert!(!e.contains("0f1e2d3c") && !e.contains('\n'), "{e}");
        let e = load(
            None,
            &[("DISCORD_WEBHOOK_URL", URL), ("HEARTBEAT_INTERVAL", "0")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("HEARTBEAT_INTERVAL = \"0\": expected"), "{e}");
    }

    #[test]
    fn expect_tables() {
        let c = load(
            Some(
                "[[expect]]\nfile = \"backup.log\"\npattern = \"completed\"\nby = \"04:30\"\nweekdays = [\"mon\", \"tue\"]\n",
            ),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        assert_eq!(c.expect.len(), 1);
        assert_eq!(
            c.effective["EXPECT[1]"],
            "backup.log: 'completed' in backup.log by 04:30 (mon, tue)"
        );
        let e = load(
            Some("[[expect]]\nfile = \"b.log\"\npattern = \"x\"\nby = \"25:00\"\n"),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "expect[1].by = \"25:00\": expected a local time of day as \"HH:MM\", e.g. \"04:30\""
        );
        let e = load(
            Some("[[expect]]\nfile = \"b.log\"\npattern = \"x\"\nby = \"04:00\"\nwhen = 1\n"),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("expect = \"[[expect]]\": expected tables with keys name, file"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn forum_keys() {
        const OTHER: &str = "https://discord.com/api/webhooks/456/other-tok";
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert_eq!(c.forums, vec![false]);
        assert_eq!(c.effective["FORUM"], "false");
        let c = load(Some("forum = true\n"), &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert_eq!(c.forums, vec![true]);
        assert_eq!(c.effective["FORUM"], "true");
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL), ("FORUM", "true")]).unwrap();
        assert_eq!(c.forums, vec![true]);
        // A source with its own webhook says for it; the main one is apart.
        let toml = format!(
            "[[source]]\nroot = \"/a\"\n[[source]]\nroot = \"/b\"\ndiscord_webhook_url = \"{OTHER}\"\nforum = true\n"
        );
        let c = load(Some(&toml), &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        let forum_of = |i: usize| c.forums[c.sources[i].route];
        assert_eq!((forum_of(0), forum_of(1)), (false, true));
        assert_eq!(c.effective["FORUM"], "true for 1 of 2 webhooks");
        // One-line errors naming key, value and what is expected.
        let e = load(None, &[("DISCORD_WEBHOOK_URL", URL), ("FORUM", "maybe")])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "FORUM = \"maybe\": expected true or false");
        let e = load(
            Some("[[source]]\nname = \"s\"\nroot = \"/a\"\nforum = true\n"),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("source[s].forum = \"true\": expected no forum key in a [[source]] table without its own discord_webhook_url"),
            "{e}"
        );
        let toml = format!(
            "[[source]]\nroot = \"/a\"\ndiscord_webhook_url = \"{OTHER}\"\n[[source]]\nname = \"b\"\nroot = \"/b\"\ndiscord_webhook_url = \"{OTHER}\"\nforum = true\n"
        );
        let e = load(Some(&toml), &[("DISCORD_WEBHOOK_URL", URL)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "source[b].forum = \"true\": expected false like the other sources posting to the same webhook"
        );
        assert!(!e.contains('\n'), "{e}");
        // The alerts webhook says for itself.
        let c = load(
            Some(&format!(
                "alerts_webhook_url = \"{OTHER}\"\nalerts_forum = true\n"
            )),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        let (ai, _) = c.alerts.unwrap();
        assert_eq!((c.forums[0], c.forums[ai]), (false, true));
        assert_eq!(c.effective["ALERTS_FORUM"], "true");
    }

    #[test]
    fn night_keys() {
        let c = load(None, &[("DISCORD_WEBHOOK_URL", URL)]).unwrap();
        assert_eq!(c.night, crate::nightwatch::card::NightSettings::default());
        assert!(c.night_card);
        assert_eq!(c.effective["NIGHT_CARD"], "on");
        let c = load(
            Some("night_card = false\n"),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        assert!(!c.night_card);
        assert_eq!(c.effective["NIGHT_CARD"], "off");
        let e = load(
            None,
            &[("DISCORD_WEBHOOK_URL", URL), ("NIGHT_CARD", "maybe")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "NIGHT_CARD = \"maybe\": expected \"on\" (a card per night, the default) or \"off\""
        );
        let c = load(
            Some("night_start = \"15:00\"\nnight_end = \"07:30\"\n"),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        assert_eq!(c.effective["NIGHT_START"], "15:00");
        assert_eq!(
            c.night.end,
            Some(crate::localtime::TimeOfDay(7 * 3600 + 1800))
        );
        let e = load(None, &[("DISCORD_WEBHOOK_URL", URL), ("NIGHT_END", "7am")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "NIGHT_END = \"7am\": expected a local time of day as \"HH:MM\", e.g. \"12:00\""
        );
    }

    #[test]
    fn missing_webhook_is_an_error_unless_dry_run() {
        let e = load(None, &[]).unwrap_err().to_string();
        assert!(e.starts_with("DISCORD_WEBHOOK_URL is not set"), "{e}");
    }

    #[test]
    fn sources_from_toml() {
        let c = load(
            Some(
                r#"
[[source]]
name = "scripts"
root = "event"
include = ["**/*.log"]
exclude = ["**/*.gz"]
follow = "all"
"#,
            ),
            &[("DISCORD_WEBHOOK_URL", URL)],
        )
        .unwrap();
        assert_eq!(c.sources.len(), 1);
        let s = &c.sources[0];
        assert_eq!(s.follow, Follow::All);
        assert!(s.root.is_absolute() && s.root.ends_with("event"));
        assert!(s.matches(Path::new("deploy/deploy.log")));
        assert!(s.matches(Path::new("error.log")));
        assert!(!s.matches(Path::new("deploy/deploy.log.1")));
    }

    #[test]
    fn dotenv_parsing() {
        let v = parse_dotenv(
            "\u{feff}# c\nexport A=1\nB=\"two words\"\nC = x # note\n\nD='$A \\n'\nE=\"l1\nl2\"\nA=again\r\nF=",
        );
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            v,
            Ok(vec![
                kv("A", "1"),
                kv("B", "two words"),
                kv("C", "x"),
                kv("D", "$A \\n"),
                kv("E", "l1\nl2"),
                kv("A", "again"),
                kv("F", ""),
            ])
        );
        // Double quotes and bare values substitute earlier lines (dotenvy
        // reads `$NAME` up to the first character not alphanumeric, so a
        // name with `_` needs braces).
        assert_eq!(
            parse_dotenv("EKOS_T1=x\nB=\"${EKOS_T1}y\"\nC=${EKOS_T1}"),
            Ok(vec![kv("EKOS_T1", "x"), kv("B", "xy"), kv("C", "x")])
        );
    }

    #[test]
    fn dotenv_bad_lines_are_named_by_number() {
        for (text, line) in [
            ("bad\n", 1),
            ("# c\nA=1\n\nbad\nB=2\n", 4),
            ("A=1\nB=two words\n", 2),
            ("A=1\r\n=x\r\n", 2),
            ("A=1\n1A=x\n", 2),
            // An open quote reads on to the end: named where it opens.
            ("A=1\nB=\"open\nC=3\nD=4\n", 2),
            ("A=1\nB='open\nC=3", 2),
            ("A=1\nB=\"l1\nl2\" x\nC=3\n", 2),
        ] {
            assert_eq!(
                parse_dotenv(text),
                Err(DotenvProblem::Line(line)),
                "{text:?}"
            );
        }
        // A line longer than dotenvy's read buffer still counts once.
        let long = format!("A=1\nB={}\nbad\n", "x".repeat(20_000));
        assert_eq!(parse_dotenv(&long), Err(DotenvProblem::Line(3)));
        // The file is not used: loading stops with the path and the line.
        let e = Config::load(&Inputs {
            env: [("DISCORD_WEBHOOK_URL".to_string(), URL.to_string())].into(),
            dotenv: Some((PathBuf::from("/w/.env"), DotenvProblem::Line(4))),
            ..Inputs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/w/.env: line 4 is not KEY=VALUE"), "{e}");
    }

    /// A real-looking webhook: 18-digit id, 68-character token.
    const TOKEN: &str = "Zx9-Qw8_Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm-MnBvCxZ_LkJhGfDsAqWeRtYuIo1";
    fn real_url() -> String {
        assert_eq!(TOKEN.len(), 68);
        format!("https://discord.com/api/webhooks/123456789012345678/{TOKEN}")
    }

    /// The message carries neither the token nor any sizeable piece of it.
    fn assert_no_token(e: &str) {
        assert!(!e.contains('\n'), "more than one line: {e}");
        for w in TOKEN.as_bytes().windows(12) {
            let piece = std::str::from_utf8(w).unwrap();
            assert!(!e.contains(piece), "token piece {piece:?} in: {e}");
        }
    }

    #[test]
    fn toml_syntax_errors_name_position_and_key_but_never_the_token() {
        let url = real_url();
        // (file, line, key named in the message, if the line sets a known key)
        let cases: Vec<(String, usize, Option<&str>)> = vec![
            // Unterminated basic string.
            (
                format!("batch_size = 3\ndiscord_webhook_url = \"{url}\nbatch_timeout = 1\n"),
                2,
                Some("discord_webhook_url"),
            ),
            // Unterminated literal string.
            (
                format!("discord_webhook_url = '{url}\n"),
                1,
                Some("discord_webhook_url"),
            ),
            // Unterminated multi-line string: reported at the end of the file.
            (
                format!("discord_webhook_url = \"\"\"{url}\nmore\n"),
                2,
                None,
            ),
            // Duplicate key.
            (
                format!("discord_webhook_url = \"{url}\"\ndiscord_webhook_url = \"{url}\"\n"),
                2,
                Some("discord_webhook_url"),
            ),
            // Stray character after the value.
            (
                format!("discord_webhook_url = \"{url}\" x\n"),
                1,
                Some("discord_webhook_url"),
            ),
            // Unquoted value.
            (
                format!("discord_webhook_url = {url}\n"),
                1,
                Some("discord_webhook_url"),
            ),
            // Bad escape inside the string.
            (
                format!("discord_webhook_url = \"\\q{url}\"\n"),
                1,
                Some("discord_webhook_url"),
            ),
            // A [[source]] webhook, then a table redefined.
            (
                format!("[[source]]\nroot = \"x\"\ndiscord_webhook_url = \"{url}\"\n[source]\n"),
                4,
                Some("source"),
            ),
            // A stray character at the start of a line.
            (
                format!("discord_webhook_url = \"{url}\"\n$ {url}\n"),
                2,
                None,
            ),
        ];
        for (toml, line, key) in cases {
            let e = load(Some(&toml), &[]).unwrap_err();
            assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
            let e = e.to_string();
            assert_no_token(&e);
            assert!(e.contains("config.toml is not valid TOML: "), "{e}");
            assert!(
                e.contains(&format!("line {line}, column ")),
                "{toml:?}: {e}"
            );
            if let Some(k) = key {
                assert!(e.contains(&format!("key `{k}`")), "{toml:?}: {e}");
            }
            assert!(!e.contains("discord.com"), "{e}");
        }
    }

    #[test]
    fn other_errors_quoting_values_hide_the_token() {
        let url = real_url();
        let files = [
            // A quoted key that is the URL.
            format!("\"{url}\" = 1\n"),
            // The URL where tables are expected.
            format!("source = \"{url}\"\n"),
            format!("rule = \"{url}\"\n"),
            // The URL in a key that expects something else.
            format!("batch_size = \"{url}\"\n"),
            format!("start_at = \"{url}\"\n"),
            format!("[[source]]\nroot = \"x\"\nfollow = \"{url}\"\n"),
            format!("[[source]]\nroot = \"x\"\ndiscord_webhook_url = \"{url}x/y\"\n"),
            format!("[[source]]\nroot = \"x\"\nurl = \"{url}\"\n"),
        ];
        for f in files {
            let e = load(Some(&f), &[("DISCORD_WEBHOOK_URL", URL)])
                .unwrap_err()
                .to_string();
            assert_no_token(&e);
        }
        // Environment values in the wrong key, or mangled.
        for (k, v) in [
            ("BATCH_SIZE", url.clone()),
            ("START_AT", url.clone()),
            ("EKOS_LOG_PATTERNS", format!("[{url}")),
            ("DISCORD_WEBHOOK_URL", format!("\"{url}")),
            ("DISCORD_WEBHOOK_URL", url.replace("https", "http")),
            ("DISCORD_WEBHOOK_URL", format!("{url} trailing")),
            ("ALERTS_WEBHOOK_URL", format!("{url}/extra")),
            ("LOG_LEVEL", TOKEN.to_string()),
        ] {
            let mut env = vec![("DISCORD_WEBHOOK_URL", URL)];
            env.retain(|(e, _)| *e != k);
            env.push((k, v.as_str()));
            let e = load(None, &env).unwrap_err().to_string();
            assert_no_token(&e);
        }
    }

    #[test]
    fn dotenv_mistakes_do_not_leak_the_token() {
        let url = real_url();
        let mut refused = 0;
        for text in [
            format!("DISCORD_WEBHOOK_URL=\"{url}\n"),
            format!("DISCORD_WEBHOOK_URL='{url}\"\n"),
            format!("A=1\nDISCORD_WEBHOOK_URL=\"{url}\" x\n"),
            format!("DISCORD_WEBHOOK_URL {url}\n"),
            format!("{url}\n"),
            format!("export DISCORD_WEBHOOK_URL = {url} # the bot\nBATCH_SIZE={url}\n"),
            format!("DISCORD_WEBHOOK_URL={url}x/\n"),
        ] {
            match parse_dotenv(&text) {
                Err(p) => {
                    refused += 1;
                    let e = ConfigError::Dotenv {
                        path: ".env".into(),
                        problem: p,
                    }
                    .to_string();
                    assert_no_token(&e);
                    assert!(e.starts_with(".env: line "), "{e}");
                }
                Ok(env) => {
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    match load(None, &env) {
                        Ok(c) => assert_no_token(&format!("{:?} {:?}", c.webhooks, c.effective)),
                        Err(e) => assert_no_token(&e.to_string()),
                    }
                }
            }
        }
        assert_eq!(refused, 5);
    }

    #[test]
    fn syntax_message_keeps_position_and_words_only() {
        let url = real_url();
        let lib = format!(
            "TOML parse error at line 2, column 23\n  |\n2 | discord_webhook_url = \"{url}\n  |                       ^\ninvalid basic string\n"
        );
        let text = format!("a = 1\ndiscord_webhook_url = \"{url}\n");
        assert_eq!(
            syntax_message(&lib, &text),
            "line 2, column 23, key `discord_webhook_url`: invalid basic string"
        );
        // An unknown key is not named (it might be anything the user typed).
        let text = format!("{TOKEN} = \"x\n");
        let lib = "TOML parse error at line 1, column 5\n  |\n1 | x\n  | ^\nduplicate key\n";
        assert_eq!(
            syntax_message(lib, &text),
            "line 1, column 5: duplicate key"
        );
        // A message in another shape is scrubbed, not dropped.
        let odd = format!("unexpected {url} here");
        let m = syntax_message(&odd, "");
        assert_no_token(&m);
        assert!(m.starts_with("unexpected https://discord.com/"), "{m}");
        // Capped.
        let long = "x ".repeat(1000);
        assert!(syntax_message(&long, "").chars().count() <= SYNTAX_MESSAGE_MAX + 3);
    }
}
