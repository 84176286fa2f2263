//! Questions on the terminal: plain answers, yes/no, and the webhook URL
//! typed without echo.
//!
//! Echo is turned off with termios on standard input when it is a terminal
//! (`ECHONL` keeps the newline, so the cursor moves on). While it is off, a
//! Ctrl-C must not leave the terminal mute: the interrupt handler puts the
//! saved settings back before it exits. Answers may also be piped in, one
//! per line; then nothing is hidden since nothing is echoed.

use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SetupError;

/// Terminal settings to restore if the user interrupts a hidden prompt.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// Set once every answer is in: an interrupt then no longer stops setup
/// halfway through writing its files.
pub static APPLYING: AtomicBool = AtomicBool::new(false);

fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: t is a termios read from fd 0 by tcgetattr.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// Ctrl-C (or SIGTERM, SIGHUP) while asking: the terminal back as it was,
/// nothing changed. signal-hook delivers the signals to a thread, where
/// restoring the terminal and exiting are safe.
pub fn install_interrupt_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("setup-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if APPLYING.load(Ordering::SeqCst) {
                    continue;
                }
                restore_terminal();
                eprintln!("\nekos-log-monitor setup: interrupted: nothing was changed");
                std::process::exit(130);
            }
        });
}

pub struct Prompter<R: BufRead, W: Write> {
    input: R,
    out: W,
    /// Whether `input` is the terminal on file descriptor 0, whose echo
    /// [`Prompter::hidden`] turns off.
    terminal: bool,
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    pub fn new(input: R, out: W, terminal: bool) -> Self {
        Prompter {
            input,
            out,
            terminal,
        }
    }

    /// Prints text (no question).
    pub fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn read_answer(&mut self) -> Result<String, SetupError> {
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) => Err(SetupError::EndOfInput),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(SetupError::Io {
                what: "reading the answer".into(),
                source: e,
            }),
        }
    }

    /// One line of answer (trimmed).
    pub fn ask(&mut self, question: &str) -> Result<String, SetupError> {
        let _ = write!(self.out, "{question}");
        let _ = self.out.flush();
        self.read_answer()
    }

    /// Yes or no; Enter takes the default.
    pub fn yes_no(&mut self, question: &str, default: bool) -> Result<bool, SetupError> {
        let hint = if default { "[Y/n]" } else { "[y/N]" };
        let a = self.ask(&format!("{question} {hint} "))?;
        match a.to_ascii_lowercase().as_str() {
            "" => Ok(default),
            "y" | "yes" => Ok(true),
            "n" | "no" => Ok(false),
            _ => Err(SetupError::Answer(format!(
                "{a:?} is not an answer to \"{question}\": expected y or n"
            ))),
        }
    }

    /// A line typed without echo when standard input is a terminal.
    pub fn hidden(&mut self, question: &str) -> Result<String, SetupError> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let is_tty = self.terminal && unsafe { libc::tcgetattr(0, &mut t) == 0 };
        if is_tty {
            *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
            let mut quiet = t;
            quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
            quiet.c_lflag |= libc::ECHONL;
            // SAFETY: quiet is a valid termios derived from the current one.
            unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) };
        }
        // Asked once the echo is off, so nothing typed at once is shown.
        let _ = write!(self.out, "{question}");
        let _ = self.out.flush();
        let answer = self.read_answer();
        if is_tty {
            restore_terminal();
        }
        answer
    }
}

/// Parses a choice among `n` numbered items: numbers separated by blanks or
/// commas, `none`, or nothing (the default).
pub fn parse_selection(answer: &str, n: usize) -> Result<Option<Vec<usize>>, SetupError> {
    let a = answer.trim();
    if a.is_empty() {
        return Ok(None);
    }
    if a.eq_ignore_ascii_case("none") {
        return Ok(Some(Vec::new()));
    }
    let mut picked = Vec::new();
    for w in a.split([' ', ',', '\t']).filter(|w| !w.is_empty()) {
        match w.parse::<usize>() {
            Ok(i) if (1..=n).contains(&i) => {
                if !picked.contains(&(i - 1)) {
                    picked.push(i - 1)
                }
            }
            _ => {
                return Err(SetupError::Answer(format!(
                    "{w:?} is not one of the numbers 1 to {n} (or \"none\")"
                )));
            }
        }
    }
    Ok(Some(picked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_selection("", 3).unwrap(), None);
        assert_eq!(parse_selection(" none ", 3).unwrap(), Some(vec![]));
        assert_eq!(parse_selection("3, 1 3", 3).unwrap(), Some(vec![2, 0]));
        assert!(parse_selection("4", 3).is_err());
        assert!(parse_selection("0", 3).is_err());
        assert!(parse_selection("astro", 3).is_err());
    }

    #[test]
    fn answers_from_a_pipe() {
        let mut p = Prompter::new(&b"\nn\nmaybe\nsecret\n"[..], Vec::new(), false);
        assert!(p.yes_no("keep?", true).unwrap());
        assert!(!p.yes_no("keep?", true).unwrap());
        assert!(p.yes_no("keep?", true).is_err());
        assert_eq!(p.hidden("url: ").unwrap(), "secret");
        assert!(matches!(p.ask("more? "), Err(SetupError::EndOfInput)));
        let shown = String::from_utf8(p.out).unwrap();
        assert!(!shown.contains("secret"));
        assert!(shown.contains("keep? [Y/n] "));
    }
}
