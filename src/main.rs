//! The command line: parse arguments, set up logging, load the
//! configuration, run the chosen command, map errors to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ekos_log_monitor::config::{Config, Inputs};
use ekos_log_monitor::discord::{Client, Outcome, Sink};
use ekos_log_monitor::{service, webhook::Webhook};

const USAGE: &str = "\
Usage: ekos-log-monitor [--config FILE] [--dry-run] [run|check|test-webhook]

Follows Ekos (KStars) and script log files and posts their new lines to a
Discord channel through a webhook.

Commands:
  run            follow the logs and post new lines (the default)
  check          validate the configuration, print the effective settings
                 and which files would be followed; exit 1 if unusable
  test-webhook   post one short test message and report Discord's answer

Options:
  --config FILE  TOML configuration (default: /etc/ekos-log-monitor/config.toml
                 if it exists); environment variables override it
  --dry-run      print each request body as one JSON line on stdout instead
                 of posting; needs no webhook
  -h, --help     show this help
  -V, --version  show the version

See ekos-log-monitor(8) and ekos-log-monitor.toml(5).";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run,
    Check,
    TestWebhook,
}

struct Args {
    config: Option<PathBuf>,
    dry_run: bool,
    command: Command,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        dry_run: false,
        command: Command::Run,
    };
    let mut command_seen = false;
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))?;
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("ekos-log-monitor {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--dry-run" => args.dry_run = true,
            "--config" | "-c" => {
                let v = it.next().ok_or("--config needs a file name")?;
                args.config = Some(PathBuf::from(v));
            }
            s if s.starts_with("--config=") => {
                args.config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            "run" | "check" | "test-webhook" if !command_seen => {
                command_seen = true;
                args.command = match a.as_str() {
                    "run" => Command::Run,
                    "check" => Command::Check,
                    _ => Command::TestWebhook,
                };
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekos-log-monitor: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    service::init_logging(log::LevelFilter::Info);
    let inputs = Inputs::from_process(args.config.clone(), args.dry_run);
    let cfg = match Config::load(&inputs) {
        Ok(c) => c,
        Err(e) => {
            if args.command == Command::Check {
                println!("configuration error: {e}");
            }
            log::error!("configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    log::set_max_level(cfg.log_level);
    match args.command {
        Command::Run => match ekos_log_monitor::run(cfg, inputs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Check => check(&cfg),
        Command::TestWebhook => test_webhook(&cfg, args.dry_run),
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
                ekos_log_monitor::config::Follow::Newest => "the newest of the",
                ekos_log_monitor::config::Follow::All => "all",
            },
            pats.join(", "),
            s.root.display()
        );
        match ekos_log_monitor::discover::scan(s, |_| false) {
            Ok(scan) => {
                match s.follow {
                    ekos_log_monitor::config::Follow::Newest => {
                        match ekos_log_monitor::discover::newest(&scan.files) {
                            Some(f) => println!("  would follow: {}", f.path.display()),
                            None => {
                                println!("  would follow: no matching file yet (waiting for one)")
                            }
                        }
                    }
                    ekos_log_monitor::config::Follow::All => {
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
    let mut failed = false;
    for w in &cfg.webhooks {
        let mut sink: Box<dyn Sink> = if dry_run {
            Box::new(ekos_log_monitor::discord::DryRun::stdout())
        } else {
            Box::new(Client::new(Webhook::clone(w)))
        };
        let outcome = sink.post(&body, Duration::from_secs(15));
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
            Outcome::Gone { status, why } => {
                failed = true;
                println!(
                    "{dest}: Discord does not know this webhook (HTTP {status}: {why}); check the id and token in DISCORD_WEBHOOK_URL"
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
