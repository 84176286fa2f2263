//! The one integration-test binary: every test that drives the real
//! `ekos-log-monitor` binary against the fake Discord (`support`), one
//! module per subject. One binary, not one per file: the support code
//! (the fake Discord alone is 1,500 lines) is compiled and linked once.
//! Run one subject with `cargo test --test it <module>::`.

#[path = "../support/mod.rs"]
mod support;

mod discord_client;
mod events;
mod fake_discord_selftest;
mod faults;
mod follow;
mod forum;
mod heartbeat;
mod lose_nothing;
mod night_card;
mod nightwatch;
mod notice_reload;
mod probes;
mod probes_issue11;
mod probes_issue11b;
mod rewrites_and_links;
mod secrets;
mod setup;
mod startup;
mod unit_directives;
mod watchdog;
