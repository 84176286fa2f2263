//! Which systemd version a unit file needs: every directive (and the values
//! that came later than their directive) looked up in a table of the systemd
//! release that introduced it, so that a directive newer than the oldest
//! supported systemd (249, Ubuntu 22.04) fails a test instead of being
//! silently ignored ("Unknown key name ... ignoring") on a user's machine,
//! where a dropped sandboxing line weakens the service without a sound.
//!
//! The table is an allow-list: a directive or value it does not know is an
//! error too, so whoever adds one must look up its version (systemd's NEWS,
//! `zcat /usr/share/doc/systemd/NEWS.gz` on Debian) and add it here.
//! Used by tests/unit_directives.rs (the shipped unit and example drop-ins)
//! and by `cargo run --example unit_directives -- FILE...` (what the system
//! test finds in the booted container's drop-in directory, e.g. the files
//! `ekos-log-monitor setup` wrote).

#![allow(dead_code)] // each includer uses a part

use std::fmt;

/// The oldest systemd among the supported systems (Ubuntu 22.04).
pub const OLDEST_SYSTEMD: u32 = 249;

/// A directive a unit file may use: its section, name, the systemd version
/// that introduced it, and, when its values grew over time, every value it
/// may take with the version that introduced that value (a closed set: a
/// value not listed is an error, except booleans where `bools` is set).
pub struct Directive {
    pub section: &'static str,
    pub key: &'static str,
    pub since: u32,
    pub values: Option<Values>,
}

pub struct Values {
    /// `yes`/`no`/`true`/`false`/`on`/`off`/`1`/`0` are accepted as of the
    /// directive's own version.
    pub bools: bool,
    pub known: &'static [(&'static str, u32)],
}

const fn d(section: &'static str, key: &'static str, since: u32) -> Directive {
    Directive {
        section,
        key,
        since,
        values: None,
    }
}
const fn v(
    section: &'static str,
    key: &'static str,
    since: u32,
    bools: bool,
    known: &'static [(&'static str, u32)],
) -> Directive {
    Directive {
        section,
        key,
        since,
        values: Some(Values { bools, known }),
    }
}

/// Versions are those of the systemd release whose NEWS introduces the
/// directive or value, or, where NEWS is silent, a release known to have it
/// (an upper bound of when it came is all the check needs); 1 marks settings
/// of systemd's first releases, older than NEWS's per-setting entries. Values of SystemCallFilter= are syscall
/// groups (`@name`, optionally after `~`); bare syscall names are not
/// checked.
pub const TABLE: &[Directive] = &[
    // [Unit]
    d("Unit", "Description", 1),
    d("Unit", "Documentation", 183),
    d("Unit", "Wants", 1),
    d("Unit", "Requires", 1),
    d("Unit", "After", 1),
    d("Unit", "Before", 1),
    d("Unit", "ConditionPathExists", 1),
    d("Unit", "ConditionPathIsDirectory", 1),
    // 229 moved StartLimitBurst= from [Service] to [Unit].
    d("Unit", "StartLimitBurst", 229),
    // [Install]
    d("Install", "WantedBy", 1),
    d("Install", "Alias", 1),
    // [Service]: the service's life cycle.
    v(
        "Service",
        "Type",
        1,
        false,
        &[
            ("simple", 1),
            ("forking", 1),
            ("oneshot", 1),
            ("dbus", 1),
            ("notify", 1),
            ("idle", 1),
            ("exec", 240),
        ],
    ),
    v(
        "Service",
        "NotifyAccess",
        1,
        false,
        &[("none", 1), ("main", 1), ("all", 1)],
    ),
    d("Service", "ExecStart", 1),
    d("Service", "ExecStartPre", 1),
    d("Service", "ExecStartPost", 1),
    d("Service", "ExecReload", 1),
    d("Service", "ExecStop", 1),
    d("Service", "ExecStopPost", 1),
    v(
        "Service",
        "Restart",
        1,
        false,
        &[
            ("no", 1),
            ("always", 1),
            ("on-success", 1),
            ("on-failure", 1),
            ("on-abort", 1),
            ("on-watchdog", 207),
            ("on-abnormal", 214),
        ],
    ),
    d("Service", "RestartSec", 1),
    d("Service", "WatchdogSec", 1),
    d("Service", "TimeoutSec", 1),
    d("Service", "TimeoutStartSec", 188),
    d("Service", "TimeoutStopSec", 188),
    d("Service", "KillMode", 1),
    d("Service", "KillSignal", 1),
    d("Service", "Environment", 1),
    d("Service", "EnvironmentFile", 1),
    d("Service", "LimitNOFILE", 1),
    d("Service", "Nice", 1),
    // [Service]: identity, files, credentials.
    d("Service", "User", 1),
    d("Service", "Group", 1),
    d("Service", "SupplementaryGroups", 1),
    d("Service", "UMask", 1),
    d("Service", "StateDirectory", 235),
    d("Service", "StateDirectoryMode", 235),
    d("Service", "RuntimeDirectory", 211),
    d("Service", "ConfigurationDirectory", 235),
    d("Service", "LoadCredential", 247),
    d("Service", "SetCredential", 247),
    // [Service]: sandboxing.
    d("Service", "NoNewPrivileges", 227),
    d("Service", "CapabilityBoundingSet", 1),
    d("Service", "AmbientCapabilities", 229),
    v(
        "Service",
        "ProtectSystem",
        214,
        true,
        &[("full", 214), ("strict", 232)],
    ),
    v(
        "Service",
        "ProtectHome",
        214,
        true,
        &[("read-only", 214), ("tmpfs", 238)],
    ),
    d("Service", "ReadOnlyPaths", 231),
    d("Service", "ReadWritePaths", 231),
    // The "-" prefix (a missing source is skipped) came with the directive
    // (233's BindMount.ignore_enoent).
    d("Service", "BindPaths", 233),
    d("Service", "BindReadOnlyPaths", 233),
    d("Service", "TemporaryFileSystem", 238),
    v("Service", "PrivateTmp", 1, true, &[]),
    v("Service", "PrivateDevices", 1, true, &[]),
    v("Service", "PrivateNetwork", 1, true, &[]),
    v(
        "Service",
        "DevicePolicy",
        1,
        false,
        &[("auto", 1), ("closed", 1), ("strict", 1)],
    ),
    v("Service", "PrivateUsers", 232, true, &[]),
    v("Service", "PrivateMounts", 239, true, &[]),
    v("Service", "ProtectHostname", 242, true, &[]),
    v("Service", "ProtectClock", 245, true, &[]),
    v("Service", "ProtectKernelTunables", 232, true, &[]),
    v("Service", "ProtectKernelModules", 232, true, &[]),
    v("Service", "ProtectKernelLogs", 244, true, &[]),
    v("Service", "ProtectControlGroups", 232, true, &[]),
    v(
        "Service",
        "ProtectProc",
        247,
        false,
        &[
            ("default", 247),
            ("invisible", 247),
            ("noaccess", 247),
            ("ptraceable", 247),
        ],
    ),
    v(
        "Service",
        "ProcSubset",
        247,
        false,
        &[("all", 247), ("pid", 247)],
    ),
    d("Service", "RestrictAddressFamilies", 211),
    d("Service", "RestrictNamespaces", 233),
    v("Service", "RestrictRealtime", 231, true, &[]),
    v("Service", "RestrictSUIDSGID", 242, true, &[]),
    v("Service", "LockPersonality", 235, true, &[]),
    v("Service", "MemoryDenyWriteExecute", 231, true, &[]),
    v("Service", "RemoveIPC", 232, true, &[]),
    v(
        "Service",
        "KeyringMode",
        235,
        false,
        &[("inherit", 235), ("private", 235), ("shared", 235)],
    ),
    d("Service", "SystemCallFilter", 209),
    d("Service", "SystemCallArchitectures", 209),
    d("Service", "SystemCallErrorNumber", 209),
    d("Service", "IPAddressDeny", 235),
    d("Service", "IPAddressAllow", 235),
];

/// The syscall groups SystemCallFilter= may name. NEWS names only some
/// (@clock with the groups themselves in 231, @filesystem, @reboot and @swap
/// in 233, @system-service in 241); the others are checked by name by
/// `systemd-analyze security` ("SystemCallFilter=~@privileged"...), which
/// came in 240, so 240 bounds them.
pub const SYSCALL_GROUPS: &[(&str, u32)] = &[
    ("@clock", 231),
    ("@filesystem", 233),
    ("@reboot", 233),
    ("@swap", 233),
    ("@privileged", 240),
    ("@resources", 240),
    ("@mount", 240),
    ("@module", 240),
    ("@raw-io", 240),
    ("@obsolete", 240),
    ("@debug", 240),
    ("@cpu-emulation", 240),
    ("@system-service", 241),
    ("@known", 247),
];

/// One `Key=Value` of a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub line: usize,
    pub section: String,
    pub key: String,
    pub value: String,
}

/// What is wrong with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.text)
    }
}

/// The settings of a unit file or drop-in, in order: comments (`#`, `;`)
/// and blank lines skipped, `\` continuation lines joined.
pub fn parse(text: &str) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let (start, mut joined) = match pending.take() {
            Some((start, prefix)) => (start, format!("{prefix} {line}")),
            None => {
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                if line.starts_with('[') && line.ends_with(']') {
                    section = line[1..line.len() - 1].to_string();
                    continue;
                }
                (i + 1, line.to_string())
            }
        };
        if joined.ends_with('\\') {
            joined.pop();
            pending = Some((start, joined));
            continue;
        }
        let (key, value) = joined.split_once('=').unwrap_or((joined.as_str(), ""));
        out.push(Setting {
            line: start,
            section: section.clone(),
            key: key.trim().to_string(),
            value: value.trim().to_string(),
        });
    }
    out
}

fn is_bool(s: &str) -> bool {
    matches!(
        s,
        "yes" | "no" | "true" | "false" | "on" | "off" | "1" | "0"
    )
}

/// The problems of one setting against `oldest`: unknown directive or
/// value, or one introduced after `oldest`. An empty value (a reset) is
/// always fine.
pub fn check_setting(s: &Setting, oldest: u32) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |text: String| out.push(Problem { line: s.line, text });
    let Some(dir) = TABLE
        .iter()
        .find(|d| d.section == s.section && d.key == s.key)
    else {
        problem(format!(
            "[{}] {}= is not in the table of tests/support/unit_directives.rs: look up the systemd \
             version that introduced it (NEWS) and add it",
            s.section, s.key
        ));
        return out;
    };
    if dir.since > oldest {
        problem(format!(
            "{}= needs systemd {}, newer than {oldest}",
            s.key, dir.since
        ));
    }
    if s.value.is_empty() {
        return out;
    }
    if let Some(values) = &dir.values {
        if !(values.bools && is_bool(&s.value)) {
            match values.known.iter().find(|(name, _)| *name == s.value) {
                None => problem(format!(
                    "{}={} is not a value the table knows",
                    s.key, s.value
                )),
                Some((_, since)) if *since > oldest => problem(format!(
                    "{}={} needs systemd {since}, newer than {oldest}",
                    s.key, s.value
                )),
                Some(_) => {}
            }
        }
    }
    if s.key == "SystemCallFilter" {
        for group in s
            .value
            .trim_start_matches('~')
            .split_whitespace()
            .filter(|t| t.starts_with('@'))
        {
            match SYSCALL_GROUPS.iter().find(|(name, _)| *name == group) {
                None => problem(format!(
                    "SystemCallFilter= group {group} is not in the table"
                )),
                Some((_, since)) if *since > oldest => problem(format!(
                    "SystemCallFilter= group {group} needs systemd {since}, newer than {oldest}"
                )),
                Some(_) => {}
            }
        }
    }
    out
}

/// Every problem of a unit file's text against `oldest`.
pub fn check_text(text: &str, oldest: u32) -> Vec<Problem> {
    let settings = parse(text);
    let mut out: Vec<Problem> = settings
        .iter()
        .flat_map(|s| check_setting(s, oldest))
        .collect();
    if let Some(s) = settings.iter().find(|s| s.section.is_empty()) {
        out.push(Problem {
            line: s.line,
            text: format!("{}= outside any [section]", s.key),
        });
    }
    out
}
