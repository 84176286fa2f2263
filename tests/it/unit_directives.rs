//! Every directive of the shipped unit and example drop-ins is known to the
//! oldest supported systemd (249, Ubuntu 22.04): a newer one would be
//! ignored there with a warning, and a sandboxing line silently lost. The
//! drop-ins `ekos-log-monitor setup` writes are checked the same way by the
//! system test (`cargo run --example unit_directives` on the container's
//! files).

use crate::support::unit_directives;

use std::path::{Path, PathBuf};
use unit_directives::{OLDEST_SYSTEMD, Setting, check_setting, check_text, parse};

fn unit_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut files = vec![root.join("ekos-log-monitor.service")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .expect("systemd/examples")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    examples.sort();
    assert!(
        !examples.is_empty(),
        "no example drop-in in systemd/examples"
    );
    files.extend(examples);
    files
}

#[test]
fn shipped_unit_and_examples_need_at_most_systemd_249() {
    let mut failures = Vec::new();
    let mut settings = 0;
    for file in unit_files() {
        let text = std::fs::read_to_string(&file).expect("read unit file");
        settings += parse(&text).len();
        for p in check_text(&text, OLDEST_SYSTEMD) {
            failures.push(format!("{}: {p}", file.display()));
        }
    }
    assert!(
        settings > 40,
        "only {settings} settings parsed: is the parser broken?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn setting(section: &str, key: &str, value: &str) -> Setting {
    Setting {
        line: 1,
        section: section.into(),
        key: key.into(),
        value: value.into(),
    }
}

#[test]
fn parse_sections_comments_and_continuations() {
    let text = "# comment\n[Unit]\nDescription=x = y\n; other comment\n\n[Service]\nExecStart=/bin/a \\\n  --b\nUMask=\n";
    let got = parse(text);
    assert_eq!(
        got,
        vec![
            Setting {
                line: 3,
                section: "Unit".into(),
                key: "Description".into(),
                value: "x = y".into()
            },
            Setting {
                line: 7,
                section: "Service".into(),
                key: "ExecStart".into(),
                value: "/bin/a  --b".into()
            },
            Setting {
                line: 9,
                section: "Service".into(),
                key: "UMask".into(),
                value: String::new()
            },
        ]
    );
}

#[test]
fn directives_newer_than_249_are_refused() {
    // Directives and values from 250 and later must be refused, even
    // before they are in the table.
    for (key, value) in [
        ("RestrictFileSystems", "ext4"),
        ("LoadCredentialEncrypted", "a:b"),
        ("OpenFile", "/x"),
    ] {
        assert!(
            !check_setting(&setting("Service", key, value), 249).is_empty(),
            "{key}= accepted"
        );
    }
    let p = check_setting(&setting("Service", "ProtectHome", "tmpfs"), 237);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].text.contains("needs systemd 238"), "{}", p[0]);
    assert!(check_setting(&setting("Service", "ProtectHome", "tmpfs"), 249).is_empty());
    assert!(!check_setting(&setting("Service", "PrivateTmp", "disconnected"), 249).is_empty());
    assert!(!check_setting(&setting("Service", "ProtectControlGroups", "strict"), 249).is_empty());
    assert!(!check_setting(&setting("Service", "LoadCredential", "a:b"), 246).is_empty());
    assert!(check_setting(&setting("Service", "LoadCredential", "a:b"), 249).is_empty());
}

#[test]
fn booleans_resets_and_syscall_groups() {
    assert!(check_setting(&setting("Service", "PrivateUsers", "yes"), 249).is_empty());
    assert!(check_setting(&setting("Service", "ProtectSystem", ""), 249).is_empty());
    assert!(!check_setting(&setting("Service", "ProtectProc", "yes"), 249).is_empty());
    assert!(
        check_setting(
            &setting("Service", "SystemCallFilter", "~@privileged @resources"),
            249
        )
        .is_empty()
    );
    let p = check_setting(
        &setting("Service", "SystemCallFilter", "@system-service"),
        240,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(!check_setting(&setting("Service", "SystemCallFilter", "@sandbox"), 249).is_empty());
    // A directive in the wrong section is not the same directive.
    assert!(!check_setting(&setting("Unit", "ProtectHome", "yes"), 249).is_empty());
    assert!(!check_text("ProtectHome=yes\n", 249).is_empty());
}
