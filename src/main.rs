//! The command line: parse arguments, set up logging, load the
//! configuration, run the chosen command, map errors to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use ekos_log_monitor::cli::{Cli, Command};
use ekos_log_monitor::config::{Config, Follow, Inputs};
use ekos_log_monitor::discord::{Client, Outcome, Sink};
use ekos_log_monitor::{service, webhook::Webhook};

fn main() -> ExitCode {
    service::limit_malloc_arenas();
    // Usage errors exit 2, --help and --version exit 0 (clap's convention,
    // and what the man page's EXIT STATUS says).
    let args = Cli::from_env();
    let command = args.effective_command();
    let dry_run = args.dry_run || args.replay.is_some();
    if let Command::Setup(setup) = command {
        // setup manages /etc/ekos-log-monitor/config.toml itself and talks
        // to the terminal, not the journal.
        if args.config.is_some() || dry_run {
            eprintln!("ekos-log-monitor: setup takes neither --config nor --dry-run");
            return ExitCode::from(2);
        }
        return ekos_log_monitor::setup::run(setup.into());
    }
    service::init_logging(log::LevelFilter::Info);
    let inputs = Inputs::from_process(args.config.clone(), dry_run);
    let cfg = match Config::load(&inputs) {
        Ok(c) => c,
        Err(e) => {
            if command == Command::Check {
                println!("configuration error: {e}");
            }
            log::error!("configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    log::set_max_level(cfg.log_level);
    if let Some(path) = &args.replay {
        if args.night_card {
            return night_card(&cfg, path);
        }
        return replay(&cfg, path);
    }
    match command {
        Command::Run => match ekos_log_monitor::run(cfg, inputs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Check => check(&cfg),
        Command::TestWebhook => test_webhook(&cfg, dry_run),
        Command::Setup(_) => unreachable!("handled before the configuration is loaded"),
    }
}

/// `check`: print the effective settings and what would be followed.
fn check(cfg: &Config) -> ExitCode {
    println!(
        "config file: {}",
        cfg.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into())
    );
    for (k, v) in &cfg.effective {
        println!("{k} = {v}");
    }
    let mut ok = true;
    for s in &cfg.sources {
        let pats: Vec<&str> = s.include.iter().map(|p| p.as_str()).collect();
        println!(
            "source {}: {} files matching {} under {}",
            s.name,
            match s.follow {
                Follow::Newest => "the newest of the",
                Follow::All => "all",
            },
            pats.join(", "),
            s.root.display()
        );
        match ekos_log_monitor::discover::scan(s, |_| false) {
            Ok(scan) => {
                match s.follow {
                    Follow::Newest => match ekos_log_monitor::discover::newest(&scan.files) {
                        Some(f) => {
                            println!("  would follow: {}", f.path.display());
                            if s.name == "ekos" {
                                if let Some(summary) =
                                    ekos_log_monitor::nightwatch::replay_summary(&f.path)
                                {
                                    println!("  Ekos session: {summary}");
                                }
                            }
                        }
                        None => {
                            println!("  would follow: no matching file yet (waiting for one)")
                        }
                    },
                    Follow::All => {
                        println!("  would follow {} files", scan.files.len());
                        for f in scan.files.iter().take(20) {
                            println!("    {}", f.path.display());
                        }
                    }
                }
                for (p, why) in &scan.problems {
                    println!("  warning: {}: {why}", p.display());
                }
            }
            Err(e) => {
                println!(
                    "  error: {} ({}) cannot be read: {e}",
                    s.root.display(),
                    s.root_key
                );
                ok = false;
            }
        }
    }
    if ok {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `test-webhook`: one short message, and what Discord said.
fn test_webhook(cfg: &Config, dry_run: bool) -> ExitCode {
    let text = format!(
        "ekos-log-monitor {} test message from {}",
        env!("CARGO_PKG_VERSION"),
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this machine".into())
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "content": text,
        "allowed_mentions": {"parse": []},
    }))
    .expect("json");
    let body = ekos_log_monitor::format::Payload {
        content_type: "application/json".into(),
        printable: body.clone(),
        body,
    };
    let mut failed = false;
    for w in &cfg.webhooks {
        let mut sink: Box<dyn Sink> = if dry_run {
            Box::new(ekos_log_monitor::discord::DryRun::stdout())
        } else {
            Box::new(Client::new(Webhook::clone(w)))
        };
        let outcome = sink.post(&body, Duration::from_secs(15));
        sink.idle();
        let dest = sink.describe();
        match outcome {
            Outcome::Delivered(_) => println!("{dest}: Discord accepted the test message"),
            Outcome::RateLimited { wait, .. } => {
                failed = true;
                println!(
                    "{dest}: rate limited by Discord; try again in {:.1} s",
                    wait.as_secs_f64()
                )
            }
            Outcome::Retry { why } => {
                failed = true;
                println!("{dest}: could not reach Discord: {why}")
            }
            Outcome::Rejected { status, why } => {
                failed = true;
                println!("{dest}: Discord rejected the message (HTTP {status}): {why}")
            }
            // A plain post names no message nor thread of its own.
            Outcome::Gone { why, .. } => {
                failed = true;
                println!("{dest}: Discord answered that the target is gone: {why}")
            }
            Outcome::Stop { status, why } => {
                failed = true;
                println!(
                    "{dest}: Discord refuses every message to this webhook (HTTP {status}: {why}); check the id and token in DISCORD_WEBHOOK_URL, and that its channel is a text channel"
                )
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--replay FILE --night-card`: each night's summary card, as JSON lines.
fn night_card(cfg: &Config, path: &std::path::Path) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            log::error!("cannot read {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let nights = ekos_log_monitor::nightwatch::card::replay(
        text.lines(),
        &cfg.rules,
        &cfg.night,
        cfg.silence_after,
    );
    if nights.is_empty() {
        log::warn!(
            "{}: no session found (no line shows work in progress)",
            path.display()
        );
    }
    for n in nights {
        println!("{}", n.card);
    }
    ExitCode::SUCCESS
}

/// `--replay FILE`: every line of the file through the first source's
/// filter and rules and the packer, each request body printed as JSON.
fn replay(cfg: &Config, path: &std::path::Path) -> ExitCode {
    use ekos_log_monitor::batch::Batcher;
    use ekos_log_monitor::checkpoint::FileId;
    use ekos_log_monitor::format;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            log::error!("cannot read {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let Some(src) = cfg.sources.first() else {
        log::error!("no source configured");
        return ExitCode::from(1);
    };
    let now = std::time::Instant::now();
    // The daemon's own decision (batching, packing, folding), fed the
    // whole file as a backlog.
    let mut batcher = Batcher::from_config(cfg);
    let mut offset = 0u64;
    let mut lines = bytes.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        if lines.peek().is_none() && raw.is_empty() {
            break;
        }
        offset += raw.len() as u64 + 1;
        let text = format::sanitize(raw);
        if let Some(event) = format::classify_line(&cfg.rules, &src.filter, src.events, &text) {
            batcher.push_event(FileId(0), None, text, offset, now, event);
        }
    }
    batcher.flush_all();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(msg) = batcher.next_message(now) {
        use std::io::Write;
        if out
            .write_all(&msg.payload().printable)
            .and_then(|_| out.write_all(b"\n"))
            .is_err()
        {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
