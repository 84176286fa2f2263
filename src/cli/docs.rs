//! The files generated from the command-line definition, and the tests that
//! keep the committed copies equal to it.
//!
//! The man page `packaging/man/ekos-log-monitor.8` is hand-written prose
//! around three generated blocks (SYNOPSIS, COMMANDS, OPTIONS) delimited by
//! `.\" BEGIN GENERATED name` / `.\" END GENERATED name` lines; the bash and
//! zsh completions under `packaging/completions/` are generated whole. The
//! package ships the committed files, so a cross-compiled package needs no
//! emulator to produce them, and `cargo test` fails as soon as one of them
//! drifts from [`Cli`]. `EKOS_REGENERATE=1 cargo test --lib cli` rewrites
//! them.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command as ClapCommand, CommandFactory};

use super::{Cli, Command, SetupArgs};

const BIN: &str = "ekos-log-monitor";

/// Escapes text for a roff line: backslashes, hyphens (so they are not
/// turned into typographic dashes and stay searchable) and a leading
/// control character.
fn roff(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn bold(s: &str) -> String {
    format!("\\fB{}\\fR", roff(s))
}

fn italic(s: &str) -> String {
    format!("\\fI{}\\fR", roff(s))
}

/// The built command: clap adds `--help` and `--version` only when built.
fn command() -> ClapCommand {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

fn visible_args(cmd: &ClapCommand) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
}

/// `-c, --config FILE` in roff.
fn arg_label(arg: &Arg, sep: &str) -> String {
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(bold(&format!("-{s}")));
    }
    if let Some(l) = arg.get_long() {
        names.push(bold(&format!("--{l}")));
    }
    let mut label = names.join(sep);
    if takes_value(arg) {
        for v in arg.get_value_names().unwrap_or_default() {
            label.push(' ');
            label.push_str(&italic(v));
        }
    }
    label
}

fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

fn is_meta(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
}

/// `[--ekos-user USER]...` for a synopsis.
fn synopsis_arg(arg: &Arg) -> String {
    let repeat = if matches!(arg.get_action(), ArgAction::Append) {
        "\\&..."
    } else {
        ""
    };
    format!("[{}]{repeat}", arg_label(arg, "|"))
}

/// The long help as roff paragraphs: the first one follows the tag, the
/// others are indented paragraphs of the same item.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| roff(&p.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join("\n.IP\n")
}

fn long_help(arg: &Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

fn options_list(cmd: &ClapCommand, own_only: bool) -> String {
    let mut out = String::new();
    for arg in visible_args(cmd) {
        // A command's own list leaves out what OPTIONS already says.
        if own_only && (arg.is_global_set() || is_meta(arg)) {
            continue;
        }
        out.push_str(".TP\n");
        out.push_str(&arg_label(arg, ", "));
        out.push('\n');
        out.push_str(&paragraphs(&long_help(arg)));
        out.push('\n');
    }
    out
}

fn synopsis(cmd: &ClapCommand) -> String {
    let globals: Vec<&Arg> = visible_args(cmd).filter(|a| !is_meta(a)).collect();
    let mut out = String::from(".SH SYNOPSIS\n");
    // The daemon and its argument-less commands.
    let simple: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| visible_args(s).all(|a| is_meta(a) || a.is_global_set()))
        .map(|s| bold(s.get_name()))
        .collect();
    out.push_str(&bold(BIN));
    for a in &globals {
        out.push(' ');
        out.push_str(&synopsis_arg(a));
    }
    out.push_str(&format!(" [{}]\n", simple.join("|")));
    // One line per command with options of its own.
    for sub in cmd.get_subcommands() {
        let own: Vec<&Arg> = visible_args(sub)
            .filter(|a| !is_meta(a) && !a.is_global_set())
            .collect();
        if own.is_empty() {
            continue;
        }
        out.push_str(".br\n");
        out.push_str(&bold(BIN));
        let config = globals.iter().find(|a| a.get_id() == "config");
        if let Some(c) = config {
            out.push(' ');
            out.push_str(&synopsis_arg(c));
        }
        out.push(' ');
        out.push_str(&bold(sub.get_name()));
        for a in own {
            out.push(' ');
            out.push_str(&synopsis_arg(a));
        }
        out.push('\n');
    }
    let meta: Vec<String> = visible_args(cmd)
        .filter(|a| is_meta(a))
        .map(|a| arg_label(a, "|"))
        .collect();
    out.push_str(".br\n");
    out.push_str(&bold(BIN));
    out.push(' ');
    out.push_str(&meta.join(" | "));
    out.push('\n');
    out
}

fn commands(cmd: &ClapCommand) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        out.push_str(".TP\n");
        out.push_str(&bold(sub.get_name()));
        out.push('\n');
        let text = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|t| t.to_string())
            .unwrap_or_default();
        out.push_str(&paragraphs(&text));
        out.push('\n');
        let own = options_list(sub, true);
        if !own.is_empty() {
            out.push_str(&format!(
                ".IP\nOptions of {}:\n.RS\n{own}.RE\n",
                bold(sub.get_name())
            ));
        }
    }
    out
}

fn options(cmd: &ClapCommand) -> String {
    format!(".SH OPTIONS\n{}", options_list(cmd, false))
}

/// Replaces the body of each generated block of `page`; an unknown or
/// unterminated block is an error, so a mangled page cannot pass.
fn fill_man_page(page: &str, blocks: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(page.len());
    let mut lines = page.split_inclusive('\n');
    let mut seen = Vec::new();
    while let Some(line) = lines.next() {
        out.push_str(line);
        let Some(name) = line.trim_end().strip_prefix(".\\\" BEGIN GENERATED ") else {
            continue;
        };
        let Some((_, body)) = blocks.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unknown generated block {name:?}"));
        };
        out.push_str(body);
        let end = format!(".\\\" END GENERATED {name}");
        loop {
            match lines.next() {
                Some(l) if l.trim_end() == end => {
                    out.push_str(l);
                    break;
                }
                Some(_) => {}
                None => return Err(format!("block {name:?} has no {end:?} line")),
            }
        }
        seen.push(name.to_string());
    }
    for (n, _) in blocks {
        if !seen.iter().any(|s| s == n) {
            return Err(format!("block {n:?} is missing from the man page"));
        }
    }
    Ok(out)
}

fn completion(shell: clap_complete::Shell) -> String {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
    let script = String::from_utf8(buf).expect("completion script is UTF-8");
    // clap_complete's bash script spells a subcommand's state two ways when
    // the binary name has a hyphen, so no subcommand option ever completes
    // (clap-rs/clap#6421, open). Spell the case labels as the dispatch loop
    // does; `bash_completes_subcommand_options` checks the result.
    script.replace("ekos__subcmd__log__subcmd__monitor", "ekos__log__monitor")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Compares the committed file with what the definition generates; with
/// `EKOS_REGENERATE=1` it rewrites the file instead.
fn expect_file(path: &str, want: &str) {
    let p = repo(path);
    let have = std::fs::read_to_string(&p).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var_os("EKOS_REGENERATE").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, want).unwrap();
        return;
    }
    panic!(
        "{path} does not match the command-line definition in src/cli.rs; \
         run `EKOS_REGENERATE=1 cargo test --lib cli` and commit the result"
    );
}

#[test]
fn man_page_matches_the_definition() {
    let cmd = command();
    let page_path = "packaging/man/ekos-log-monitor.8";
    let page = std::fs::read_to_string(repo(page_path)).unwrap();
    let filled = fill_man_page(
        &page,
        &[
            ("synopsis", synopsis(&cmd)),
            ("commands", commands(&cmd)),
            ("options", options(&cmd)),
        ],
    )
    .unwrap();
    expect_file(page_path, &filled);
}

#[test]
fn completions_match_the_definition() {
    expect_file(
        "packaging/completions/ekos-log-monitor.bash",
        &completion(clap_complete::Shell::Bash),
    );
    expect_file(
        "packaging/completions/_ekos-log-monitor",
        &completion(clap_complete::Shell::Zsh),
    );
}

/// Asks the shipped bash completion what it offers after `words`, as bash
/// would when TAB is pressed at the end of the last word.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = repo("packaging/completions/ekos-log-monitor.bash");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
         COMP_POINT=${{#COMP_LINE}}; _ekos__log__monitor {BIN} {} {}; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        quoted[words.len() - 1],
        quoted[words.len() - 2],
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_subcommand_options() {
    let top = bash_complete(&[BIN, ""]);
    for want in ["run", "check", "test-webhook", "setup", "--config"] {
        assert!(top.iter().any(|w| w == want), "{want} not in {top:?}");
    }
    assert_eq!(
        bash_complete(&[BIN, "setup", "--no-s"]),
        ["--no-scripts", "--no-start"]
    );
    assert_eq!(bash_complete(&[BIN, "setup", "--ek"]), ["--ekos-user"]);
}

/// Every option clap accepts is in `--help` and in the man page's
/// generated sections, under each of its names (the bug this module
/// exists for: `-c` was parsed but missing from `--help`).
#[test]
fn every_name_is_in_help_and_man_page() {
    let mut cmd = command();
    let help = cmd.render_long_help().to_string();
    let man = std::fs::read_to_string(repo("packaging/man/ekos-log-monitor.8")).unwrap();
    let mut subs: Vec<ClapCommand> = cmd.get_subcommands().cloned().collect();
    for a in visible_args(&cmd) {
        for name in a
            .get_short()
            .map(|s| format!("-{s}"))
            .into_iter()
            .chain(a.get_long().map(|l| format!("--{l}")))
        {
            assert!(help.contains(&name), "{name} missing from --help");
            assert!(man.contains(&roff(&name)), "{name} missing from man page");
        }
    }
    for sub in &mut subs {
        sub.build();
        let help = sub.render_long_help().to_string();
        assert!(man.contains(&bold(sub.get_name())));
        for a in visible_args(sub) {
            if let Some(l) = a.get_long() {
                let name = format!("--{l}");
                assert!(help.contains(&name), "{name} missing from help");
                assert!(man.contains(&roff(&name)), "{name} missing from man page");
            }
        }
    }
}

#[test]
fn fill_man_page_refuses_mangled_pages() {
    let blocks = [("a", "new\n".to_string())];
    let ok = ".TH X\n.\\\" BEGIN GENERATED a\nold\n.\\\" END GENERATED a\ntail\n";
    assert_eq!(
        fill_man_page(ok, &blocks).unwrap(),
        ".TH X\n.\\\" BEGIN GENERATED a\nnew\n.\\\" END GENERATED a\ntail\n"
    );
    assert!(fill_man_page(".\\\" BEGIN GENERATED a\nold\n", &blocks).is_err());
    assert!(fill_man_page(".TH X\n", &blocks).is_err());
    assert!(fill_man_page(".\\\" BEGIN GENERATED b\n.\\\" END GENERATED b\n", &blocks).is_err());
}

#[test]
fn roff_escapes() {
    assert_eq!(roff("--dry-run"), "\\-\\-dry\\-run");
    assert_eq!(roff(".hidden"), "\\&.hidden");
    assert_eq!(roff("a\\b"), "a\\eb");
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_args(std::iter::once(BIN).chain(args.iter().copied()))
}

#[test]
fn parses_what_the_old_parser_took() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.effective_command(), Command::Run);
    assert!(!c.dry_run && c.config.is_none());
    for args in [
        &["-c", "x.toml", "check"][..],
        &["--config", "x.toml", "check"],
        &["--config=x.toml", "check"],
        &["check", "-c", "x.toml"],
    ] {
        let c = parse(args).unwrap();
        assert_eq!(c.effective_command(), Command::Check, "{args:?}");
        assert_eq!(c.config.as_deref(), Some(Path::new("x.toml")), "{args:?}");
    }
    let c = parse(&["--dry-run", "test-webhook"]).unwrap();
    assert!(c.dry_run);
    assert_eq!(c.effective_command(), Command::TestWebhook);
    let c = parse(&["--replay", "night.txt"]).unwrap();
    assert_eq!(c.replay.as_deref(), Some(Path::new("night.txt")));
    assert_eq!(c.effective_command(), Command::Run);
}

#[test]
fn parses_setup() {
    let c = parse(&[
        "setup",
        "--webhook-file",
        "w",
        "--ekos-user",
        "astro",
        "--ekos-user",
        "bob",
        "--scripts",
        "/srv/service/event",
        "-y",
    ])
    .unwrap();
    assert_eq!(
        c.effective_command(),
        Command::Setup(SetupArgs {
            webhook_file: Some("w".into()),
            ekos_users: vec!["astro".into(), "bob".into()],
            scripts: Some("/srv/service/event".into()),
            no_scripts: false,
            yes: true,
            no_start: false,
            root: None,
        })
    );
}

#[test]
fn refuses_bad_command_lines_with_usage_errors() {
    for args in [
        &["frobnicate"][..],
        &["--bogus"],
        &["--config"],
        &["check", "run"],
        &["setup", "--scripts", "/x", "--no-scripts"],
        &["run", "--webhook-file", "w"],
        &["--replay", "night.txt", "check"],
    ] {
        let e = parse(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
    }
}
