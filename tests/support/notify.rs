//! A stand-in for systemd's notification socket: the tests point
//! `NOTIFY_SOCKET` at it and read what the daemon says (`READY=1`,
//! `STATUS=...`, `RELOADING=1`). A thread reads it all the time, as systemd
//! does: a socket nobody reads fills up and blocks the daemon's sends.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct NotifySocket {
    path: PathBuf,
    /// Every datagram received (since the last `clear`), in order.
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock` and starts reading it.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock().unwrap().push(m);
                    }
                }
            })
        };
        NotifySocket {
            path,
            got,
            stop,
            reader: Some(reader),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until a datagram satisfying `pred` has arrived (counting those
    /// already received); false on timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.got.lock().unwrap().iter().any(|m| pred(m)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every datagram received so far.
    pub fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Forgets what was received (to wait for a new `READY=1`).
    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
