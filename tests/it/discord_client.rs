//! The Discord client's requests beyond a plain post (`?wait=true`, edits,
//! threads and forum posts) against the fake Discord: what the lead's
//! incidents and night card will rely on.

use std::time::Duration;

use crate::support::fake_discord::{CHANNEL_ID, FakeDiscord, Fault, Options};
use ekos_log_monitor::discord::{
    Client, NewFile, Outcome, Posted, Reply, Request, Sink, Snowflake, Thread, payload,
};
use ekos_log_monitor::webhook::Webhook;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn no_limit() -> FakeDiscord {
    FakeDiscord::start_with(Options {
        rate_limit: None,
        wait_delay: None,
        uplink: None,
    })
}

fn client(fake: &FakeDiscord) -> Client {
    Client::new(Webhook::parse(&fake.webhook_url()).expect("the fake's URL"))
}

fn posted(r: Reply) -> Posted {
    assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
    r.message.expect("the message")
}

fn wait_post(thread: Thread) -> Request {
    Request::Post { thread, wait: true }
}

#[test]
fn post_with_wait_then_edit_in_place() {
    let fake = no_limit();
    let mut c = client(&fake);
    let card =
        |n: u32| json!({"embeds": [{"title": "Star lost", "description": format!("{n} times")}]});
    let files = [NewFile {
        name: "ekos.log".into(),
        data: b"context line 1\ncontext line 2\n".to_vec(),
    }];
    let first = posted(c.send(
        &wait_post(Thread::Channel),
        &payload(&card(1), &files, None),
        T,
    ));
    assert_eq!(first.channel_id.as_str(), CHANNEL_ID);
    assert_eq!(first.attachments.len(), 1);
    let edit = Request::Edit {
        id: first.id.clone(),
        thread: None,
    };
    for n in 2..=4 {
        // `keep: None` without files leaves the context attachment alone.
        let e = posted(c.send(&edit, &payload(&card(n), &[], None), T));
        assert_eq!(e.id, first.id);
        assert_eq!(e.attachments, first.attachments);
    }
    let now = fake.message(first.id.as_str()).unwrap();
    assert_eq!(now.embeds[0]["description"], "4 times");
    assert_eq!(now.attachments[0].0, "ekos.log");
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.count_edits(first.id.as_str()), 3);
    // Replace the attachment: keep none of the old, add a new one.
    let newer = [NewFile {
        name: "ekos-2.log".into(),
        data: b"later context\n".to_vec(),
    }];
    let e = posted(c.send(&edit, &payload(&card(5), &newer, Some(&[])), T));
    assert_eq!(e.attachments.len(), 1);
    assert_ne!(e.attachments, first.attachments);
    let now = fake.message(first.id.as_str()).unwrap();
    assert_eq!(
        now.attachments,
        [("ekos-2.log".to_string(), b"later context\n".to_vec())]
    );
    // Keep it and add another.
    let e = posted(c.send(&edit, &payload(&card(6), &files, Some(&e.attachments)), T));
    assert_eq!(e.attachments.len(), 2);
    // A plain post still answers 204 and no message, as before.
    let plain = c.send(
        &Request::PLAIN,
        &payload(&json!({"content": "x"}), &[], None),
        T,
    );
    assert_eq!(plain.message, None);
    assert!(matches!(plain.outcome, Outcome::Delivered(_)));
}

#[test]
fn an_edit_of_a_deleted_message_is_gone_and_says_no_token() {
    let fake = no_limit();
    let mut c = client(&fake);
    let edit = Request::Edit {
        id: Snowflake::parse("1300000000000000999").unwrap(),
        thread: None,
    };
    let r = c.send(&edit, &payload(&json!({"content": "x"}), &[], None), T);
    match r.outcome {
        Outcome::Gone { why, .. } => {
            assert!(why.contains("Unknown Message"), "{why}");
            assert!(!why.contains(FakeDiscord::TOKEN), "{why}");
        }
        o => panic!("{o:?}"),
    }
    // An answer that quotes the URL (a proxy's page) is redacted too.
    let quoted = format!("upstream failed for {}", fake.webhook_url());
    fake.push_faults(FakeDiscord::WEBHOOK_ID, [Fault::Status(502, quoted)]);
    let r = c.send(&edit, &payload(&json!({"content": "x"}), &[], None), T);
    match r.outcome {
        Outcome::Retry { why } => {
            assert!(!why.contains(FakeDiscord::TOKEN), "{why}");
            assert!(why.contains(FakeDiscord::WEBHOOK_ID), "{why}");
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_forum_night_opens_its_post_and_posts_into_it() {
    let fake = no_limit();
    fake.set_forum(FakeDiscord::WEBHOOK_ID, true);
    let mut c = client(&fake);
    let body = payload(&json!({"content": "night card"}), &[], None);
    // Without a thread a forum channel refuses: the route would stop.
    let r = c.send(&Request::PLAIN, &body, T);
    assert!(
        matches!(r.outcome, Outcome::Stop { status: 400, .. }),
        "{r:?}"
    );
    // The night's first message opens the post; the rest go into it.
    let name = format!("Night of 2024-05-01: M31, M42 {}", "x".repeat(200));
    let card = posted(c.send(&wait_post(Thread::Open(name)), &body, T));
    let thread = card.channel_id.clone();
    assert_eq!(
        thread, card.id,
        "a forum post's thread has its first message's id"
    );
    let threads = fake.threads();
    assert_eq!(threads.len(), 1);
    assert!(threads[0].1.starts_with("Night of 2024-05-01: M31, M42 xx"));
    assert_eq!(threads[0].1.chars().count(), 100, "cut to Discord's limit");
    let into = Request::Post {
        thread: Thread::In(thread.clone()),
        wait: false,
    };
    let lines = payload(&json!({"content": "```\nline\n```"}), &[], None);
    let r = c.send(&into, &lines, T);
    assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
    assert_eq!(fake.messages()[1].channel_id, thread.as_str());
    // Editing the card needs its thread.
    let card_edit = payload(&json!({"content": "night card, 5 frames"}), &[], None);
    let lost = Request::Edit {
        id: card.id.clone(),
        thread: None,
    };
    assert!(matches!(
        c.send(&lost, &card_edit, T).outcome,
        Outcome::Gone { .. }
    ));
    let found = Request::Edit {
        id: card.id.clone(),
        thread: Some(thread.clone()),
    };
    let e = posted(c.send(&found, &card_edit, T));
    assert_eq!(e.channel_id, thread);
    // A thread that does not exist (deleted): gone, post a new one.
    let deleted = Request::Post {
        thread: Thread::In(Snowflake::parse("1300000000000000999").unwrap()),
        wait: true,
    };
    assert!(matches!(
        c.send(&deleted, &lines, T).outcome,
        Outcome::Gone { .. }
    ));
}

#[test]
fn edits_and_posts_share_the_rate_limit() {
    let fake = FakeDiscord::start_with(Options {
        rate_limit: Some((3, Duration::from_secs(5))),
        wait_delay: None,
        uplink: None,
    });
    let mut c = client(&fake);
    let body = payload(&json!({"content": "x"}), &[], None);
    let first = posted(c.send(&wait_post(Thread::Channel), &body, T));
    let edit = Request::Edit {
        id: first.id,
        thread: None,
    };
    let r = c.send(&edit, &body, T);
    assert!(matches!(r.outcome, Outcome::Delivered(_)));
    match c.send(&edit, &body, T).outcome {
        Outcome::Delivered(info) => {
            assert_eq!(info.remaining, Some(0));
            assert!(info.reset_after.is_some());
        }
        o => panic!("{o:?}"),
    }
    match c.post(&body, T) {
        Outcome::RateLimited { wait, .. } => assert!(wait > Duration::ZERO),
        o => panic!("{o:?}"),
    }
    assert_eq!(fake.count_429(), 1);
}
