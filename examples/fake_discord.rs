//! Stand-alone fake Discord webhook server for benchmarks and the system test.
//!
//! fake_discord [--listen 127.0.0.1:0] [--out FILE] [--port-file FILE]
//!              [--limit 5] [--window 2.0] [--no-rate-limit] [--forum]
//!
//! Prints `listening on http://127.0.0.1:PORT`, then appends one JSON line per
//! accepted message (`"kind":"post"`), per accepted edit (`"kind":"edit"`,
//! with the edited `message_id` and the message as it is after the edit) and
//! per 429 to --out (default stdout). Runs until killed. `--forum` makes
//! every webhook a forum channel's (a POST then needs `thread_name` or
//! `?thread_id=`).
//! Switch failure modes with e.g. `curl -d 'fail500 3' http://127.0.0.1:PORT/control/mode`
//! (normal | fail500 N | down | slow MS | notfound | html429 N).

#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;

use fake_discord::{Event, FakeDiscord, Options};
use serde_json::json;
use std::io::Write;
use std::process::exit;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: fake_discord [--listen 127.0.0.1:0] [--out FILE] [--port-file FILE] \
                     [--limit 5] [--window 2.0] [--no-rate-limit] [--forum]";

fn fail(msg: &str) -> ! {
    eprintln!("fake_discord: {msg}\n{USAGE}");
    exit(2)
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let (mut out, mut port_file) = (None, None);
    let (mut limit, mut window, mut rate_limited) = (5u32, 2.0f64, true);
    let mut forum = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value(),
            "--out" => out = Some(value()),
            "--port-file" => port_file = Some(value()),
            "--limit" => limit = value().parse().unwrap_or_else(|_| fail("bad --limit")),
            "--window" => {
                window = value().parse().unwrap_or_else(|_| fail("bad --window"));
                if !(window.is_finite() && window > 0.0) {
                    fail("bad --window");
                }
            }
            "--no-rate-limit" => rate_limited = false,
            "--forum" => forum = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => fail(&format!("unknown argument {arg}")),
        }
    }
    let opts = Options {
        rate_limit: rate_limited.then(|| (limit, Duration::from_secs_f64(window))),
        wait_delay: None,
        uplink: None,
    };
    let server = FakeDiscord::start_on(listen.as_str(), opts).unwrap_or_else(|e| {
        eprintln!("fake_discord: cannot listen on {listen}: {e}");
        exit(1)
    });
    server.set_forum_all(forum);
    let sink: Box<dyn Write + Send> = match &out {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| {
                    eprintln!("fake_discord: cannot open {path}: {e}");
                    exit(1)
                }),
        ),
    };
    let sink = Mutex::new(sink);
    server.on_event(move |ev| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = match ev {
            Event::Accepted(m) | Event::Edited(m) => {
                let files: Vec<_> = m
                    .attachments
                    .iter()
                    .map(|(name, data)| json!({"filename": name, "size": data.len()}))
                    .collect();
                json!({
                    "t": t, "kind": if m.edit { "edit" } else { "post" },
                    "webhook_id": m.webhook_id, "message_id": m.message_id,
                    "channel_id": m.channel_id, "content": m.content, "embeds": m.embeds,
                    "body": m.body, "attachments": files,
                })
            }
            Event::RateLimited {
                webhook_id,
                retry_after,
            } => {
                json!({"t": t, "status": 429, "webhook_id": webhook_id, "retry_after": retry_after})
            }
        };
        let mut w = sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    });
    let addr = server.addr();
    if let Some(path) = &port_file {
        // Write-then-rename so a polling script never reads an empty file.
        let tmp = format!("{path}.tmp");
        let written = std::fs::write(&tmp, format!("{}\n", addr.port()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            eprintln!("fake_discord: cannot write {path}: {e}");
            exit(1);
        }
    }
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
