//! A loopback HTTP server that records every GET (path and time) and
//! answers 200, or 500 while told to fail: the external monitor that a
//! `heartbeat_url` pings (healthchecks.io, Uptime Kuma). Only std.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct PingServer {
    port: u16,
    gets: Arc<Mutex<Vec<(String, Instant)>>>,
    failing: Arc<AtomicBool>,
}

impl PingServer {
    pub fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gets = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (g, f) = (gets.clone(), failing.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                // Headers up to the blank line; a GET has no body.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut words = first.split_whitespace();
                if words.next() == Some("GET") {
                    let path = words.next().unwrap_or("").to_string();
                    g.lock().unwrap().push((path, Instant::now()));
                }
                let answer = if f.load(Ordering::SeqCst) {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        PingServer {
            port,
            gets,
            failing,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every GET so far: path and arrival.
    pub fn gets(&self) -> Vec<(String, Instant)> {
        self.gets.lock().unwrap().clone()
    }

    /// GETs of exactly `path`.
    pub fn count(&self, path: &str) -> usize {
        self.gets().iter().filter(|(p, _)| p == path).count()
    }

    /// Answer 500 (true) or 200 (false) from now on.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}
