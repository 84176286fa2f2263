//! unit_directives FILE...: check unit files and drop-ins against the
//! table of tests/support/unit_directives.rs; prints each problem as
//! `FILE: line N: ...` and exits 1 if any (0 if none). The system test runs
//! it on what it finds in the booted container, e.g. the drop-ins
//! `ekos-log-monitor setup` wrote.

#[path = "../tests/support/unit_directives.rs"]
mod unit_directives;

use std::process::ExitCode;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: unit_directives FILE...");
        return ExitCode::from(2);
    }
    let mut bad = false;
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                for p in unit_directives::check_text(&text, unit_directives::OLDEST_SYSTEMD) {
                    println!("{f}: {p}");
                    bad = true;
                }
            }
            Err(e) => {
                println!("{f}: cannot read: {e}");
                bad = true;
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
