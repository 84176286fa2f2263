//! Writes the watcher must notice although nothing announces them well: a
//! file written through a hard link in a directory inotify does not watch,
//! a log rewritten with `>` that keeps its first 512 bytes (to the same
//! length, or longer than what was read), and the same rewrite while the
//! daemon is stopped. Every line carries a unique token; each test counts
//! what reaches the fake Discord.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::daemon::{Env, append, loss_and_dups, tokens};
use crate::support::fake_discord::{FakeDiscord, Options, delivered};

fn fast_fake() -> FakeDiscord {
    FakeDiscord::start_with(Options {
        rate_limit: Some((50, Duration::from_secs(1))),
        ..Options::default()
    })
}

/// An environment following every `*.log` under `<tmp>/jobs`.
fn jobs_env(fake: &FakeDiscord) -> (Env, PathBuf) {
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "10").set("BATCH_TIMEOUT", "0.1");
    let root = env.dir.path().join("jobs");
    std::fs::create_dir_all(&root).unwrap();
    env.write_config(&format!(
        "[[source]]\nname = \"jobs\"\nroot = \"{}\"\ninclude = [\"**/*.log\"]\nfollow = \"all\"\n",
        root.display()
    ));
    (env, root)
}

/// A header longer than the 512 bytes that identify a file's content.
fn header() -> String {
    format!("job header {}", "=".repeat(600))
}

/// Writes `path` the way a shell's `>` does: truncate, then write.
fn rewrite(path: &Path, lines: &[String]) {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Overwrites `path` from its first byte without truncating it first, so
/// no reader can see it shorter: what a `>` looks like to a reader that
/// was busy between the truncation and the write.
fn overwrite(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(s.as_bytes()).unwrap();
    assert!(f.metadata().unwrap().len() == s.len() as u64, "longer only");
}

fn assert_delivered(fake: &FakeDiscord, expected: &[String], log: &str) {
    let ok = fake.wait_for(Duration::from_secs(20), |m| {
        loss_and_dups(expected, &delivered(m)).0.is_empty()
    });
    let (lost, dups) = loss_and_dups(expected, &delivered(&fake.messages()));
    assert!(
        ok && lost.is_empty(),
        "lost {} of {}: {:?}\n{log}",
        lost.len(),
        expected.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(dups, 0, "duplicates\n{log}");
}

#[test]
fn a_hard_link_written_outside_the_watched_tree_is_read_by_the_rescan() {
    let fake = fast_fake();
    let (mut env, root) = jobs_env(&fake);
    // inotify reports a write only to watches on the directory of the name
    // it was made through: the rescan's stat is what finds these lines.
    env.set("FILE_CHECK_INTERVAL", "0.5");
    let file = root.join("linked.log");
    append(&file, &[]);
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other = elsewhere.join("other-name.log");
    std::fs::hard_link(&file, &other).unwrap();
    let d = env.start(&[]);
    let a = tokens("link", 0..20);
    for chunk in a.chunks(5) {
        append(&other, chunk);
    }
    assert_delivered(&fake, &a, &d.stderr());
}

#[test]
fn a_same_length_rewrite_with_the_same_header_is_read_again() {
    let fake = fast_fake();
    let (env, root) = jobs_env(&fake);
    let file = root.join("cron.log");
    append(&file, &[]);
    let d = env.start(&[]);
    let a = tokens("first", 0..20);
    rewrite(&file, &[vec![header()], a.clone()].concat());
    assert_delivered(&fake, &a, &d.stderr());
    let b = tokens("again", 0..20);
    let first_len = std::fs::metadata(&file).unwrap().len();
    rewrite(&file, &[vec![header()], b.clone()].concat());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), first_len);
    assert_delivered(&fake, &[a, b].concat(), &d.stderr());
}

#[test]
fn a_longer_rewrite_with_the_same_header_is_read_from_the_start() {
    let fake = fast_fake();
    let (env, root) = jobs_env(&fake);
    let file = root.join("job.log");
    append(&file, &[]);
    let d = env.start(&[]);
    let a = tokens("run1", 0..20);
    rewrite(&file, &[vec![header()], a.clone()].concat());
    assert_delivered(&fake, &a, &d.stderr());
    let b = tokens("run2", 0..60);
    overwrite(&file, &[vec![header()], b.clone()].concat());
    assert_delivered(&fake, &[a.clone(), b.clone()].concat(), &d.stderr());
    // And with a real `>` (the truncation may or may not be seen).
    let c = tokens("run3", 0..60);
    rewrite(&file, &[vec![header()], c.clone()].concat());
    assert_delivered(&fake, &[a, b, c].concat(), &d.stderr());
}

#[test]
fn a_rewrite_while_stopped_is_read_from_the_start_after_a_restart() {
    let fake = fast_fake();
    let (env, root) = jobs_env(&fake);
    let same = root.join("same-length.log");
    let longer = root.join("longer.log");
    append(&same, &[]);
    append(&longer, &[]);
    let d = env.start(&[]);
    let a1 = tokens("same-a", 0..20);
    let a2 = tokens("long-a", 0..20);
    rewrite(&same, &[vec![header()], a1.clone()].concat());
    rewrite(&longer, &[vec![header()], a2.clone()].concat());
    assert_delivered(&fake, &[a1.clone(), a2.clone()].concat(), &d.stderr());
    let (status, _, _) = d.stop();
    assert!(status.success());

    let b1 = tokens("same-b", 0..20);
    let b2 = tokens("long-b", 0..50);
    rewrite(&same, &[vec![header()], b1.clone()].concat());
    rewrite(&longer, &[vec![header()], b2.clone()].concat());
    let d = env.start(&[]);
    assert_delivered(&fake, &[a1, a2, b1, b2].concat(), &d.stderr());
}
