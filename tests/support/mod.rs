pub mod daemon;
pub mod fake_discord;
