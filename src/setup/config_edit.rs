//! Reading and editing `/etc/ekos-log-monitor/config.toml` without losing
//! the user's settings and comments.
//!
//! The file is a dpkg conffile whose every key ships commented out, and the
//! user may have edited it. Setup owns only a few settings: the
//! `ekos_logs_directory` key (the first chosen KStars directory), the
//! `[[source]]` tables named `kstars-<user>` (further KStars directories) and
//! `scripts` (the script-log tree), and it removes `discord_webhook_url` and
//! `discord_webhook_url_file`, which would win over the credential it
//! writes. Everything else is left byte for byte: existing values are changed
//! in place with `toml_edit`, and new lines are placed as text where a
//! person would put them (a new key under its commented example, new tables
//! at the end), then the result is parsed again and checked.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use super::SetupError;
use super::users::EkosDir;
use crate::webhook::redact_secrets;

pub const EKOS_KEY: &str = "ekos_logs_directory";
pub const SCRIPTS_SOURCE: &str = "scripts";
pub const KSTARS_PREFIX: &str = "kstars-";
/// The comment line above a table setup added.
const ADDED_BY: &str = "# Added by `ekos-log-monitor setup`";
/// Keys that name a webhook and would shadow the credential.
const WEBHOOK_KEYS: &[&str] = &["discord_webhook_url", "discord_webhook_url_file"];

/// What setup manages, as found in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    /// `ekos_logs_directory`, then the roots of `kstars-*` sources.
    pub ekos: Vec<PathBuf>,
    /// The root of the `scripts` source.
    pub scripts: Option<PathBuf>,
    /// `discord_webhook_url`, if the file sets one.
    pub webhook: Option<String>,
}

/// What the edited file must say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    pub ekos: Vec<EkosDir>,
    pub scripts: Option<PathBuf>,
}

fn parse(text: &str, path: &Path) -> Result<DocumentMut, SetupError> {
    text.parse::<DocumentMut>()
        .map_err(|e| SetupError::ConfigSyntax {
            path: path.to_path_buf(),
            message: redact_secrets(e.to_string().lines().next().unwrap_or("syntax error")),
        })
}

/// A path as written in the file: relative ones are relative to its
/// directory, as the daemon reads them.
fn resolve(raw: &str, path: &Path) -> PathBuf {
    let p = Path::new(raw.trim());
    if p.is_absolute() || raw.trim_start().starts_with('~') {
        p.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new("/")).join(p)
    }
}

fn str_of<'a>(t: &'a Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(Item::as_str)
}

/// Reads what setup manages from the file's text.
pub fn read(text: &str, path: &Path) -> Result<Managed, SetupError> {
    let doc = parse(text, path)?;
    let mut m = Managed {
        webhook: doc
            .get("discord_webhook_url")
            .and_then(Item::as_str)
            .map(str::to_string),
        ..Managed::default()
    };
    if let Some(d) = doc.get(EKOS_KEY).and_then(Item::as_str) {
        m.ekos.push(resolve(d, path));
    }
    if let Some(aot) = doc.get("source").and_then(Item::as_array_of_tables) {
        for t in aot.iter() {
            let (Some(name), Some(root)) = (str_of(t, "name"), str_of(t, "root")) else {
                continue;
            };
            if name.starts_with(KSTARS_PREFIX) {
                m.ekos.push(resolve(root, path));
            } else if name == SCRIPTS_SOURCE && m.scripts.is_none() {
                m.scripts = Some(resolve(root, path));
            }
        }
    }
    Ok(m)
}

fn utf8(p: &Path) -> Result<&str, SetupError> {
    p.to_str()
        .ok_or_else(|| SetupError::NotUtf8(p.to_path_buf()))
}

/// A TOML basic string, quoted and escaped.
fn quoted(s: &str) -> String {
    Value::from(s).to_string().trim().to_string()
}

/// A `[[source]]` table as text, appended at the end of the file.
fn source_text(name: &str, root: &str, kstars: bool) -> String {
    let (include, follow, what) = if kstars {
        (
            r#"["log_*.txt", "*.log"]"#,
            "newest",
            "more KStars logs: the newest file is followed",
        )
    } else {
        (
            r#"["*.log"]"#,
            "all",
            "script logs: every *.log file at any depth",
        )
    };
    format!(
        "\n{ADDED_BY}: {what}.\n[[source]]\nname = {}\nroot = {}\ninclude = {include}\nfollow = \"{follow}\"\n",
        quoted(name),
        quoted(root)
    )
}

/// The source name for a KStars directory beyond the first.
fn kstars_name(d: &EkosDir, n: usize) -> String {
    let user: String = d
        .user
        .as_deref()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if user.is_empty() {
        format!("{KSTARS_PREFIX}{n}")
    } else {
        format!("{KSTARS_PREFIX}{user}")
    }
}

/// Moves the comments above a table that is about to be removed to the
/// next table of the document (or its end), so that documentation written
/// above it is kept.
fn keep_comments_of(doc: &mut DocumentMut, removed: &Table) {
    // Setup's own note above a table it added goes with the table.
    let Some(prefix) = removed
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .map(|p| {
            let mut kept: Vec<&str> = Vec::new();
            for l in p.split_inclusive('\n') {
                if l.starts_with(ADDED_BY) {
                    // With the blank line setup wrote before it.
                    if kept.last().is_some_and(|l| l.trim().is_empty()) {
                        kept.pop();
                    }
                } else {
                    kept.push(l);
                }
            }
            kept.concat()
        })
        .filter(|p| p.contains('#'))
    else {
        return;
    };
    let pos = removed.position().unwrap_or(isize::MAX);
    let mut next: Option<(String, Option<usize>, isize)> = None;
    for (k, item) in doc.iter() {
        let mut consider = |i: Option<usize>, t: &Table| {
            if let Some(p) = t.position().filter(|p| *p > pos)
                && next.as_ref().is_none_or(|n| p < n.2)
            {
                next = Some((k.to_string(), i, p));
            }
        };
        match item {
            Item::Table(t) => consider(None, t),
            Item::ArrayOfTables(a) => a.iter().enumerate().for_each(|(i, t)| consider(Some(i), t)),
            _ => {}
        }
    }
    let target = next.and_then(|(k, i, _)| match (doc.get_mut(&k)?, i) {
        (Item::Table(t), None) => Some(t),
        (Item::ArrayOfTables(a), Some(i)) => a.get_mut(i),
        _ => None,
    });
    match target {
        Some(t) => {
            let old = t
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_string();
            t.decor_mut().set_prefix(format!("{prefix}{old}"));
        }
        None => {
            let old = doc.trailing().as_str().unwrap_or("").to_string();
            doc.set_trailing(format!("{prefix}{old}"));
        }
    }
}

/// Edits the file's text so that it follows `want`; returns the new text
/// and notes for the user (what was removed and why).
pub fn edit(text: &str, path: &Path, want: &Want) -> Result<(String, Vec<String>), SetupError> {
    let mut doc = parse(text, path)?;
    let mut notes = Vec::new();
    for k in WEBHOOK_KEYS {
        if doc.contains_key(k) {
            doc.remove(k);
            notes.push(format!(
                "removed {k} from {}: the webhook is now the credential file",
                path.display()
            ));
        }
    }

    // Directories a source setup does not manage already follows: adding
    // them again would post every line twice.
    let mut unmanaged: Vec<(String, PathBuf)> = Vec::new();
    if let Some(item) = doc.get("source") {
        let aot = item
            .as_array_of_tables()
            .ok_or_else(|| SetupError::ConfigShape {
                path: path.to_path_buf(),
                what: "`source` is not a list of [[source]] tables".into(),
            })?;
        for t in aot.iter() {
            let name = str_of(t, "name").unwrap_or("");
            if name != SCRIPTS_SOURCE
                && !name.starts_with(KSTARS_PREFIX)
                && let Some(root) = str_of(t, "root")
            {
                unmanaged.push((name.to_string(), resolve(root, path)));
            }
        }
    }
    let covered = |dir: &Path, notes: &mut Vec<String>| {
        if let Some((name, _)) = unmanaged.iter().find(|(_, r)| r == dir) {
            notes.push(format!(
                "{} is already followed by your source \"{name}\": not added again",
                dir.display()
            ));
            true
        } else {
            false
        }
    };
    let ekos: Vec<&EkosDir> = want
        .ekos
        .iter()
        .filter(|d| !covered(&d.dir, &mut notes))
        .collect();
    let scripts = want.scripts.as_deref().filter(|d| !covered(d, &mut notes));

    // The first KStars directory: the top-level key.
    let mut new_key_line = None;
    match (ekos.first(), doc.get_mut(EKOS_KEY)) {
        (Some(d), Some(item)) => {
            let s = utf8(&d.dir)?;
            let v = item.as_value_mut().ok_or_else(|| SetupError::ConfigShape {
                path: path.to_path_buf(),
                what: format!("{EKOS_KEY} is not a string"),
            })?;
            if v.as_str().map(|old| resolve(old, path)) != Some(d.dir.clone()) {
                let decor = v.decor().clone();
                *v = Value::from(s);
                *v.decor_mut() = decor;
            }
        }
        (Some(d), None) => {
            new_key_line = Some(format!(
                "# Set by `ekos-log-monitor setup`.\n{EKOS_KEY} = {}\n",
                quoted(utf8(&d.dir)?)
            ))
        }
        (None, Some(_)) => {
            doc.remove(EKOS_KEY);
        }
        (None, None) => {}
    }

    // The other KStars directories and the script logs: [[source]] tables.
    let mut extra: Vec<(String, &Path)> = Vec::new();
    for (n, d) in ekos.iter().enumerate().skip(1) {
        let mut name = kstars_name(d, n + 1);
        if extra.iter().any(|(x, _)| *x == name) {
            name = format!("{KSTARS_PREFIX}{}", n + 1);
        }
        extra.push((name, &d.dir));
    }
    let mut kept_kstars: Vec<PathBuf> = Vec::new();
    let mut scripts_kept = false;
    let mut removed: Vec<Table> = Vec::new();
    if let Some(aot) = doc.get_mut("source").and_then(Item::as_array_of_tables_mut) {
        let mut i = 0;
        while i < aot.len() {
            let t = aot.get_mut(i).expect("index in range");
            let name = str_of(t, "name").unwrap_or("").to_string();
            let root = str_of(t, "root").map(|r| resolve(r, path));
            let keep = if name == SCRIPTS_SOURCE {
                match scripts {
                    Some(want_root) if !scripts_kept => {
                        scripts_kept = true;
                        if root.as_deref() != Some(want_root) {
                            t["root"] = toml_edit::value(utf8(want_root)?);
                        }
                        true
                    }
                    _ => false,
                }
            } else if name.starts_with(KSTARS_PREFIX) {
                match root {
                    Some(r) if extra.iter().any(|(_, d)| *d == r) && !kept_kstars.contains(&r) => {
                        kept_kstars.push(r);
                        true
                    }
                    _ => false,
                }
            } else {
                true
            };
            if keep {
                i += 1;
            } else {
                removed.push(aot.remove(i));
            }
        }
        if aot.is_empty() {
            doc.remove("source");
        }
    }
    for t in &removed {
        keep_comments_of(&mut doc, t);
    }

    let mut out = doc.to_string();
    if let Some(line) = new_key_line {
        out = insert_top_level(&out, EKOS_KEY, &line);
    }
    let mut appended = String::new();
    for (name, dir) in &extra {
        if !kept_kstars.iter().any(|k| k == dir) {
            appended += &source_text(name, utf8(dir)?, true);
        }
    }
    if let Some(s) = scripts
        && !scripts_kept
    {
        appended += &source_text(SCRIPTS_SOURCE, utf8(s)?, false);
    }
    if !appended.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out += &appended;
    }

    // What a reader of the new text sees must be what was asked.
    let got = read(&out, path)?;
    let expect_ekos: Vec<PathBuf> = ekos.iter().map(|d| d.dir.clone()).collect();
    let mut got_ekos = got.ekos.clone();
    got_ekos.sort();
    let mut sorted = expect_ekos.clone();
    sorted.sort();
    if got_ekos != sorted
        || got.ekos.first() != expect_ekos.first()
        || got.scripts.as_deref() != scripts
        || got.webhook.is_some()
    {
        return Err(SetupError::ConfigShape {
            path: path.to_path_buf(),
            what: "the edited file does not read back as intended (a key may be below a table)"
                .into(),
        });
    }
    Ok((out, notes))
}

/// Inserts a top-level `key = ...` line: under its commented-out example
/// (`#key = ...`) when that is above the first table, else at the top.
fn insert_top_level(text: &str, key: &str, line: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let first_table = lines
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(lines.len());
    let example = lines[..first_table].iter().position(|l| {
        l.trim_start()
            .strip_prefix('#')
            .map(str::trim_start)
            .and_then(|l| l.strip_prefix(key))
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    let at = example.map_or(0, |i| i + 1);
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    for l in &lines[..at] {
        out += l;
    }
    if at > 0 && !out.ends_with('\n') {
        out.push('\n');
    }
    out += line;
    for l in &lines[at..] {
        out += l;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/ekos-log-monitor/config.toml";
    const SHIPPED: &str = include_str!("../../packaging/config.toml");

    fn dir(user: &str) -> EkosDir {
        EkosDir {
            user: Some(user.into()),
            dir: PathBuf::from(format!("/home/{user}/.local/share/kstars/logs")),
        }
    }

    fn want(users: &[&str], scripts: Option<&str>) -> Want {
        Want {
            ekos: users.iter().map(|u| dir(u)).collect(),
            scripts: scripts.map(PathBuf::from),
        }
    }

    fn edit_ok(text: &str, w: &Want) -> String {
        edit(text, Path::new(PATH), w).unwrap().0
    }

    /// Lines of `new` that are not in `old`, and lines of `old` gone.
    fn diff(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
        let o: Vec<&str> = old.lines().collect();
        let n: Vec<&str> = new.lines().collect();
        (
            n.iter()
                .filter(|l| !o.contains(l))
                .map(|s| s.to_string())
                .collect(),
            o.iter()
                .filter(|l| !n.contains(l))
                .map(|s| s.to_string())
                .collect(),
        )
    }

    #[test]
    fn shipped_file_gets_the_key_under_its_example_and_a_scripts_table_at_the_end() {
        let out = edit_ok(SHIPPED, &want(&["astro"], Some("/srv/service/event")));
        let (added, gone) = diff(SHIPPED, &out);
        assert!(gone.is_empty(), "{gone:?}");
        assert!(
            added
                .contains(&"ekos_logs_directory = \"/home/astro/.local/share/kstars/logs\"".into()),
            "{added:?}"
        );
        // Under the commented example.
        let i = out.find("#ekos_logs_directory = \"/home/astro").unwrap();
        let j = out.find("\nekos_logs_directory = ").unwrap();
        assert!(
            j > i && !out[i..j].contains("\n#ekos_log_patterns"),
            "not under the example"
        );
        assert!(out.ends_with(
            "[[source]]\nname = \"scripts\"\nroot = \"/srv/service/event\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n"
        ));
        // The daemon's own loader agrees.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, &out).unwrap();
        let cfg = crate::config::Config::load(&crate::config::Inputs {
            config_file: Some(f),
            env: [(
                "DISCORD_WEBHOOK_URL".to_string(),
                "https://discord.com/api/webhooks/1/t".to_string(),
            )]
            .into(),
            dry_run: false,
            dotenv: None,
        })
        .unwrap();
        let roots: Vec<_> = cfg
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.root.clone()))
            .collect();
        assert_eq!(
            roots,
            vec![
                (
                    "ekos",
                    PathBuf::from("/home/astro/.local/share/kstars/logs")
                ),
                ("scripts", PathBuf::from("/srv/service/event")),
            ]
        );
    }

    #[test]
    fn several_users_become_kstars_sources_and_read_back() {
        let out = edit_ok(SHIPPED, &want(&["astro", "bob", "carol"], None));
        let m = read(&out, Path::new(PATH)).unwrap();
        assert_eq!(
            m.ekos,
            want(&["astro", "bob", "carol"], None)
                .ekos
                .iter()
                .map(|d| d.dir.clone())
                .collect::<Vec<_>>()
        );
        assert!(out.contains("name = \"kstars-bob\""));
        assert!(out.contains("name = \"kstars-carol\""));
        assert_eq!(m.scripts, None);
    }

    #[test]
    fn rerun_with_the_same_answers_changes_nothing() {
        let w = want(&["astro", "bob"], Some("/srv/service/event"));
        let once = edit_ok(SHIPPED, &w);
        assert_eq!(edit_ok(&once, &w), once);
    }

    #[test]
    fn a_table_added_then_removed_leaves_no_trace() {
        let with = edit_ok(
            SHIPPED,
            &want(&["astro", "bob"], Some("/srv/service/event")),
        );
        assert_eq!(
            edit_ok(&with, &want(&["astro"], None)),
            edit_ok(SHIPPED, &want(&["astro"], None))
        );
    }

    #[test]
    fn changes_only_what_is_managed() {
        let w = want(&["astro", "bob"], Some("/srv/service/event"));
        let user = format!(
            "batch_size = 5 # mine\n{}\n[[rule]]\nname = \"qsql-noise\"\npattern = \"QSql\"\nseverity = \"none\"\n",
            edit_ok(SHIPPED, &w)
        );
        // Drop bob and the scripts, move astro's directory.
        let w2 = Want {
            ekos: vec![EkosDir {
                user: Some("astro".into()),
                dir: "/data/kstars/logs".into(),
            }],
            scripts: None,
        };
        let out = edit_ok(&user, &w2);
        let m = read(&out, Path::new(PATH)).unwrap();
        assert_eq!(m.ekos, vec![PathBuf::from("/data/kstars/logs")]);
        assert_eq!(m.scripts, None);
        assert!(out.starts_with("batch_size = 5 # mine\n"));
        assert!(out.contains("[[rule]]\nname = \"qsql-noise\""));
        assert!(!out.contains("kstars-bob"));
        // Every comment line of the original is still there.
        for l in user
            .lines()
            .filter(|l| l.starts_with('#') && !l.contains("Added by"))
        {
            assert!(out.contains(l), "lost comment {l:?}");
        }
    }

    #[test]
    fn removing_a_table_keeps_the_comments_above_it() {
        let text = "# head\nlog_level = \"INFO\"\n\n# about the scripts\n[[source]]\nname = \"scripts\"\nroot = \"/srv/x\"\n\n# about rules\n[[rule]]\nname = \"r\"\nseverity = \"none\"\n";
        let out = edit_ok(text, &want(&["astro"], None));
        assert!(out.contains("# about the scripts"), "{out}");
        assert!(out.contains("# about rules\n[[rule]]"), "{out}");
        assert!(!out.contains("/srv/x"));
    }

    #[test]
    fn the_webhook_keys_go_and_are_reported() {
        let text = "discord_webhook_url = \"https://discord.com/api/webhooks/1/secret\"\n";
        let m = read(text, Path::new(PATH)).unwrap();
        assert_eq!(
            m.webhook.as_deref(),
            Some("https://discord.com/api/webhooks/1/secret")
        );
        let (out, notes) = edit(text, Path::new(PATH), &want(&["astro"], None)).unwrap();
        assert!(!out.contains("secret"));
        assert_eq!(notes.len(), 1);
        assert!(!notes[0].contains("secret"));
    }

    #[test]
    fn a_directory_followed_by_the_users_own_source_is_not_added_twice() {
        let text = "[[source]]\nname = \"events\"\nroot = \"/srv/service/event\"\n";
        let (out, notes) = edit(
            text,
            Path::new(PATH),
            &want(&["astro"], Some("/srv/service/event")),
        )
        .unwrap();
        assert_eq!(out.matches("/srv/service/event").count(), 1, "{out}");
        assert!(notes[0].contains("\"events\""), "{notes:?}");
        // The key still goes above the table, at the top.
        assert!(out.starts_with("# Set by"), "{out}");
    }

    #[test]
    fn existing_key_is_changed_in_place() {
        let text = "ekos_logs_directory = \"/old\"   # my rig\nbatch_size = 3\n";
        let out = edit_ok(text, &want(&["astro"], None));
        assert_eq!(
            out,
            "ekos_logs_directory = \"/home/astro/.local/share/kstars/logs\"   # my rig\nbatch_size = 3\n"
        );
    }

    #[test]
    fn bad_files_are_refused_without_quoting_secrets() {
        let e = edit(
            "discord_webhook_url = \"https://discord.com/api/webhooks/1/s3cr3tTOKENs3cr3tTOKENs3cr3tTOKENs3cr3tTOKEN99\n",
            Path::new(PATH),
            &want(&["astro"], None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not valid TOML") && !e.contains("s3cr3t"), "{e}");
        let e = edit("source = 3\n", Path::new(PATH), &want(&["astro"], None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[source]]"), "{e}");
    }

    #[test]
    fn paths_are_quoted() {
        let w = Want {
            ekos: vec![
                dir("astro"),
                EkosDir {
                    user: Some("o'neil \"x\"".into()),
                    dir: "/home/o'neil \"x\"/logs".into(),
                },
            ],
            scripts: None,
        };
        let out = edit_ok("", &w);
        let m = read(&out, Path::new(PATH)).unwrap();
        assert_eq!(m.ekos[1], PathBuf::from("/home/o'neil \"x\"/logs"));
        assert!(out.contains("name = \"kstars-o_neil__x_\""), "{out}");
    }
}
