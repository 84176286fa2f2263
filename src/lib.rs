//! ekos-log-monitor: follow log files and post their new lines to Discord.
