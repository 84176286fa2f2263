//! A stand-in for systemd's notification socket: the tests point
//! `NOTIFY_SOCKET` at it and read what the daemon says (`READY=1`,
//! `STATUS=...`, `RELOADING=1`).

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far, in order.
    got: Vec<String>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what has arrived, without waiting.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        self.sock.set_nonblocking(true).unwrap();
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
    }

    /// Waits until a datagram satisfying `pred` has arrived (counting those
    /// already received); false on timeout.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.got.iter().any(|m| pred(m)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Every datagram received so far.
    pub fn messages(&self) -> &[String] {
        &self.got
    }

    /// Forgets what was received (to wait for a new `READY=1`).
    pub fn clear(&mut self) {
        self.got.clear();
    }
}
