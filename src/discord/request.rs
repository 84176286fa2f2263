//! What a request to the webhook asks for, beyond "post this": Discord's
//! answer with the created message (`?wait=true`), an edit of an earlier
//! message (`PATCH .../messages/{id}`), a message in a thread
//! (`?thread_id=`) or a new forum post (`thread_name`).
//!
//! Everything here is pure: [`request_url`] builds the URL from the
//! webhook's, [`with_thread_name`] puts a forum post's name into a body,
//! [`payload`] builds the body of a message the daemon writes itself (an
//! incident, the night card) with its files, and [`Posted::parse`] reads
//! the message object Discord answers with. The URL holds the webhook's
//! token, so it is never logged nor put in an error: only the ids are.

use std::fmt;

use crate::format::Payload;

/// Discord's longest thread (forum post) name, in code points.
pub const THREAD_NAME_MAX: usize = 100;

/// A Discord id (of a message, a thread or an attachment) as Discord
/// writes it in JSON: a string of decimal digits. Kept as text, so it goes
/// back to Discord exactly as it came, and stored as such in the state.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Snowflake(String);

/// The id of a message.
pub type MessageId = Snowflake;
/// The id of a thread (a forum post is one): a channel id.
pub type ThreadId = Snowflake;

impl Snowflake {
    /// Accepts 1 to 20 decimal digits (a snowflake is a 64-bit integer).
    pub fn parse(s: &str) -> Option<Snowflake> {
        let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| Snowflake(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Snowflake {
    type Error = RequestError;

    fn try_from(s: String) -> Result<Snowflake, RequestError> {
        Snowflake::parse(&s).ok_or(RequestError::NotSnowflake { shown: short(&s) })
    }
}

impl From<Snowflake> for String {
    fn from(s: Snowflake) -> String {
        s.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{shown:?} is not a Discord id: expected up to 20 decimal digits")]
    NotSnowflake { shown: String },
    #[error(
        "cannot name a forum post in this request body: it is neither JSON nor multipart with payload_json"
    )]
    Unreadable,
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Where in the webhook's channel a new message goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Thread {
    /// Where the webhook URL points: its channel, or the thread of the
    /// URL's own `?thread_id=`.
    #[default]
    Channel,
    /// Into this existing thread (`?thread_id=`); Discord unarchives it.
    In(ThreadId),
    /// A new forum post with this name (`thread_name` in the body; cut to
    /// [`THREAD_NAME_MAX`]): only in a forum channel, and only with `wait`
    /// does the answer say the new thread's id ([`Posted::channel_id`]).
    Open(String),
}

/// What one request to the webhook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A new message (`POST`). With `wait`, Discord answers with the
    /// created message (200 and [`Posted`]) rather than 204, and only once
    /// it is saved.
    Post { thread: Thread, wait: bool },
    /// An edit (`PATCH .../messages/{id}`) of a message this webhook
    /// posted; `thread` is the thread the message is in (Discord does not
    /// find it otherwise: 404 Unknown Message). `None` keeps the URL's own
    /// `thread_id`, if it has one.
    Edit {
        id: MessageId,
        thread: Option<ThreadId>,
    },
}

impl Request {
    /// A plain post, what the log lines use: the webhook URL as configured,
    /// answered 204.
    pub const PLAIN: Request = Request::Post {
        thread: Thread::Channel,
        wait: false,
    };

    pub fn method(&self) -> &'static str {
        match self {
            Request::Post { .. } => "POST",
            Request::Edit { .. } => "PATCH",
        }
    }

    /// The thread this request names itself (not the URL's): when Discord
    /// says that channel is unknown, the thread is gone.
    pub fn thread(&self) -> Option<&ThreadId> {
        match self {
            Request::Post {
                thread: Thread::In(t),
                ..
            }
            | Request::Edit {
                thread: Some(t), ..
            } => Some(t),
            _ => None,
        }
    }

    /// Whether Discord answers with the message (then [`Posted::parse`]).
    pub fn answers_message(&self) -> bool {
        matches!(
            self,
            Request::Post { wait: true, .. } | Request::Edit { .. }
        )
    }
}

/// The URL of `req` for the webhook URL `webhook_url` (as configured,
/// maybe with a query of its own): an edit adds `/messages/{id}`, and the
/// query gets `wait=true` and `thread_id` as asked (a new forum post drops
/// the URL's `thread_id`, which Discord refuses beside a `thread_name`).
/// A plain post is the webhook URL itself, byte for byte. Holds the token:
/// never log it.
pub fn request_url(webhook_url: &str, req: &Request) -> String {
    if *req == Request::PLAIN {
        return webhook_url.to_string();
    }
    let url = webhook_url.split('#').next().unwrap_or("");
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let mut set = |key: &str, value: Option<&str>| {
        params.retain(|(k, _)| k != key);
        if let Some(v) = value {
            params.push((key.to_string(), v.to_string()));
        }
    };
    let mut path = path.trim_end_matches('/').to_string();
    match req {
        Request::Post { thread, wait } => {
            match thread {
                Thread::Channel => {}
                Thread::In(t) => set("thread_id", Some(t.as_str())),
                Thread::Open(_) => set("thread_id", None),
            }
            if *wait {
                set("wait", Some("true"));
            }
        }
        Request::Edit { id, thread } => {
            path.push_str("/messages/");
            path.push_str(id.as_str());
            set("wait", None);
            if let Some(t) = thread {
                set("thread_id", Some(t.as_str()));
            }
        }
    }
    if params.is_empty() {
        return path;
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", query.join("&"))
}

/// `name` made acceptable as a thread name: trimmed, at most
/// [`THREAD_NAME_MAX`] code points, never empty (Discord refuses both).
pub fn thread_name(name: &str) -> String {
    let name: String = name.trim().chars().take(THREAD_NAME_MAX).collect();
    match name.trim_end() {
        "" => "ekos-log-monitor".to_string(),
        n => n.to_string(),
    }
}

/// `payload` with `"thread_name": name` (see [`thread_name`]) in its JSON:
/// the body itself, or a multipart body's `payload_json` part.
pub fn with_thread_name(payload: &Payload, name: &str) -> Result<Payload, RequestError> {
    let name = thread_name(name);
    let set = |json: &[u8]| -> Result<Vec<u8>, RequestError> {
        let mut v: serde_json::Value =
            serde_json::from_slice(json).map_err(|_| RequestError::Unreadable)?;
        let obj = v.as_object_mut().ok_or(RequestError::Unreadable)?;
        obj.insert("thread_name".into(), name.clone().into());
        Ok(serde_json::to_vec(&v).expect("a JSON value always serializes"))
    };
    let printable = set(&payload.printable).unwrap_or_else(|_| payload.printable.clone());
    let ctype = payload.content_type.to_ascii_lowercase();
    let body = if ctype.starts_with("application/json") {
        set(&payload.body)?
    } else if ctype.starts_with("multipart/form-data") {
        let boundary = payload
            .content_type
            .split(';')
            .skip(1)
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"').to_string())
            })
            .ok_or(RequestError::Unreadable)?;
        let (start, end) = json_part(&payload.body, &boundary).ok_or(RequestError::Unreadable)?;
        let json = set(&payload.body[start..end])?;
        let mut body = Vec::with_capacity(payload.body.len() + name.len() + 20);
        body.extend_from_slice(&payload.body[..start]);
        body.extend_from_slice(&json);
        body.extend_from_slice(&payload.body[end..]);
        body
    } else {
        return Err(RequestError::Unreadable);
    };
    Ok(Payload {
        content_type: payload.content_type.clone(),
        body,
        printable,
    })
}

/// The byte range of the `payload_json` part's data in a multipart body.
fn json_part(body: &[u8], boundary: &str) -> Option<(usize, usize)> {
    let delim = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    for w in starts.windows(2) {
        let part = &body[w[0] + delim.len()..w[1]];
        let head_end = memchr::memmem::find(part, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&part[..head_end]).to_ascii_lowercase();
        let named = head
            .split("\r\n")
            .any(|l| l.starts_with("content-disposition:") && l.contains("name=\"payload_json\""));
        if named {
            let start = w[0] + delim.len() + head_end + 4;
            // The data ends at the CRLF before the next delimiter.
            let end = w[1].checked_sub(2).filter(|&e| e >= start)?;
            return (&body[end..w[1]] == b"\r\n").then_some((start, end));
        }
    }
    None
}

/// A file to attach to a message the daemon writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub name: String,
    pub data: Vec<u8>,
}

/// The body of a message the daemon writes itself (an incident, the night
/// card), new or edited. `json` is the message: `content`, `embeds`,
/// `allowed_mentions`... Without files and without `keep`, the body is
/// that JSON. Otherwise it is multipart, `payload_json` plus `files[n]`,
/// and the JSON's `attachments` lists what the message has afterwards: the
/// existing attachments in `keep` (an edit: each [`Posted::attachments`]
/// to keep; the others are removed), then the new files. For an edit,
/// `keep: None` without files leaves the existing attachments as they are;
/// with files, pass the ids to keep (API v10 removes those not listed).
pub fn payload(json: &serde_json::Value, files: &[NewFile], keep: Option<&[Snowflake]>) -> Payload {
    let mut meta = json.clone();
    if files.is_empty() && keep.is_none() {
        let body = serde_json::to_vec(&meta).expect("a JSON value always serializes");
        return Payload {
            content_type: "application/json".into(),
            printable: body.clone(),
            body,
        };
    }
    // A file name goes in a quoted header: nothing that could end it.
    let clean = |n: &str| -> String {
        n.chars()
            .map(|c| {
                if c == '"' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    let mut listed: Vec<serde_json::Value> = keep
        .unwrap_or(&[])
        .iter()
        .map(|id| serde_json::json!({ "id": id.as_str() }))
        .collect();
    for (n, f) in files.iter().enumerate() {
        listed.push(serde_json::json!({ "id": n, "filename": clean(&f.name) }));
    }
    if let Some(obj) = meta.as_object_mut() {
        obj.insert("attachments".into(), listed.into());
    }
    let payload_json = serde_json::to_vec(&meta).expect("a JSON value always serializes");
    // A boundary that occurs in no file (checked, then varied).
    let mut all = Vec::new();
    for f in files {
        all.extend_from_slice(&f.data);
    }
    let mut boundary = format!(
        "ekos-log-monitor-{:016x}",
        crate::checkpoint::fingerprint(&all)
    );
    while memchr::memmem::find(&all, boundary.as_bytes()).is_some()
        || memchr::memmem::find(&payload_json, boundary.as_bytes()).is_some()
    {
        boundary.push('x');
    }
    let mut body = Vec::with_capacity(all.len() + payload_json.len() + 256 * (files.len() + 1));
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&payload_json);
    for (n, f) in files.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"files[{n}]\"; filename=\"{}\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
                clean(&f.name)
            )
            .as_bytes(),
        );
        body.extend_from_slice(&f.data);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let sizes: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::json!({ "name": clean(&f.name), "size": f.data.len() }))
        .collect();
    if let Some(obj) = meta.as_object_mut() {
        obj.insert("files".into(), sizes.into());
    }
    Payload {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        body,
        printable: serde_json::to_vec(&meta).expect("a JSON value always serializes"),
    }
}

/// The message Discord answered with: the one created (`?wait=true`) or
/// the one edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub id: MessageId,
    /// Where it is: the webhook's channel, or the thread it is in (for a
    /// new forum post, the new thread: keep it for [`Thread::In`]).
    pub channel_id: Snowflake,
    /// Its attachments' ids, in order (to keep them in a later edit).
    pub attachments: Vec<Snowflake>,
}

impl Posted {
    /// Reads Discord's message object; `None` if `body` is not one (an
    /// empty 204 body, a proxy's answer).
    pub fn parse(body: &str) -> Option<Posted> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let id = |v: &serde_json::Value| v.as_str().and_then(Snowflake::parse);
        Some(Posted {
            id: id(v.get("id")?)?,
            channel_id: id(v.get("channel_id")?)?,
            attachments: v
                .get("attachments")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("id").and_then(id))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: &str = "https://discord.com/api/webhooks/123/s3cr3t-token";

    fn sf(s: &str) -> Snowflake {
        Snowflake::parse(s).unwrap()
    }

    #[test]
    fn snowflakes_are_digit_strings_in_and_out_of_json() {
        assert_eq!(sf("1300000000000000001").as_str(), "1300000000000000001");
        for bad in ["", "12a", "-1", "123456789012345678901", " 1"] {
            assert!(Snowflake::parse(bad).is_none(), "{bad:?}");
        }
        let json = serde_json::to_string(&sf("42")).unwrap();
        assert_eq!(json, "\"42\"");
        assert_eq!(
            serde_json::from_str::<Snowflake>("\"42\"").unwrap(),
            sf("42")
        );
        assert!(serde_json::from_str::<Snowflake>("\"x\"").is_err());
        assert!(serde_json::from_str::<Snowflake>("42").is_err());
    }

    #[test]
    fn a_plain_post_is_the_configured_url_byte_for_byte() {
        for url in [
            HOOK,
            "https://discord.com/api/webhooks/1/t?thread_id=5",
            "http://127.0.0.1:9/api/webhooks/1/t/",
        ] {
            assert_eq!(request_url(url, &Request::PLAIN), url);
        }
        assert_eq!(Request::PLAIN.method(), "POST");
        assert!(!Request::PLAIN.answers_message());
    }

    #[test]
    fn posts_ask_for_the_message_and_name_their_thread() {
        let post = |thread, wait| request_url(HOOK, &Request::Post { thread, wait });
        assert_eq!(post(Thread::Channel, true), format!("{HOOK}?wait=true"));
        assert_eq!(
            post(Thread::In(sf("77")), true),
            format!("{HOOK}?thread_id=77&wait=true")
        );
        assert_eq!(
            post(Thread::In(sf("77")), false),
            format!("{HOOK}?thread_id=77")
        );
        assert_eq!(
            post(Thread::Open("Night".into()), true),
            format!("{HOOK}?wait=true")
        );
        // The URL's own query: kept, replaced, or dropped beside a thread_name.
        let own = format!("{HOOK}?thread_id=5");
        let at = |thread| request_url(&own, &Request::Post { thread, wait: true });
        assert_eq!(at(Thread::Channel), format!("{HOOK}?thread_id=5&wait=true"));
        assert_eq!(
            at(Thread::In(sf("6"))),
            format!("{HOOK}?thread_id=6&wait=true")
        );
        assert_eq!(at(Thread::Open("n".into())), format!("{HOOK}?wait=true"));
        let waited = format!("{HOOK}?wait=false#frag");
        assert_eq!(
            request_url(
                &waited,
                &Request::Post {
                    thread: Thread::Channel,
                    wait: true
                }
            ),
            format!("{HOOK}?wait=true")
        );
    }

    #[test]
    fn edits_patch_the_message_path() {
        let edit = |url: &str, thread: Option<Snowflake>| {
            let req = Request::Edit {
                id: sf("99"),
                thread,
            };
            assert_eq!(req.method(), "PATCH");
            assert!(req.answers_message());
            request_url(url, &req)
        };
        assert_eq!(edit(HOOK, None), format!("{HOOK}/messages/99"));
        assert_eq!(
            edit(HOOK, Some(sf("7"))),
            format!("{HOOK}/messages/99?thread_id=7")
        );
        // A message posted through a URL with a thread_id is in that thread.
        let own = format!("{HOOK}/?thread_id=5&wait=true");
        assert_eq!(edit(&own, None), format!("{HOOK}/messages/99?thread_id=5"));
        assert_eq!(
            edit(&own, Some(sf("8"))),
            format!("{HOOK}/messages/99?thread_id=8")
        );
    }

    #[test]
    fn the_thread_a_request_names() {
        let t = sf("7");
        let post_in = Request::Post {
            thread: Thread::In(t.clone()),
            wait: false,
        };
        assert_eq!(post_in.thread(), Some(&t));
        assert_eq!(
            Request::Edit {
                id: sf("1"),
                thread: Some(t.clone())
            }
            .thread(),
            Some(&t)
        );
        assert_eq!(
            Request::Edit {
                id: sf("1"),
                thread: None
            }
            .thread(),
            None
        );
        assert_eq!(
            Request::Post {
                thread: Thread::Open("n".into()),
                wait: true
            }
            .thread(),
            None
        );
    }

    #[test]
    fn thread_names_fit_discords_limit() {
        assert_eq!(
            thread_name("  Night of 2024-05-01: M31  "),
            "Night of 2024-05-01: M31"
        );
        assert_eq!(
            thread_name(&"é".repeat(150)).chars().count(),
            THREAD_NAME_MAX
        );
        assert_eq!(thread_name(" \t"), "ekos-log-monitor");
    }

    #[test]
    fn thread_name_goes_into_json_and_multipart_bodies() {
        let json = payload(&serde_json::json!({"content": "hi"}), &[], None);
        let named = with_thread_name(&json, "Night 1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&named.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"content": "hi", "thread_name": "Night 1"})
        );
        assert_eq!(named.printable, named.body);
        let files = [NewFile {
            name: "ctx.log".into(),
            data: b"a\r\nb\r\n--x".to_vec(),
        }];
        let multi = payload(&serde_json::json!({"content": "hi"}), &files, None);
        let named = with_thread_name(&multi, "Night 2").unwrap();
        assert_eq!(named.content_type, multi.content_type);
        let text = String::from_utf8(named.body.clone()).unwrap();
        assert!(text.contains("\"thread_name\":\"Night 2\""), "{text}");
        let boundary = multi
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        // The file is untouched, and still ends the body.
        assert!(
            text.ends_with(&format!("a\r\nb\r\n--x\r\n--{boundary}--\r\n")),
            "{text}"
        );
        let p: serde_json::Value = serde_json::from_slice(&named.printable).unwrap();
        assert_eq!(p["thread_name"], "Night 2");
        // Bodies it cannot read are refused rather than sent unnamed.
        let odd = Payload {
            content_type: "text/plain".into(),
            body: b"x".to_vec(),
            printable: b"x".to_vec(),
        };
        assert_eq!(with_thread_name(&odd, "n"), Err(RequestError::Unreadable));
        let mut broken = multi.clone();
        broken.content_type = "multipart/form-data; boundary=nope".into();
        assert_eq!(
            with_thread_name(&broken, "n"),
            Err(RequestError::Unreadable)
        );
    }

    #[test]
    fn json_part_finds_payload_json_among_parts() {
        let body = b"--B\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"f\"\r\n\r\n{}\r\n--B\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{\"a\":1}\r\n--B--\r\n";
        let (s, e) = json_part(body, "B").unwrap();
        assert_eq!(&body[s..e], b"{\"a\":1}");
        assert_eq!(json_part(b"--B\r\n\r\nnothing\r\n--B--\r\n", "B"), None);
    }

    #[test]
    fn payload_lists_kept_and_new_attachments() {
        let msg = serde_json::json!({"embeds": [{"title": "Star lost ×3"}]});
        // No files, nothing to keep: plain JSON, attachments untouched.
        let p = payload(&msg, &[], None);
        assert_eq!(p.content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p.body).unwrap(),
            msg
        );
        // Keep one existing attachment, add a file.
        let files = [NewFile {
            name: "ctx \"1\".log".into(),
            data: b"line\n".to_vec(),
        }];
        let p = payload(&msg, &files, Some(&[sf("555")]));
        let boundary = p
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8(p.body.clone()).unwrap();
        let (s, e) = json_part(&p.body, boundary).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body[s..e]).unwrap();
        assert_eq!(
            v["attachments"],
            serde_json::json!([{"id": "555"}, {"id": 0, "filename": "ctx _1_.log"}])
        );
        assert!(text.contains("name=\"files[0]\"; filename=\"ctx _1_.log\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nline\n\r\n--"));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        let printable: serde_json::Value = serde_json::from_slice(&p.printable).unwrap();
        assert_eq!(
            printable["files"],
            serde_json::json!([{"name": "ctx _1_.log", "size": 5}])
        );
        // Keep none: an empty list drops every existing attachment.
        let p = payload(&msg, &[], Some(&[]));
        let boundary = p
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let (s, e) = json_part(&p.body, boundary).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body[s..e]).unwrap();
        assert_eq!(v["attachments"], serde_json::json!([]));
    }

    #[test]
    fn the_boundary_never_occurs_in_the_files() {
        let data = b"x".to_vec();
        let plain = payload(
            &serde_json::json!({}),
            &[NewFile {
                name: "a".into(),
                data: data.clone(),
            }],
            None,
        );
        let boundary = plain
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        // A file that holds exactly that boundary gets another one.
        let tricky = format!("--{boundary}\r\n");
        let files = [NewFile {
            name: "a".into(),
            data: tricky.into_bytes(),
        }];
        let p = payload(&serde_json::json!({}), &files, None);
        let b2 = p
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        assert!(memchr::memmem::find(&files[0].data, b2.as_bytes()).is_none());
    }

    #[test]
    fn posted_reads_discords_message_object() {
        let body = r#"{"id":"1300000000000000002","type":0,"channel_id":"1300000000000000001","content":"x",
            "attachments":[{"id":"1300000000000000003","filename":"ctx.log","size":4}],"embeds":[]}"#;
        assert_eq!(
            Posted::parse(body),
            Some(Posted {
                id: sf("1300000000000000002"),
                channel_id: sf("1300000000000000001"),
                attachments: vec![sf("1300000000000000003")],
            })
        );
        for not_a_message in [
            "",
            "{}",
            "<html>",
            r#"{"id": 5, "channel_id": "1"}"#,
            r#"{"id": "5"}"#,
        ] {
            assert_eq!(Posted::parse(not_a_message), None, "{not_a_message}");
        }
    }
}
