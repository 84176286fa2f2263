//! Start-up with a large checkpoint: every file of a 3,000-file directory
//! rotated while the daemon was stopped leaves 3,000 records to find again
//! by inode. Listing the directory once per record made this quadratic
//! (tens of seconds, with SIGTERM ignored until READY); the daemon must
//! stop at once when asked during such a start-up, and finish the rotated
//! files when let through.

use std::time::Duration;

use crate::support::daemon::{Env, append, loss_and_dups, tokens};
use crate::support::fake_discord::{FakeDiscord, Options, delivered};

const FILES: usize = 3000;

#[test]
fn sigterm_during_a_large_restart_is_honoured_at_once_and_rotations_are_finished() {
    let fake = FakeDiscord::start_with(Options {
        rate_limit: Some((50, Duration::from_secs(1))),
        ..Options::default()
    });
    let mut env = Env::new(&fake.webhook_url());
    env.set("BATCH_SIZE", "50").set("BATCH_TIMEOUT", "0.1");
    let root = env.dir.path().join("many");
    std::fs::create_dir_all(&root).unwrap();
    env.write_config(&format!(
        "[[source]]\nname = \"many\"\nroot = \"{}\"\ninclude = [\"*.log\"]\nfollow = \"all\"\n",
        root.display()
    ));
    let file = |i: usize| root.join(format!("f{i:05}.log"));
    for i in 0..FILES {
        append(&file(i), &[format!("old line of {i}")]);
    }
    let d = env.start(&[]);
    assert!(crate::support::daemon::wait_until(
        Duration::from_secs(30),
        || { d.stderr().matches("following ").count() > FILES }
    ));
    let (status, _, _) = d.stop();
    assert!(status.success());

    // While stopped: one file gets lines, then every file is rotated.
    let late = tokens("late", 0..10);
    append(&file(7), &late);
    for i in 0..FILES {
        std::fs::rename(file(i), format!("{}.1", file(i).display())).unwrap();
        append(&file(i), &[]);
    }

    let d = env.start(&[]);
    let (status, took, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM during start-up took {took:?}"
    );

    // Let through, it finds the rotated file by inode and posts its lines.
    let d = env.start(&[]);
    let ok = fake.wait_for(Duration::from_secs(30), |m| {
        loss_and_dups(&late, &delivered(m)).0.is_empty()
    });
    assert!(ok, "{}", d.stderr());
    let (lost, dups) = loss_and_dups(&late, &delivered(&fake.messages()));
    assert!(
        lost.is_empty() && dups == 0,
        "lost {lost:?}, {dups} duplicates"
    );
}
