//! Self-tests of the fake Discord server (tests/support/fake_discord.rs),
//! driven by a minimal std TcpStream HTTP client.

use crate::support::fake_discord::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PATH: &str = "/api/webhooks/123456789012345678/fake-SECRET-token_abc";

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|h| h.0.eq_ignore_ascii_case(name));
        found.map(|h| h.1.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        let timeout = Some(Duration::from_secs(10));
        stream.set_read_timeout(timeout).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("write request");
    }

    fn read_response(&mut self) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect(&line);
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len = resp
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        resp.body = vec![0; len];
        self.reader.read_exact(&mut resp.body).unwrap();
        resp
    }

    fn post(&mut self, path: &str, ctype: &str, body: &[u8]) -> Response {
        self.request("POST", path, ctype, body)
    }

    fn request(&mut self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Response {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.send_raw(head.as_bytes());
        self.send_raw(body);
        self.read_response()
    }

    fn post_json(&mut self, path: &str, v: &Value) -> Response {
        self.post(path, "application/json", v.to_string().as_bytes())
    }

    fn patch_json(&mut self, path: &str, v: &Value) -> Response {
        self.request("PATCH", path, "application/json", v.to_string().as_bytes())
    }
}

fn post_json(server: &FakeDiscord, v: &Value) -> Response {
    Client::connect(server.port()).post_json(PATH, v)
}

fn no_limit() -> FakeDiscord {
    FakeDiscord::start_with(Options {
        rate_limit: None,
        wait_delay: None,
        uplink: None,
    })
}

fn error_code(r: &Response) -> i64 {
    r.json()["code"].as_i64().unwrap()
}

#[test]
fn content_limit_counts_code_points() {
    let server = no_limit();
    for ch in ["é", "😀", "a"] {
        let ok = post_json(&server, &json!({"content": ch.repeat(2000)}));
        assert_eq!(ok.status, 204, "2000 x {ch}");
        let bad = post_json(&server, &json!({"content": ch.repeat(2001)}));
        assert_eq!(bad.status, 400);
        let v = bad.json();
        assert_eq!(v["code"], 50035);
        assert_eq!(v["message"], "Invalid Form Body");
        let e = &v["errors"]["content"]["_errors"][0];
        assert_eq!(e["code"], "BASE_TYPE_MAX_LENGTH");
        assert_eq!(e["message"], "Must be 2000 or fewer in length.");
    }
    assert_eq!(server.messages().len(), 3);
    assert_eq!(server.messages()[1].content.chars().count(), 2000);
    assert_eq!(server.count_rejected(), 3);
    assert_eq!(server.requests(), 6);
}

#[test]
fn validation_like_discord() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let r = c.post(PATH, "application/json", b"{not json");
    assert_eq!((r.status, error_code(&r)), (400, 50109));
    for empty in [
        json!({}),
        json!({"content": ""}),
        json!({"content": "  \n"}),
        json!({"embeds": []}),
    ] {
        let r = c.post_json(PATH, &empty);
        assert_eq!((r.status, error_code(&r)), (400, 50006), "{empty}");
        assert_eq!(r.json()["message"], "Cannot send an empty message");
    }
    let r = c.post(PATH, "text/plain", b"{\"content\": \"hi\"}");
    assert_eq!((r.status, error_code(&r)), (400, 50006));

    let too_many: Vec<Value> = (0..11).map(|i| json!({"title": format!("t{i}")})).collect();
    let r = c.post_json(PATH, &json!({"embeds": too_many}));
    assert_eq!(
        r.json()["errors"]["embeds"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let cases = [
        (
            json!({"title": "x".repeat(257)}),
            "/embeds/0/title/_errors/0/code",
        ),
        (
            json!({"description": "x".repeat(4097)}),
            "/embeds/0/description/_errors/0/code",
        ),
        (
            json!({"footer": {"text": "x".repeat(2049)}}),
            "/embeds/0/footer/text/_errors/0/code",
        ),
        (
            json!({"author": {"name": "x".repeat(257)}}),
            "/embeds/0/author/name/_errors/0/code",
        ),
        (
            json!({"fields": [{"name": "x".repeat(257), "value": "v"}]}),
            "/embeds/0/fields/0/name/_errors/0/code",
        ),
        (
            json!({"fields": [{"name": "n", "value": "x".repeat(1025)}]}),
            "/embeds/0/fields/0/value/_errors/0/code",
        ),
    ];
    for (embed, pointer) in cases {
        let r = c.post_json(PATH, &json!({"embeds": [embed]}));
        assert_eq!((r.status, error_code(&r)), (400, 50035));
        let v = r.json();
        assert_eq!(
            v["errors"].pointer(pointer).unwrap(),
            "BASE_TYPE_MAX_LENGTH",
            "{v}"
        );
    }
    // 2 x 4000 description characters: each valid, together over 6000.
    let big =
        json!({"embeds": [{"description": "d".repeat(4000)}, {"description": "d".repeat(4000)}]});
    let r = c.post_json(PATH, &big);
    assert_eq!(
        r.json()["errors"]["embeds"]["_errors"][0]["code"],
        "MAX_EMBED_SIZE_EXCEEDED"
    );
    let fine = json!({"embeds": [{"title": "t", "description": "d".repeat(4096)}]});
    assert_eq!(c.post_json(PATH, &fine).status, 204);
    assert_eq!(server.count_rejected(), 14);

    let am = json!({"content": "@everyone hi", "allowed_mentions": {"parse": []}});
    assert_eq!(c.post_json(PATH, &am).status, 204);
    let msgs = server.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].allowed_mentions, None);
    assert_eq!(msgs[1].allowed_mentions, Some(json!({"parse": []})));
}

#[test]
fn paths_wait_and_not_found() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let msg = json!({"content": "hello"});
    let r = c.post_json("/api/v10/webhooks/42/tok?wait=true", &msg);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["content"], "hello");
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(c.post_json("/api/v9/webhooks/42/tok", &msg).status, 204);
    assert_eq!(c.post_json("/api/webhooks/42", &msg).status, 404);
    assert_eq!(c.post_json("/api/webhooks/42/tok/extra", &msg).status, 404);
    assert_eq!(server.messages()[0].webhook_id, "42");
    assert!(server.webhook_url().ends_with(PATH));
    assert!(
        server
            .webhook_url_for("1", "t")
            .ends_with("/api/webhooks/1/t")
    );

    server.set_mode(Mode::NotFound);
    let r = c.post_json(PATH, &msg);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"message": "Unknown Webhook", "code": 10015})
    );
    server.set_mode(Mode::Normal);
    assert_eq!(c.post_json(PATH, &msg).status, 204);
}

#[test]
fn rate_limit_headers_and_429() {
    let server = FakeDiscord::start();
    let mut c = Client::connect(server.port());
    let start = Instant::now();
    for expected in (0..5).rev() {
        let r = c.post_json(PATH, &json!({"content": "x"}));
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(expected.to_string().as_str())
        );
        let after: f64 = r
            .header("x-ratelimit-reset-after")
            .unwrap()
            .parse()
            .unwrap();
        assert!(after > 0.0 && after <= 2.0, "{after}");
        let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        assert!((reset - now.as_secs_f64() - after).abs() < 0.5);
        assert!(r.header("x-ratelimit-bucket").is_some());
        assert_eq!(
            r.header("x-ratelimit-reset-after")
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .len(),
            3
        );
    }
    let r = c.post_json(PATH, &json!({"content": "x"}));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "test too slow to be meaningful"
    );
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["message"], "You are being rate limited.");
    assert_eq!(v["global"], false);
    let retry = v["retry_after"].as_f64().unwrap();
    assert!(retry > 0.0 && retry <= 2.0, "{retry}");
    assert_eq!(
        r.header("retry-after"),
        Some(retry.ceil().to_string().as_str())
    );
    assert_eq!(r.header("x-ratelimit-scope"), Some("user"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(server.count_429(), 1);
    assert_eq!(server.messages().len(), 5);
    // Another webhook id has its own bucket.
    let other = c.post_json("/api/webhooks/999/t", &json!({"content": "x"}));
    assert_eq!(other.header("x-ratelimit-remaining"), Some("4"));
    // After retry_after the bucket is full again.
    std::thread::sleep(Duration::from_secs_f64(retry));
    let r = c.post_json(PATH, &json!({"content": "x"}));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[test]
fn fail5xx_down_and_slow() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let msg = json!({"content": "x"});
    server.set_mode(Mode::Fail5xx(2));
    assert_eq!(c.post_json(PATH, &msg).status, 500);
    assert_eq!(c.post_json(PATH, &msg).status, 500);
    assert_eq!(c.post_json(PATH, &msg).status, 204);
    assert_eq!((server.requests(), server.messages().len()), (3, 1));

    server.set_mode(Mode::Down);
    for _ in 0..3 {
        assert_eq!(c.post_json(PATH, &msg).status, 503);
    }
    server.set_mode(Mode::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    assert_eq!(c.post_json(PATH, &msg).status, 204);
    assert!(t.elapsed() >= Duration::from_millis(300));
    server.set_mode(Mode::Normal);
    assert_eq!(server.messages().len(), 2);
    assert_eq!(server.count_rejected(), 0);
}

#[test]
fn html429_has_no_rate_limit_headers() {
    let server = FakeDiscord::start();
    let mut c = Client::connect(server.port());
    server.set_mode(Mode::Html429(1));
    let r = c.post_json(PATH, &json!({"content": "x"}));
    assert_eq!(r.status, 429);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("1015"));
    assert!(
        r.headers
            .iter()
            .all(|h| !h.0.to_ascii_lowercase().starts_with("x-ratelimit"))
    );
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(server.count_429(), 1);
    let r = c.post_json(PATH, &json!({"content": "x"}));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[test]
fn refuse_then_normal_rebinds_same_port() {
    let server = FakeDiscord::start();
    let port = server.port();
    let mut idle = Client::connect(port);
    assert_eq!(idle.post_json(PATH, &json!({"content": "1"})).status, 204);
    server.set_mode(Mode::Refuse);
    let err = TcpStream::connect(("127.0.0.1", port)).expect_err("must be refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // The kept-alive connection was closed too.
    let mut buf = [0u8; 1];
    assert!(matches!(idle.reader.read(&mut buf), Ok(0) | Err(_)));
    server.set_mode(Mode::Normal);
    assert_eq!(server.port(), port);
    let r = Client::connect(port).post_json(PATH, &json!({"content": "2"}));
    assert_eq!(r.status, 204);
    assert_eq!(server.messages().len(), 2);
}

#[test]
fn keep_alive_and_connection_close() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    assert_eq!(c.post_json(PATH, &json!({"content": "one"})).status, 204);
    assert_eq!(c.post_json(PATH, &json!({"content": "two"})).status, 204);
    // Pipelined: two requests in one write.
    let one = "{\"content\":\"3\"}";
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{one}"
    );
    c.send_raw(format!("{req}{req}").as_bytes());
    assert_eq!(c.read_response().status, 204);
    assert_eq!(c.read_response().status, 204);
    let close = format!(
        "POST {PATH} HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{one}"
    );
    c.send_raw(close.as_bytes());
    let r = c.read_response();
    assert_eq!((r.status, r.header("connection")), (204, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(
        c.reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
    let contents: Vec<String> = server.messages().into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["one", "two", "3", "3", "3"]);
}

#[test]
fn multipart_upload() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let b = "----fakeboundary42";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n\
         {{\"content\":\"see files\",\"allowed_mentions\":{{\"parse\":[]}}}}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"a.log\"\r\n\
         Content-Type: text/plain\r\n\r\nline1\r\nline2\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"files[1]\"; filename=\"b.bin\"\r\n\r\n\x01\x02\r\n\
         --{b}--\r\n"
    );
    let r = c.post(
        PATH,
        &format!("multipart/form-data; boundary={b}"),
        body.as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let m = &server.messages()[0];
    assert_eq!(m.content, "see files");
    assert_eq!(m.allowed_mentions, Some(json!({"parse": []})));
    assert_eq!(
        m.attachments[0],
        ("a.log".to_string(), b"line1\r\nline2".to_vec())
    );
    assert_eq!(m.attachments[1], ("b.bin".to_string(), vec![1, 2]));

    // A file alone is not an empty message.
    let only_file = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"x.txt\"\r\n\r\nx\r\n--{b}--\r\n"
    );
    let ctype = format!("multipart/form-data; boundary=\"{b}\"");
    assert_eq!(c.post(PATH, &ctype, only_file.as_bytes()).status, 204);

    // Over 10 MiB in one file: 413.
    let mut huge = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"big\"\r\n\r\n"
    )
    .into_bytes();
    huge.extend(std::iter::repeat_n(b'z', 10 * 1024 * 1024 + 1));
    huge.extend(format!("\r\n--{b}--\r\n").as_bytes());
    let r = c.post(PATH, &ctype, &huge);
    assert_eq!((r.status, error_code(&r)), (413, 40005));
    // Invalid payload_json.
    let bad = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{{nope\r\n--{b}--\r\n"
    );
    let r = c.post(PATH, &ctype, bad.as_bytes());
    assert_eq!((r.status, error_code(&r)), (400, 50109));
    assert_eq!(server.messages().len(), 2);
}

#[test]
fn chunked_request_body() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let head = format!(
        "POST {PATH}?wait=true HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    c.send_raw(head.as_bytes());
    c.send_raw(b"7;ext=1\r\n{\"conte\r\n");
    c.send_raw(b"e\r\nnt\":\"chunky\"}\r\n0\r\nX-Trailer: y\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["content"], "chunky");
    // The connection is still usable afterwards.
    assert_eq!(c.post_json(PATH, &json!({"content": "after"})).status, 204);
    assert!(server.wait_for(Duration::from_secs(1), |m| m.len() == 2));
}

#[test]
fn garbage_gets_400_and_server_survives() {
    let server = no_limit();
    let garbage: [&[u8]; 6] = [
        b"HELLO\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"\xff\xfe\x00garbage\r\n\r\n",
    ];
    for g in garbage {
        let mut c = Client::connect(server.port());
        c.send_raw(g);
        let r = c.read_response();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(g));
        let mut rest = Vec::new();
        assert_eq!(c.reader.read_to_end(&mut rest).unwrap_or(0), 0);
    }
    let long_line = vec![b'A'; 100_000];
    let mut c = Client::connect(server.port());
    c.send_raw(&long_line);
    assert_eq!(c.read_response().status, 400);
    let mut c = Client::connect(server.port());
    c.send_raw(format!("POST {PATH} HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n").as_bytes());
    assert_eq!(c.read_response().status, 413);
    // Truncated request then EOF: no panic, just closed.
    let mut c = Client::connect(server.port());
    c.send_raw(b"POST /api/webhooks/1/t HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"con");
    c.reader
        .get_mut()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    assert_eq!(
        post_json(&server, &json!({"content": "still alive"})).status,
        204
    );
}

#[test]
fn control_endpoint_and_wait_for() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let r = c.post("/control/mode", "text/plain", b"fail500 1");
    assert_eq!(r.status, 200);
    assert_eq!(c.post_json(PATH, &json!({"content": "x"})).status, 500);
    assert_eq!(
        c.post("/control/mode", "text/plain", b"html429 1").status,
        200
    );
    assert_eq!(c.post_json(PATH, &json!({"content": "x"})).status, 429);
    assert_eq!(c.post("/control/mode", "text/plain", b"down\n").status, 200);
    assert_eq!(c.post_json(PATH, &json!({"content": "x"})).status, 503);
    assert_eq!(c.post("/control/mode", "text/plain", b"bogus").status, 400);
    assert_eq!(c.post("/control/mode", "text/plain", b"normal").status, 200);
    assert_eq!(
        server.requests(),
        3,
        "control requests are not webhook requests"
    );

    let port = server.port();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        Client::connect(port)
            .post_json(PATH, &json!({"content": "late"}))
            .status
    });
    assert!(server.wait_for(Duration::from_secs(5), |m| {
        m.iter().any(|m| m.content == "late")
    }));
    assert!(!server.wait_for(Duration::from_millis(100), |m| m.len() > 1));
    assert_eq!(sender.join().unwrap(), 204);
    assert!(server.wait_for_requests(4, Duration::from_secs(1)));
}

#[test]
fn code_block_lines_extracts_fenced_lines() {
    let content = "**/var/log/ekos.log**\n```\nline one\nline ``\u{200b}` two\n```\n**other**\n```text\nthird\n\n```";
    assert_eq!(
        code_block_lines(content),
        ["line one", "line ``` two", "third", ""]
    );
    assert_eq!(code_block_lines("```\na\nb```"), ["a", "b"]);
    assert_eq!(code_block_lines("no blocks"), Vec::<String>::new());
    // A zero-width space not next to a backtick is kept.
    assert_eq!(
        code_block_lines("```\na\u{200b}b\n`\u{200b}`\u{200b}`\n```"),
        ["a\u{200b}b", "```"]
    );
}

#[test]
fn drop_stops_the_server() {
    let server = FakeDiscord::start();
    let port = server.port();
    let mut c = Client::connect(port);
    assert_eq!(c.post_json(PATH, &json!({"content": "x"})).status, 204);
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut buf = [0u8; 1];
    assert!(matches!(c.reader.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn mutated_multipart_never_kills_a_connection() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let b = "XyZ";
    let valid = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{{\"content\":\"hi\"}}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"f\"\r\n\r\nabc\r\n--{b}--\r\n"
    );
    let ctype = format!("multipart/form-data; boundary={b}");
    assert_eq!(c.post(PATH, &ctype, valid.as_bytes()).status, 204);
    let no_headers = format!("--{b}\r\n\r\ndata\r\n--{b}--\r\n");
    assert_eq!(c.post(PATH, &ctype, no_headers.as_bytes()).status, 400);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..500 {
        let mut body = valid.clone().into_bytes();
        for _ in 0..1 + rand(4) {
            match rand(3) {
                0 => body.truncate(rand(body.len() + 1)),
                1 if !body.is_empty() => {
                    let i = rand(body.len());
                    body[i] = b"-\r\n\"; =X"[rand(8)];
                }
                _ => {
                    let i = rand(body.len() + 1);
                    body.insert(i, b"-\r\n\""[rand(4)]);
                }
            }
        }
        let status = c.post(PATH, &ctype, &body).status;
        assert!([204, 400].contains(&status), "{status}");
    }
}

const OTHER: &str = "/api/webhooks/223456789012345678/other-token";

/// Whether the server closed the connection without a response.
fn closed_without_answer(c: &mut Client) -> bool {
    let mut buf = [0u8; 1];
    matches!(c.reader.read(&mut buf), Ok(0))
        || matches!(c.reader.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

#[test]
fn queued_faults_answer_in_order_for_their_webhook_only() {
    let server = no_limit();
    let msg = json!({"content": "x"});
    server.push_faults(
        FakeDiscord::WEBHOOK_ID,
        [
            Fault::Status(503, "{\"message\": \"upstream\"}".into()),
            Fault::Status(408, "request timeout".into()),
            Fault::RateLimited(1.5),
            Fault::forum_400(),
        ],
    );
    assert_eq!(server.queued_faults(FakeDiscord::WEBHOOK_ID), 4);
    let mut c = Client::connect(server.port());
    // The other webhook is not affected and does not consume the queue.
    assert_eq!(c.post_json(OTHER, &msg).status, 204);
    let r = c.post_json(PATH, &msg);
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (503, Some("upstream"))
    );
    let r = c.post_json(PATH, &msg);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (408, &b"request timeout"[..])
    );
    let r = c.post_json(PATH, &msg);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["retry_after"].as_f64(), Some(1.5));
    assert_eq!(r.header("retry-after"), Some("2"));
    let r = c.post_json(PATH, &msg);
    assert_eq!((r.status, error_code(&r)), (400, 220001));
    // Queue used up: accepted again.
    assert_eq!(c.post_json(PATH, &msg).status, 204);
    assert_eq!(server.queued_faults(FakeDiscord::WEBHOOK_ID), 0);
    assert_eq!(server.count_faulted(), 4);
    assert_eq!(server.count_429(), 1);
    let ids: Vec<String> = server
        .messages()
        .into_iter()
        .map(|m| m.webhook_id)
        .collect();
    assert_eq!(ids, vec!["223456789012345678", FakeDiscord::WEBHOOK_ID]);
}

#[test]
fn a_standing_fault_holds_until_cleared_and_wins_over_the_queue() {
    let server = no_limit();
    let msg = json!({"content": "x"});
    server.push_faults(FakeDiscord::WEBHOOK_ID, [Fault::Status(500, "x".into())]);
    server.set_hook_fault(FakeDiscord::WEBHOOK_ID, Some(Fault::not_found()));
    let mut c = Client::connect(server.port());
    for _ in 0..3 {
        let r = c.post_json(PATH, &msg);
        assert_eq!((r.status, error_code(&r)), (404, 10015));
    }
    assert_eq!(c.post_json(OTHER, &msg).status, 204);
    server.set_hook_fault(FakeDiscord::WEBHOOK_ID, None);
    // The queued fault comes next, then normal answers.
    assert_eq!(c.post_json(PATH, &msg).status, 500);
    assert_eq!(c.post_json(PATH, &msg).status, 204);
    assert_eq!(server.messages().len(), 2);
    assert_eq!(server.count_faulted(), 4);
}

#[test]
fn hang_and_close_give_no_answer_and_accept_nothing() {
    let server = no_limit();
    let msg = json!({"content": "x"});
    server.push_faults(
        FakeDiscord::WEBHOOK_ID,
        [Fault::Hang(Duration::from_millis(400)), Fault::Close],
    );
    let mut c = Client::connect(server.port());
    let body = msg.to_string();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    c.send_raw(head.as_bytes());
    assert!(closed_without_answer(&mut c));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let mut c = Client::connect(server.port());
    let t = Instant::now();
    c.send_raw(head.as_bytes());
    assert!(closed_without_answer(&mut c));
    assert!(t.elapsed() < Duration::from_millis(400));
    assert_eq!(server.requests(), 2);
    assert!(server.messages().is_empty());
    // The next request is served normally.
    assert_eq!(post_json(&server, &msg).status, 204);
}

// ------------------------------------------------- ?wait=true, PATCH, forums

/// A multipart body: `payload_json`, then each file as `files[n]`.
fn multipart(payload: &Value, files: &[(usize, &str, &[u8])]) -> (String, Vec<u8>) {
    let b = "selftest-boundary-7";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{payload}\r\n"
    )
    .into_bytes();
    for (n, name, data) in files {
        body.extend(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"files[{n}]\"; filename=\"{name}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend(*data);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

fn message_path(id: &str) -> String {
    format!("{PATH}/messages/{id}")
}

fn is_snowflake(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| (17..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn wait_true_answers_the_created_message() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let (ctype, body) = multipart(
        &json!({"content": "with a file", "embeds": [{"title": "t", "description": "d"}]}),
        &[(0, "context.log", b"line 1\nline 2\n")],
    );
    let r = c.post(&format!("{PATH}?wait=true"), &ctype, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(is_snowflake(&v["id"]), "{v}");
    assert_eq!(v["channel_id"], CHANNEL_ID);
    assert_eq!(v["webhook_id"], FakeDiscord::WEBHOOK_ID);
    assert_eq!(v["content"], "with a file");
    assert_eq!(v["embeds"], json!([{"title": "t", "description": "d"}]));
    assert_eq!(v["attachments"][0]["filename"], "context.log");
    assert_eq!(v["attachments"][0]["size"], 14);
    assert!(is_snowflake(&v["attachments"][0]["id"]));
    assert_eq!(v["edited_timestamp"], Value::Null);
    // Without wait: 204 and no body, but the message has an id all the same.
    let r = c.post_json(PATH, &json!({"content": "plain"}));
    assert_eq!((r.status, r.body.len()), (204, 0));
    let m = server.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].message_id, v["id"].as_str().unwrap());
    assert!(!m[0].edit && m[0].embeds.len() == 1);
    assert!(m[1].message_id > m[0].message_id, "ids grow");
    assert!(server.edits().is_empty());
}

#[test]
fn patch_edits_the_message_in_place() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let first = json!({"content": "incident: 1 time", "embeds": [{"title": "Star lost"}]});
    let id = c.post_json(&format!("{PATH}?wait=true"), &first).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 2..=4 {
        let r = c.patch_json(
            &message_path(&id),
            &json!({"content": format!("incident: {n} times")}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(
            (v["id"].as_str(), v["content"].as_str()),
            (
                Some(id.as_str()),
                Some(format!("incident: {n} times").as_str())
            )
        );
        // Fields left out of the edit stay as they were.
        assert_eq!(v["embeds"], json!([{"title": "Star lost"}]));
        assert!(
            v["edited_timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with("+00:00")),
            "{v}"
        );
    }
    // The versioned path and `embeds: []` (clear them) work too.
    let r = c.patch_json(
        &format!(
            "/api/v10/webhooks/{}/tok/messages/{id}",
            FakeDiscord::WEBHOOK_ID
        ),
        &json!({"embeds": []}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(server.messages().len(), 1, "an edit is not a new message");
    assert_eq!(server.count_edits(&id), 4);
    let edits = server.edits();
    assert!(
        edits
            .iter()
            .all(|e| e.edit && e.message_id == id && e.channel_id == CHANNEL_ID)
    );
    assert_eq!(edits[0].body, json!({"content": "incident: 2 times"}));
    let now = server.message(&id).unwrap();
    assert_eq!(
        (now.content.as_str(), now.embeds.len()),
        ("incident: 4 times", 0)
    );
    assert_eq!(server.message(&id).map(|m| m.edit), Some(true));
    assert!(server.message("1").is_none());
    assert!(server.wait_for_edits(Duration::from_secs(1), |e| e.len() == 4));
}

#[test]
fn patch_enforces_discords_rules() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let id = c
        .post_json(&format!("{PATH}?wait=true"), &json!({"content": "x"}))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = message_path(&id);
    // Unknown message, and another webhook's message: 404 Unknown Message.
    let r = c.patch_json(
        &message_path("1300000000000000999"),
        &json!({"content": "y"}),
    );
    assert_eq!((r.status, error_code(&r)), (404, 10008));
    assert_eq!(r.json()["message"], "Unknown Message");
    let r = c.patch_json(&format!("{OTHER}/messages/{id}"), &json!({"content": "y"}));
    assert_eq!((r.status, error_code(&r)), (404, 10008));
    // The limits of a new message.
    let r = c.patch_json(&path, &json!({"content": "é".repeat(2001)}));
    assert_eq!((r.status, error_code(&r)), (400, 50035));
    assert_eq!(
        r.json()["errors"]["content"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let big =
        json!({"embeds": [{"description": "d".repeat(4096)}, {"description": "d".repeat(2000)}]});
    let r = c.patch_json(&path, &big);
    assert_eq!(
        r.json()["errors"]["embeds"]["_errors"][0]["code"],
        "MAX_EMBED_SIZE_EXCEEDED"
    );
    let r = c.patch_json(&path, &json!({"embeds": [{"title": "t".repeat(257)}]}));
    assert_eq!(error_code(&r), 50035);
    // An edit that leaves nothing: Discord's empty-message error.
    let r = c.patch_json(&path, &json!({"content": ""}));
    assert_eq!((r.status, error_code(&r)), (400, 50006));
    let r = c.patch_json(&path, &json!({"content": null}));
    assert_eq!((r.status, error_code(&r)), (400, 50006));
    let r = c.request("PATCH", &path, "application/json", b"{nope");
    assert_eq!((r.status, error_code(&r)), (400, 50109));
    // Methods: no PATCH of the webhook itself here, no POST to a message.
    assert_eq!(c.patch_json(PATH, &json!({"content": "y"})).status, 405);
    assert_eq!(c.post_json(&path, &json!({"content": "y"})).status, 405);
    assert_eq!(
        c.patch_json(&format!("{path}/extra"), &json!({"content": "y"}))
            .status,
        404
    );
    assert!(server.edits().is_empty());
    assert_eq!(server.message(&id).unwrap().content, "x");
    assert_eq!(server.count_rejected(), 11);
}

#[test]
fn patch_attachments_keep_drop_and_add() {
    let server = no_limit();
    let mut c = Client::connect(server.port());
    let (ctype, body) = multipart(
        &json!({"content": "two files"}),
        &[(0, "a.log", b"A"), (1, "b.log", b"B")],
    );
    let v = c.post(&format!("{PATH}?wait=true"), &ctype, &body).json();
    let id = v["id"].as_str().unwrap().to_string();
    let (a, b) = (
        v["attachments"][0]["id"].clone(),
        v["attachments"][1]["id"].clone(),
    );
    let names = |v: &Value| -> Vec<String> {
        v["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["filename"].as_str().unwrap().to_string())
            .collect()
    };
    // No `attachments`: every file stays.
    let r = c.patch_json(&message_path(&id), &json!({"content": "edited"}));
    assert_eq!(names(&r.json()), ["a.log", "b.log"]);
    // Keep b (by id), drop a, add a new file listed by its index.
    let (ctype, body) = multipart(
        &json!({"content": "kept b, new c", "attachments": [{"id": b}, {"id": 0, "filename": "c.log"}]}),
        &[(0, "c.log", b"CCC")],
    );
    let r = c.request("PATCH", &message_path(&id), &ctype, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(names(&v), ["b.log", "c.log"]);
    assert_eq!(v["attachments"][0]["id"], b);
    assert_ne!(v["attachments"][1]["id"], a);
    let now = server.message(&id).unwrap();
    assert_eq!(
        now.attachments,
        [
            ("b.log".to_string(), b"B".to_vec()),
            ("c.log".to_string(), b"CCC".to_vec())
        ]
    );
    // A new file the array does not list is not added (API v10).
    let (ctype, body) = multipart(&json!({"attachments": [{"id": b}]}), &[(0, "d.log", b"D")]);
    let r = c.request("PATCH", &message_path(&id), &ctype, &body);
    assert_eq!(names(&r.json()), ["b.log"]);
    // Without the array, new files are added to the kept ones.
    let (ctype, body) = multipart(&json!({}), &[(0, "e.log", b"E")]);
    let r = c.request("PATCH", &message_path(&id), &ctype, &body);
    assert_eq!(names(&r.json()), ["b.log", "e.log"]);
    // An empty array drops them all (the content keeps the message alive).
    let r = c.patch_json(&message_path(&id), &json!({"attachments": []}));
    assert_eq!(names(&r.json()), Vec::<String>::new());
    // More than 10 files after the edit, or one over 10 MiB: refused.
    let files: Vec<(usize, String)> = (0..11).map(|n| (n, format!("f{n}"))).collect();
    let parts: Vec<(usize, &str, &[u8])> = files
        .iter()
        .map(|(n, f)| (*n, f.as_str(), &b"x"[..]))
        .collect();
    let (ctype, body) = multipart(&json!({}), &parts);
    let r = c.request("PATCH", &message_path(&id), &ctype, &body);
    assert_eq!((r.status, error_code(&r)), (400, 50035));
    assert_eq!(
        r.json()["errors"]["attachments"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let huge = vec![b'z'; 10 * 1024 * 1024 + 1];
    let (ctype, body) = multipart(&json!({}), &[(0, "big", &huge)]);
    let r = c.request("PATCH", &message_path(&id), &ctype, &body);
    assert_eq!((r.status, error_code(&r)), (413, 40005));
    assert_eq!(server.count_edits(&id), 5);
}

#[test]
fn edits_share_the_webhooks_rate_limit_bucket() {
    let server = FakeDiscord::start();
    let mut c = Client::connect(server.port());
    let start = Instant::now();
    let r = c.post_json(&format!("{PATH}?wait=true"), &json!({"content": "x"}));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let bucket = r.header("x-ratelimit-bucket").unwrap().to_string();
    for left in (0..4).rev() {
        let r = c.patch_json(&message_path(&id), &json!({"content": format!("{left}")}));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
        assert_eq!(r.header("x-ratelimit-bucket"), Some(bucket.as_str()));
    }
    // The bucket is empty for edits and new messages alike.
    let r = c.patch_json(&message_path(&id), &json!({"content": "late"}));
    assert_eq!(r.status, 429);
    assert!(
        r.json()["retry_after"]
            .as_f64()
            .is_some_and(|s| s > 0.0 && s <= 2.0)
    );
    let r = c.post_json(PATH, &json!({"content": "late"}));
    assert_eq!(r.status, 429);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "test too slow to be meaningful"
    );
    assert_eq!(server.count_429(), 2);
    assert_eq!(server.count_edits(&id), 4);
    assert_eq!(server.message(&id).unwrap().content, "0");
}

#[test]
fn forum_channels_need_a_thread() {
    let server = no_limit();
    server.set_forum(FakeDiscord::WEBHOOK_ID, true);
    let mut c = Client::connect(server.port());
    let msg = json!({"content": "night of 2024-05-01"});
    let r = c.post_json(PATH, &msg);
    assert_eq!((r.status, error_code(&r)), (400, 220001));
    assert_eq!(
        r.json()["message"],
        "Webhooks posted to forum channels must have a thread_name or thread_id"
    );
    // thread_name opens a post: a thread whose id is the message's channel_id.
    let named = json!({"content": "first", "thread_name": "Night 2024-05-01: M31, M42"});
    let r = c.post_json(&format!("{PATH}?wait=true"), &named);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let thread = v["channel_id"].as_str().unwrap().to_string();
    assert!(is_snowflake(&v["channel_id"]) && thread != CHANNEL_ID);
    assert_eq!(
        server.threads(),
        [(thread.clone(), "Night 2024-05-01: M31, M42".to_string())]
    );
    // ?thread_id= posts into it.
    let r = c.post_json(
        &format!("{PATH}?wait=true&thread_id={thread}"),
        &json!({"content": "second"}),
    );
    assert_eq!(r.status, 200);
    let second = r.json();
    assert_eq!(second["channel_id"], thread.as_str());
    assert_eq!(
        c.post_json(&format!("{PATH}?thread_id={thread}"), &msg)
            .status,
        204
    );
    // Unknown thread, both at once, a name too long or empty.
    let r = c.post_json(&format!("{PATH}?thread_id=1300000000000000999"), &msg);
    assert_eq!((r.status, error_code(&r)), (400, 10003));
    let r = c.post_json(&format!("{PATH}?thread_id={thread}"), &named);
    assert_eq!((r.status, error_code(&r)), (400, 220002));
    let r = c.post_json(
        PATH,
        &json!({"content": "x", "thread_name": "n".repeat(101)}),
    );
    assert_eq!((r.status, error_code(&r)), (400, 50035));
    assert_eq!(
        r.json()["errors"]["thread_name"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let r = c.post_json(PATH, &json!({"content": "x", "thread_name": ""}));
    assert_eq!(
        r.json()["errors"]["thread_name"]["_errors"][0]["code"],
        "BASE_TYPE_REQUIRED"
    );
    assert_eq!(
        c.post_json(
            PATH,
            &json!({"content": "x", "thread_name": "n".repeat(100)})
        )
        .status,
        204
    );
    // A text channel's webhook cannot create threads, nor post in another's.
    let r = c.post_json(OTHER, &named);
    assert_eq!((r.status, error_code(&r)), (400, 220003));
    let r = c.post_json(&format!("{OTHER}?thread_id={thread}"), &msg);
    assert_eq!((r.status, error_code(&r)), (400, 10003));
    // Editing a message in a thread needs the thread's id, as on Discord.
    let second_id = second["id"].as_str().unwrap();
    let edit = json!({"content": "second, edited"});
    let r = c.patch_json(&message_path(second_id), &edit);
    assert_eq!((r.status, error_code(&r)), (404, 10008));
    let r = c.patch_json(
        &format!("{}?thread_id=1300000000000000999", message_path(second_id)),
        &edit,
    );
    assert_eq!((r.status, error_code(&r)), (400, 10003));
    let r = c.patch_json(
        &format!("{}?thread_id={thread}", message_path(second_id)),
        &edit,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["channel_id"], thread.as_str());
    assert_eq!(server.edits()[0].channel_id, thread);
    // Back to a text channel: no thread needed.
    server.set_forum(FakeDiscord::WEBHOOK_ID, false);
    assert_eq!(c.post_json(PATH, &msg).status, 204);
    server.set_forum_all(true);
    assert_eq!(error_code(&c.post_json(OTHER, &msg)), 220001);
    let in_thread: Vec<bool> = server
        .messages()
        .iter()
        .map(|m| m.channel_id != CHANNEL_ID)
        .collect();
    assert_eq!(in_thread, [true, true, true, true, false]);
}

#[test]
fn deleted_messages_and_threads_are_unknown() {
    let server = no_limit();
    server.set_forum(FakeDiscord::WEBHOOK_ID, true);
    let mut c = Client::connect(server.port());
    let named = json!({"content": "card", "thread_name": "Night"});
    let v = c.post_json(&format!("{PATH}?wait=true"), &named).json();
    let (card, thread) = (v["id"].as_str().unwrap(), v["channel_id"].as_str().unwrap());
    let into = format!("{PATH}?wait=true&thread_id={thread}");
    let v = c.post_json(&into, &json!({"content": "line"})).json();
    let line = v["id"].as_str().unwrap();
    let edit = |id: &str| format!("{}?thread_id={thread}", message_path(id));
    assert!(server.delete_message(line));
    assert!(!server.delete_message(line));
    let r = c.patch_json(&edit(line), &json!({"content": "y"}));
    assert_eq!((r.status, error_code(&r)), (404, 10008));
    assert_eq!(
        c.patch_json(&edit(card), &json!({"content": "y"})).status,
        200
    );
    assert!(server.delete_thread(thread));
    let r = c.post_json(&into, &json!({"content": "line"}));
    assert_eq!((r.status, error_code(&r)), (400, 10003));
    let r = c.patch_json(&edit(card), &json!({"content": "z"}));
    assert_eq!((r.status, error_code(&r)), (400, 10003));
    // A scripted Unknown Message answers an edit of a message that exists.
    let v = c.post_json(&format!("{PATH}?wait=true"), &named).json();
    let (card, thread) = (v["id"].as_str().unwrap(), v["channel_id"].as_str().unwrap());
    server.push_faults(FakeDiscord::WEBHOOK_ID, [Fault::unknown_message()]);
    let path = format!("{}?thread_id={thread}", message_path(card));
    let r = c.patch_json(&path, &json!({"content": "y"}));
    assert_eq!((r.status, error_code(&r)), (404, 10008));
    assert_eq!(c.patch_json(&path, &json!({"content": "y"})).status, 200);
}
