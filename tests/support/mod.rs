pub mod daemon;
pub mod ekos_lines;
pub mod fake_discord;
pub mod notify;
pub mod pings;
pub mod unit_directives;
