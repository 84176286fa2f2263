//! The webhook token never leaves the configuration through an error: the
//! real binary's `check`, its log and its `STATUS=` line after a failed
//! reload, for TOML syntax errors whose source line holds the URL.

use std::time::Duration;

use crate::support::daemon::{Env, append, wait_until};
use crate::support::fake_discord::{FakeDiscord, delivered};
use crate::support::notify::NotifySocket;

/// A Discord-shaped token: 68 characters of `[A-Za-z0-9_-]`.
const TOKEN: &str = "Zx9-Qw8_Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm-MnBvCxZ_LkJhGfDsAqWeRtYuIo1";
const ID: &str = "123456789012345678";

fn real_url() -> String {
    assert_eq!(TOKEN.len(), 68);
    format!("https://discord.com/api/webhooks/{ID}/{TOKEN}")
}

/// Whether any 12-character piece of the token is in `text`.
fn leaks(text: &str) -> bool {
    TOKEN
        .as_bytes()
        .windows(12)
        .any(|w| text.contains(std::str::from_utf8(w).unwrap()))
}

/// TOML files with a syntax error on (or after) the line holding the URL:
/// (file, the line reported, a key the message names).
fn broken_files(url: &str) -> Vec<(String, usize, Option<&'static str>)> {
    vec![
        (
            format!("batch_size = 2\ndiscord_webhook_url = \"{url}\nbatch_timeout = 1\n"),
            2,
            Some("discord_webhook_url"),
        ),
        (
            format!("discord_webhook_url = \"{url}\"\ndiscord_webhook_url = \"{url}\"\n"),
            2,
            Some("discord_webhook_url"),
        ),
        (
            format!("discord_webhook_url = \"{url}\" ;\n"),
            1,
            Some("discord_webhook_url"),
        ),
        (
            format!("[[source]]\nroot = \"logs\"\ndiscord_webhook_url = {url}\n"),
            3,
            Some("discord_webhook_url"),
        ),
    ]
}

#[test]
fn check_reports_a_toml_syntax_error_in_one_line_without_the_token() {
    for (toml, line, key) in broken_files(&real_url()) {
        let mut env = Env::new("unused");
        env.unset("DISCORD_WEBHOOK_URL");
        env.write_config(&toml);
        let (status, out, err) = env.run_to_end(&["check"]);
        assert_eq!(status.code(), Some(1), "{toml:?}: {out} {err}");
        assert!(!leaks(&err), "token in stderr: {err}");
        assert!(!leaks(&out), "token in stdout: {out}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("config.toml"), "names the file: {err}");
        assert!(
            err.contains(&format!("line {line}, column ")),
            "names the line: {err}"
        );
        if let Some(k) = key {
            assert!(err.contains(&format!("key `{k}`")), "names the key: {err}");
        }
        // `run` says the same, once.
        let (status, _, err) = env.run_to_end(&[]);
        assert_eq!(status.code(), Some(1));
        assert!(!leaks(&err), "token in stderr: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn a_failed_reload_keeps_the_token_out_of_status_and_the_log() {
    let fake = FakeDiscord::start();
    // The running configuration already holds a 68-character token.
    let good_url = fake.webhook_url_for(ID, TOKEN);
    let mut env = Env::new("unused");
    env.unset("DISCORD_WEBHOOK_URL");
    env.unset("EKOS_LOGS_DIRECTORY");
    let notify = NotifySocket::bind(env.dir.path());
    env.set("NOTIFY_SOCKET", notify.path().to_str().unwrap());
    let logs = env.dir.path().join("logs");
    let file = logs.join("x.log");
    append(&file, &[]);
    let good = format!(
        "discord_webhook_url = \"{good_url}\"\n[[source]]\nroot = \"{}\"\n",
        logs.display()
    );
    env.write_config(&good);
    let mut d = env.start(&[]);
    assert!(
        notify.wait_for(Duration::from_secs(10), |m| m.contains("READY=1")),
        "no READY=1: {:?}",
        notify.messages()
    );
    append(&file, &["before".to_string()]);
    assert!(fake.wait_for(Duration::from_secs(10), |m| !delivered(m).is_empty()));

    for (n, (toml, _, _)) in broken_files(&good_url).into_iter().enumerate() {
        std::fs::write(env.config.as_ref().unwrap(), toml).unwrap();
        notify.clear();
        d.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || d
                .stderr()
                .matches("reload failed, keeping the running configuration")
                .count()
                > n),
            "{}",
            d.stderr()
        );
        assert!(
            notify.wait_for(Duration::from_secs(10), |m| m.contains("STATUS=")
                && m.contains("reload failed")),
            "no STATUS= about the failed reload: {:?}",
            notify.messages()
        );
        assert!(
            d.wait(Duration::from_millis(100)).is_none(),
            "the daemon keeps running"
        );
    }
    for m in notify.messages() {
        assert!(!leaks(&m), "token in a notify message: {m}");
        if let Some(status) = m.lines().find_map(|l| l.strip_prefix("STATUS=")) {
            assert!(
                !status.contains("line ") && !status.contains("TOML"),
                "STATUS= carries the error's text: {status}"
            );
        }
    }
    let log = d.stderr();
    assert!(!leaks(&log), "token in the log: {log}");
    // The old configuration still posts.
    append(&file, &["after".to_string()]);
    assert!(
        fake.wait_for(Duration::from_secs(10), |m| delivered(m).len() >= 2),
        "{log}"
    );
    assert_eq!(delivered(&fake.messages()), vec!["before", "after"]);
}

/// A `.env` line that does not parse (here a quote never closed after the
/// URL) stops `check` and `run` with one line naming the file and the line
/// number, never the line; a good `.env` is used under the environment,
/// the token masked.
#[test]
fn a_bad_dotenv_line_is_named_by_number_without_the_token() {
    let url = real_url();
    let mut env = Env::new("unused");
    env.unset("DISCORD_WEBHOOK_URL");
    let dotenv = env.dir.path().join(".env");
    std::fs::write(
        &dotenv,
        format!("BATCH_SIZE=3\nDISCORD_WEBHOOK_URL=\"{url}\nMAX_RETRIES=2\n"),
    )
    .unwrap();
    for args in [&["check"][..], &[]] {
        let (status, out, err) = env.run_to_end(args);
        assert_eq!(status.code(), Some(1), "{args:?}: {out} {err}");
        assert!(!leaks(&err), "token in stderr: {err}");
        assert!(!leaks(&out), "token in stdout: {out}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&format!("{}: line 2 is not KEY=VALUE", dotenv.display())),
            "names the file and the line: {err}"
        );
    }
    std::fs::write(
        &dotenv,
        format!(
            "# the bot\nexport DISCORD_WEBHOOK_URL='{url}' # posts here\nMAX_RETRIES=\"7\"\nBATCH_SIZE=3\n"
        ),
    )
    .unwrap();
    let (status, out, err) = env.run_to_end(&["check"]);
    assert_eq!(status.code(), Some(0), "{out} {err}");
    assert!(!leaks(&out) && !leaks(&err), "token printed: {out} {err}");
    assert!(
        out.contains(&format!(
            "DISCORD_WEBHOOK_URL = https://discord.com/api/webhooks/{ID}/****"
        )),
        "{out}"
    );
    assert!(out.contains("MAX_RETRIES = 7\n"), "{out}");
    // The environment (BATCH_SIZE=1) wins over the file.
    assert!(out.contains("BATCH_SIZE = 1\n"), "{out}");
}
