pub mod daemon;
pub mod fake_discord;
pub mod notify;
pub mod pings;
