//! The night watch: what the daemon says on its own about the night, from
//! the log lines alone.
//!
//! Placeholder of branch wip-w2 (helper w2) for its pure parts, to be
//! merged with helper w1's actor: [`expect`] (`[[expect]]` deadlines) and
//! [`card`] (the night card).

pub mod card;
pub mod expect;
