# bash completion for ekos-log-monitor: placeholder, generated from the CLI definition by the lead
