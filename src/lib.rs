//! ekos-log-monitor follows log files and posts their new lines to a
//! Discord channel through a webhook.
//!
//! Data flows one way, through two threads joined by bounded channels
//! (one per route, i.e. per webhook), and a poster thread per route that
//! makes the blocking POST:
//!
//! ```text
//! inotify ─► notify callback ─► watcher ─(Chunk)─► sender ─► post-<n> ─► Discord
//!            (forwards only)    discover, tail  │   batch, pack, rate-limit,
//!                               rotation,       │   retry; commit checkpoint
//!                               offsets         │     ▲
//!                                     (Seen copy,     │ (Notice: silence,
//!                                      try_send)      │  incidents; ahead
//!                                               ▼     │  of the lines)
//!                                              night-watch
//! ```
//!
//! The main thread is the supervisor ([`run`]): it starts the pipeline,
//! tells systemd it is ready, turns signals into stop and reload, feeds the
//! watchdog only while the worker threads answer pings, and re-raises a worker's
//! panic so that systemd restarts the service.

pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod discord;
pub mod discover;
pub mod ekos;
pub mod format;
pub mod heartbeat;
pub mod limits;
pub mod localtime;
pub mod nightwatch;
pub mod notice;
pub mod sender;
pub mod service;
pub mod session;
pub mod setup;
pub mod tail;
#[cfg(test)]
mod testing;
pub mod watcher;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, never};
use sd_notify::NotifyState;

use crate::checkpoint::{CheckpointError, Store};
use crate::config::{Config, ConfigError, Follow, Inputs};
use crate::discord::{Client, DryRun, Sink};
use crate::service::{Control, Signal, Stats};
use crate::watcher::WatchError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends the thread's name when it ends, even by a panic, so the
/// supervisor notices at once.
struct ExitGuard(&'static str, Sender<&'static str>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// The two worker threads of one configuration.
struct Pipeline {
    watcher: Option<JoinHandle<Result<(), WatchError>>>,
    sender: Option<JoinHandle<()>>,
    nightwatch: Option<JoinHandle<()>>,
    watcher_ctl: Sender<Control>,
    sender_ctl: Sender<Control>,
    nightwatch_ctl: Sender<Control>,
    exited: Receiver<&'static str>,
    /// Fires once every source is watched and its files are open.
    ready: Receiver<()>,
    /// The `heartbeat` thread, if `heartbeat_url` is set; dropping
    /// `heartbeat_stop` stops it.
    heartbeat: Option<(JoinHandle<()>, Sender<()>)>,
}

/// Capacity of each route's watcher → sender channel, in chunks (each at
/// most [`tail::READ_CHUNK`] of text): small, so an outage cannot pile up
/// memory (with the sender's [`sender::ROUTE_BUDGET`], about 2 MiB per
/// webhook).
const LINE_CHANNEL: usize = 4;
/// Capacity of the night watch → sender channel of notices (the sender
/// takes them whatever its backlog).
const NOTICE_CHANNEL: usize = 64;

impl Pipeline {
    /// Starts the threads; does not wait for the watcher's set-up (see
    /// `ready`), so that the supervisor keeps answering signals and feeding
    /// the watchdog meanwhile.
    fn start(cfg: Arc<Config>, dry_run: bool, stats: Arc<Stats>) -> Result<Pipeline, RunError> {
        let store = Arc::new(Store::open(&cfg.state_dir, !dry_run)?);
        stats.health.restart();
        let sinks: Vec<Box<dyn Sink>> = cfg
            .webhooks
            .iter()
            .map(|w| -> Box<dyn Sink> {
                if dry_run {
                    Box::new(DryRun::stdout())
                } else {
                    Box::new(Client::new(w.clone()))
                }
            })
            .collect();
        // One channel per route, so a stopped webhook fills only its own.
        let (line_tx, line_rx): (Vec<_>, Vec<_>) =
            sinks.iter().map(|_| bounded(LINE_CHANNEL)).unzip();
        let (wctl_tx, wctl_rx) = bounded(16);
        let (sctl_tx, sctl_rx) = bounded(16);
        let (nctl_tx, nctl_rx) = bounded(16);
        let (exit_tx, exit_rx) = bounded(3);
        let (ready_tx, ready_rx) = bounded(1);
        let (notice_tx, notice_rx) = bounded(NOTICE_CHANNEL);

        let mut nw_settings = nightwatch::Settings::from_config(&cfg);
        if !dry_run {
            nw_settings.state_file = Some(cfg.state_dir.join(nightwatch::FILE));
        }
        let (tap, seen_rx, lost) = nightwatch::channel(&nw_settings);
        let ekos_route = nw_settings.ekos_source.map_or(0, |i| cfg.sources[i].route);
        let nw = nightwatch::NightWatch::new(
            nw_settings,
            ekos_route,
            Box::new(nightwatch::SystemClock::default()),
            stats.clone(),
            lost,
        );
        let guard = ExitGuard("night-watch", exit_tx.clone());
        let nightwatch = std::thread::Builder::new()
            .name("night-watch".into())
            .spawn(move || {
                let _guard = guard;
                nw.run(seen_rx, nctl_rx, notice_tx)
            })?;

        let w = watcher::Watcher::new(cfg.clone(), store.clone(), stats.clone(), ready_tx)
            .with_tap(tap);
        let guard = ExitGuard("watcher", exit_tx.clone());
        let watcher = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                let _guard = guard;
                w.run(wctl_rx, line_tx)
            })?;
        // While the checkpoint cannot be written, nothing new is posted:
        // what Discord accepts then could not be recorded, and would be
        // posted again after a restart.
        let trouble = store.clone();
        let s = sender::Sender::new(&cfg, sinks, store, stats.clone())?
            .pause_while(move || trouble.trouble())
            .with_notices(notice_rx);
        let guard = ExitGuard("sender", exit_tx);
        let sender = std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                let _guard = guard;
                s.run(line_rx, sctl_rx)
            })?;
        // A dry run is a test of the configuration: pinging the monitor
        // would tell it that the real service is alive.
        let heartbeat = match cfg.heartbeat.as_ref().filter(|_| !dry_run) {
            Some(hb) => {
                let (stop_tx, stop_rx) = bounded(1);
                let h = heartbeat::Heartbeat::new(hb.clone(), stats, heartbeat::http_pinger())
                    .with_probes(cfg.webhooks.clone(), heartbeat::http_prober());
                let t = std::thread::Builder::new()
                    .name("heartbeat".into())
                    .spawn(move || h.run(stop_rx))?;
                Some((t, stop_tx))
            }
            None => None,
        };
        Ok(Pipeline {
            heartbeat,
            watcher: Some(watcher),
            sender: Some(sender),
            nightwatch: Some(nightwatch),
            watcher_ctl: wctl_tx,
            sender_ctl: sctl_tx,
            nightwatch_ctl: nctl_tx,
            exited: exit_rx,
            ready: ready_rx,
        })
    }

    /// Waits for both threads; re-raises a panic, returns the watcher's error.
    fn join(&mut self) -> Result<(), RunError> {
        let mut result = Ok(());
        // The heartbeat stops at its next wake-up; a ping in progress (up
        // to its timeout) is not waited for, so a slow monitor never delays
        // a stop or a reload.
        if let Some((h, stop)) = self.heartbeat.take() {
            drop(stop);
            if h.is_finished() {
                if let Err(panic) = h.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        if let Some(h) = self.watcher.take() {
            match h.join() {
                Ok(r) => result = r.map_err(RunError::from),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // The night watch ends once the watcher dropped its side of the
        // channel; its last notices go to the sender, which ends next.
        let _ = self.nightwatch_ctl.try_send(Control::Shutdown);
        if let Some(h) = self.nightwatch.take() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        // The sender ends once the watcher dropped its side of the channel.
        let _ = self.sender_ctl.try_send(Control::Shutdown);
        if let Some(h) = self.sender.take() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    }

    /// Clean stop: the watcher stops reading, the sender posts what it has.
    fn shutdown(mut self) -> Result<(), RunError> {
        let _ = self.watcher_ctl.send(Control::Shutdown);
        let _ = self.nightwatch_ctl.send(Control::Shutdown);
        let _ = self.sender_ctl.send(Control::Shutdown);
        self.join()
    }

    /// Fast stop for a reload: nothing more is posted; undelivered lines
    /// are read again from the checkpoint by the next pipeline.
    fn abort(mut self) -> Result<(), RunError> {
        let _ = self.watcher_ctl.send(Control::Abort);
        let _ = self.nightwatch_ctl.send(Control::Abort);
        let _ = self.sender_ctl.send(Control::Abort);
        self.join()
    }
}

/// A one-line description of what is followed, for the start-up line.
pub fn describe_sources(cfg: &Config) -> String {
    cfg.sources
        .iter()
        .map(|s| {
            let pats: Vec<&str> = s.include.iter().map(|p| p.as_str()).collect();
            let mode = match s.follow {
                Follow::Newest => "newest",
                Follow::All => "all",
            };
            format!(
                "{} ({mode} of {} in {})",
                s.name,
                pats.join(", "),
                s.root.display()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How often the supervisor pings the workers: half the watchdog period,
/// and often enough for the heartbeat to know whether they answer.
fn ping_period(watchdog: Option<std::time::Duration>, cfg: &Config) -> Option<std::time::Duration> {
    let for_heartbeat = cfg.heartbeat.as_ref().map(|h| {
        (h.interval / 2).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(10),
        )
    });
    match (watchdog.map(|d| d / 2), for_heartbeat) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs the daemon until SIGINT/SIGTERM. `inputs` are kept for reloads.
pub fn run(cfg: Config, inputs: Inputs) -> Result<(), RunError> {
    let dry_run = inputs.dry_run;
    service::raise_nofile_limit();
    let (sig_tx, sig_rx) = bounded(8);
    service::install_signal_handlers(sig_tx)?;
    log::info!(
        "ekos-log-monitor {} starting: config {}, posting to {}, following {}",
        env!("CARGO_PKG_VERSION"),
        cfg.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none: environment only)".into()),
        if dry_run {
            "stdout (dry run)".to_string()
        } else {
            cfg.webhooks
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        describe_sources(&cfg)
    );
    let stats = Arc::new(Stats::default());
    let watchdog = sd_notify::watchdog_enabled();
    let mut tick = ping_period(watchdog, &cfg);
    let mut pipeline = Pipeline::start(Arc::new(cfg), dry_run, stats.clone())?;
    // READY (and after a reload, READY again) once the watcher's set-up is
    // done; until then signals and the watchdog are served as usual.
    let mut starting = true;
    let mut first_start = true;

    // One clock for the whole run: a timer made anew in each turn of the
    // loop would be pushed back by every other event (reloads, READY), and
    // a burst of them would starve the watchdog until systemd killed us.
    // Only a reload that changes the period (heartbeat_interval) makes a
    // new one.
    let ticker = |t: Option<std::time::Duration>| match t {
        Some(t) => crossbeam_channel::tick(t),
        None => never(),
    };
    let mut timer = ticker(tick);
    let mut ping = 0u64;
    let mut stalled_reported = false;
    loop {
        let ready = if starting {
            pipeline.ready.clone()
        } else {
            never()
        };
        crossbeam_channel::select! {
            recv(ready) -> r => {
                starting = false;
                if r.is_err() {
                    // The watcher ended during its set-up: `exited` says why.
                    continue;
                }
                if first_start {
                    first_start = false;
                    service::trim_memory();
                }
                service::notify(&[NotifyState::Ready]);
                stats.publish();
            }
            recv(sig_rx) -> sig => match sig.unwrap_or(Signal::Stop) {
                Signal::Stop => {
                    log::info!("stopping: posting what is queued");
                    service::notify(&[NotifyState::Stopping]);
                    pipeline.shutdown()?;
                    log::info!("stopped");
                    return Ok(());
                }
                Signal::Reload => {
                    let mut states = vec![NotifyState::Reloading];
                    if let Ok(t) = NotifyState::monotonic_usec_now() {
                        states.push(t);
                    }
                    service::notify(&states);
                    match Config::load(&Inputs::from_process(inputs.config_file.clone(), dry_run)) {
                        Ok(new) => {
                            log::set_max_level(new.log_level);
                            pipeline.abort()?;
                            log::info!("configuration reloaded: following {}", describe_sources(&new));
                            let period = ping_period(watchdog, &new);
                            if period != tick {
                                tick = period;
                                timer = ticker(tick);
                            }
                            pipeline = Pipeline::start(Arc::new(new), dry_run, stats.clone())?;
                            starting = true;
                        }
                        Err(e) => {
                            log::error!("reload failed, keeping the running configuration: {e}");
                            // STATUS= is readable by every local user: say
                            // where to look, not what the file contained.
                            stats.record_error(Some(
                                "reload failed: bad configuration, see journal".into(),
                            ));
                            if !starting {
                                service::notify(&[NotifyState::Ready]);
                            }
                            // A status held back by the rate limit of STATUS=
                            // (a post just before the reload) would wait for
                            // the next post.
                            stats.flush_status();
                        }
                    }
                }
            },
            recv(pipeline.exited) -> name => {
                let name = name.unwrap_or("worker");
                // Tell the others: a watcher whose night watch died would
                // otherwise read on, and the join below would never end
                // (no SIGTERM served, the panic never re-raised). Abort, not
                // Shutdown: lines not yet accepted are read again from the
                // checkpoint after the restart.
                let _ = pipeline.watcher_ctl.send(Control::Abort);
                let _ = pipeline.nightwatch_ctl.send(Control::Abort);
                let _ = pipeline.sender_ctl.send(Control::Abort);
                pipeline.join()?;
                log::error!("the {name} thread stopped unexpectedly");
                return Err(RunError::Io(std::io::Error::other(format!("{name} thread stopped"))));
            }
            recv(timer) -> _ => {
                let w = stats.watcher_pong.load(Ordering::Relaxed);
                let s = stats.sender_pong.load(Ordering::Relaxed);
                let n = stats.nightwatch_pong.load(Ordering::Relaxed);
                let alive = w == ping && s == ping && n == ping;
                stats.health.record_workers(alive, std::time::Instant::now());
                if alive {
                    service::notify(&[NotifyState::Watchdog]);
                    stalled_reported = false;
                } else if !stalled_reported {
                    stalled_reported = true;
                    log::warn!("a worker thread did not answer the watchdog ping in time (watcher {w}, sender {s}, night watch {n}, expected {ping})");
                }
                ping += 1;
                let _ = pipeline.watcher_ctl.try_send(Control::Ping(ping));
                let _ = pipeline.sender_ctl.try_send(Control::Ping(ping));
                let _ = pipeline.nightwatch_ctl.try_send(Control::Ping(ping));
            }
        }
    }
}
