//! Messages the daemon writes itself (silence alerts, incidents, the night
//! card, `[[expect]]` alerts), as pure producers return them.
//!
//! Placeholder with exactly the agreed definition (BRIEF.md, owner: helper
//! w1), so that the producers of branch wip-w2 can build notices; w1's
//! module replaces it.

use std::time::Duration;

use crate::discord;

#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub route: usize,
    pub key: String,
    pub body: serde_json::Value,
    pub files: Vec<discord::NewFile>,
    pub policy: Policy,
}

/// New: always a new message; Upsert: edit the message last posted under
/// `key` (post it if none or gone), at most once per `min_interval` (the
/// newest body wins; the last one is never lost); Final: like Upsert but
/// sent at once, ignoring the interval, and the key is then closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    New,
    Upsert { min_interval: Duration },
    Final,
}
