//! Forum routes (`forum = true`): a webhook of a Discord forum channel
//! takes no message outside a thread (a forum post), so each night gets
//! its own post and every message of that night — log lines, notices,
//! edits — goes into it.
//!
//! This module is the pure part: given the thread known for the current
//! night (if any), where the next request goes ([`place`]) and how the
//! request is changed for it ([`shape`]); given the answer, what is
//! learned about the night's thread ([`learn`]). The first message of a
//! night opens the post (`thread_name`, `?wait=true`: the answer's
//! `channel_id` is the new thread's id); the thread id is kept per night
//! under [`key`] in the notice lane's table, so it survives a restart.
//! A post into the thread that Discord answers `Gone` (the thread was
//! deleted or archived) forgets it: the message is posted again (the
//! route's `Repost`), which opens a new thread; nothing is committed
//! until Discord accepted it, and the route keeps its order because it
//! has one request in flight at a time.
//!
//! A message's thread is kept with it in the notice lane's table, so an
//! incident or card posted in last night's post is edited there after
//! `night_start`. The night's targets that name a new post
//! (`Stats::note_target`) are kept in memory only: a restart between the
//! first target of a night and that night's first message names the post
//! by its date alone (and once open, a post's name never changes).

use crate::discord::{Outcome, Reply, Request, Thread, ThreadId, with_thread_name};
use crate::format::Payload;
use crate::localtime::Local;

/// The prefix of the notice-table keys that hold a night's thread.
pub const KEY_PREFIX: &str = "forum-thread:";

/// The notice-table key of night `night`'s thread (a day number).
pub fn key(night: i64) -> String {
    format!("{KEY_PREFIX}{}", night_date(night))
}

/// `2026-11-29`: the date of the night's evening.
pub fn night_date(night: i64) -> String {
    Local {
        day: night,
        secs: 0,
    }
    .date_string()
}

/// The forum post's name: "Night of 2026-11-29 — M31, NGC 7000", just
/// the date before a target is known; cut to Discord's limit.
pub fn name(night: i64, targets: &[String]) -> String {
    let date = night_date(night);
    let name = if targets.is_empty() {
        format!("Night of {date}")
    } else {
        format!("Night of {date} — {}", targets.join(", "))
    };
    crate::discord::thread_name(&name)
}

/// Where the next request of a forum route goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Into the night's thread.
    In(ThreadId),
    /// Opening the night's thread with this name.
    Open(String),
}

/// The night's thread if known, else a new one named after the night.
pub fn place(thread: Option<&ThreadId>, night: i64, targets: &[String]) -> Place {
    match thread {
        Some(t) => Place::In(t.clone()),
        None => Place::Open(name(night, targets)),
    }
}

/// The request (and body) as sent on a forum route. A post goes into the
/// thread, or opens it (asking for the message, whose `channel_id` is the
/// thread); an edit goes to the thread its message lives in, which the
/// notice lane keeps with the message ([`super::notices::Kept::thread`]):
/// an incident opened in last night's post is edited there, not posted
/// again in tonight's. An edit whose thread is not known (a state file of
/// an older version) names the night's thread; if the night has none, the
/// message is in another (older or deleted) thread: it goes without one,
/// Discord answers Unknown Message (`Gone`), and the notice lane posts it
/// anew, which opens the thread. A body that cannot carry a name is sent
/// as it is (Discord then refuses it and the route stops).
pub fn shape(req: Request, payload: Payload, place: &Place) -> (Request, Payload) {
    match (req, place) {
        (Request::Post { wait, .. }, Place::In(t)) => (
            Request::Post {
                thread: Thread::In(t.clone()),
                wait,
            },
            payload,
        ),
        (Request::Post { .. }, Place::Open(name)) => {
            let named = with_thread_name(&payload, name).unwrap_or(payload);
            (
                Request::Post {
                    thread: Thread::Open(name.clone()),
                    wait: true,
                },
                named,
            )
        }
        (
            Request::Edit {
                id,
                thread: Some(t),
            },
            _,
        ) => (
            Request::Edit {
                id,
                thread: Some(t),
            },
            payload,
        ),
        (Request::Edit { id, thread: None }, Place::In(t)) => (
            Request::Edit {
                id,
                thread: Some(t.clone()),
            },
            payload,
        ),
        (Request::Edit { id, thread: None }, Place::Open(_)) => {
            (Request::Edit { id, thread: None }, payload)
        }
    }
}

/// What an answer teaches about the night's thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    Nothing,
    /// The post opened this thread: keep it for the night.
    Opened(ThreadId),
    /// A post into this thread found it gone: forget it.
    Lost(ThreadId),
}

/// Reads the answer to `sent`. Only a post tells: an edit's `Gone` may
/// mean the message alone was deleted, and the post that follows it
/// settles whether the thread is still there.
pub fn learn(sent: &Request, reply: &Reply) -> Learned {
    match (sent, &reply.outcome) {
        (
            Request::Post {
                thread: Thread::Open(_),
                ..
            },
            Outcome::Delivered(_),
        ) => match &reply.message {
            Some(m) => Learned::Opened(m.channel_id.clone()),
            // A proxy that strips bodies: the next message opens another.
            None => Learned::Nothing,
        },
        (
            Request::Post {
                thread: Thread::In(t),
                ..
            },
            Outcome::Gone { .. },
        ) => Learned::Lost(t.clone()),
        _ => Learned::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discord::{Posted, RateInfo, Snowflake};

    fn sf(s: &str) -> Snowflake {
        Snowflake::parse(s).unwrap()
    }

    fn night(y: i64, m: u32, d: u32) -> i64 {
        crate::localtime::days_from_civil(y, m, d)
    }

    fn body() -> Payload {
        crate::discord::payload(&serde_json::json!({"content": "a line"}), &[], None)
    }

    fn json(p: &Payload) -> serde_json::Value {
        serde_json::from_slice(&p.body).unwrap()
    }

    fn reply(outcome: Outcome, message: Option<(&str, &str)>) -> Reply {
        Reply {
            outcome,
            message: message.map(|(id, ch)| Posted {
                id: sf(id),
                channel_id: sf(ch),
                attachments: Vec::new(),
            }),
        }
    }

    fn gone() -> Outcome {
        Outcome::Gone {
            info: RateInfo::default(),
            why: "the thread was deleted".into(),
        }
    }

    #[test]
    fn a_night_is_named_by_its_date_then_its_targets_within_discords_limit() {
        let n = night(2026, 11, 29);
        assert_eq!(name(n, &[]), "Night of 2026-11-29");
        assert_eq!(
            name(n, &["M31".into(), "NGC 7000".into()]),
            "Night of 2026-11-29 — M31, NGC 7000"
        );
        let many: Vec<String> = (0..40).map(|i| format!("Target {i}")).collect();
        let long = name(n, &many);
        assert_eq!(long.chars().count(), 100);
        assert!(
            long.starts_with("Night of 2026-11-29 — Target 0, "),
            "{long}"
        );
        assert_eq!(key(n), "forum-thread:2026-11-29");
        assert_ne!(key(n), key(n + 1));
    }

    #[test]
    fn the_first_message_of_a_night_opens_its_thread_later_ones_go_into_it() {
        let n = night(2026, 11, 29);
        let open = place(None, n, &["M31".into()]);
        assert_eq!(open, Place::Open("Night of 2026-11-29 — M31".into()));
        let (req, p) = shape(Request::PLAIN, body(), &open);
        assert_eq!(
            req,
            Request::Post {
                thread: Thread::Open("Night of 2026-11-29 — M31".into()),
                wait: true
            }
        );
        assert_eq!(json(&p)["thread_name"], "Night of 2026-11-29 — M31");
        assert_eq!(json(&p)["content"], "a line");

        let t = sf("900");
        let into = place(Some(&t), n, &["M31".into()]);
        assert_eq!(into, Place::In(t.clone()));
        let (req, p) = shape(Request::PLAIN, body(), &into);
        assert_eq!(
            req,
            Request::Post {
                thread: Thread::In(t.clone()),
                wait: false
            }
        );
        assert!(json(&p).get("thread_name").is_none());
        // A notice's post keeps asking for its message.
        let notice = Request::Post {
            thread: Thread::Channel,
            wait: true,
        };
        assert_eq!(
            shape(notice, body(), &into).0,
            Request::Post {
                thread: Thread::In(t.clone()),
                wait: true
            }
        );
    }

    #[test]
    fn edits_name_the_nights_thread_or_none_when_it_has_none() {
        let t = sf("900");
        let edit = Request::Edit {
            id: sf("5"),
            thread: None,
        };
        assert_eq!(
            shape(edit.clone(), body(), &Place::In(t.clone())).0,
            Request::Edit {
                id: sf("5"),
                thread: Some(t)
            }
        );
        let (req, p) = shape(edit.clone(), body(), &Place::Open("Night".into()));
        assert_eq!(req, edit);
        // An edit never opens a thread.
        assert!(json(&p).get("thread_name").is_none());
    }

    #[test]
    fn an_edit_goes_to_the_thread_its_message_lives_in_not_tonights() {
        let last_night = sf("800");
        let tonight = sf("900");
        let edit = Request::Edit {
            id: sf("5"),
            thread: Some(last_night.clone()),
        };
        for place in [Place::In(tonight), Place::Open("Night".into())] {
            let (req, p) = shape(edit.clone(), body(), &place);
            assert_eq!(req, edit, "{place:?}");
            assert!(json(&p).get("thread_name").is_none());
        }
    }

    #[test]
    fn an_opening_post_teaches_the_thread_a_gone_post_loses_it() {
        let open = Request::Post {
            thread: Thread::Open("Night".into()),
            wait: true,
        };
        let ok = Outcome::Delivered(RateInfo::default());
        assert_eq!(
            learn(&open, &reply(ok.clone(), Some(("901", "901")))),
            Learned::Opened(sf("901"))
        );
        // No body: nothing known, the next message opens again.
        assert_eq!(learn(&open, &reply(ok.clone(), None)), Learned::Nothing);
        let retry = Outcome::Retry { why: "503".into() };
        assert_eq!(learn(&open, &reply(retry, None)), Learned::Nothing);

        let t = sf("901");
        let into = Request::Post {
            thread: Thread::In(t.clone()),
            wait: false,
        };
        assert_eq!(learn(&into, &reply(gone(), None)), Learned::Lost(t.clone()));
        assert_eq!(
            learn(&into, &reply(ok.clone(), Some(("902", "901")))),
            Learned::Nothing
        );
        // An edit's Gone may be the message alone.
        let edit = Request::Edit {
            id: sf("5"),
            thread: Some(t),
        };
        assert_eq!(learn(&edit, &reply(gone(), None)), Learned::Nothing);
    }
}
