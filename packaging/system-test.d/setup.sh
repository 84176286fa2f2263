# shellcheck shell=bash
# `ekos-log-monitor setup` in the booted container, as the issue's
# independent check does it: sourced by packaging/system-test after its
# own checks, when the package has been purged.
#
# Reinstalls the package, leaves nothing of the manual configuration the
# checks above made (drop-ins, credential, ACLs), then: KStars logs in a
# 0700 home (as KStars writes them), a 0640 root script log under a 0750
# directory, `setup --webhook-file F --ekos-user astro --scripts
# /srv/service/event --yes`, and lines from both on the fake Discord with no
# file edited by hand; a re-run that changes nothing; bad answers that exit
# 1 and change nothing.
#
# Uses from system-test: check, in_ct, wait_for, append, delivered, missing,
# show_journal, is_active, main_pid, ROOT, WORK, WEBHOOK, PORT, MSGS,
# DEBNAME, UNIT.

SETUP_EKOS_LOG=/home/astro/.local/share/kstars/logs/2026-02-01/log_20-00-00.txt
SETUP_SCRIPT_LOG=/srv/service/event/x/y.log
SETUP_DROPINS=/etc/systemd/system/$UNIT.d

# setup_sums: owner, mode and checksum of every file setup may write.
setup_sums() {
    in_ct sh -c "find /etc/ekos-log-monitor $SETUP_DROPINS -type f 2>/dev/null | sort |
        while read -r f; do echo \"\$(stat -c '%a %U:%G' \"\$f\") \$(sha256sum \"\$f\")\"; done"
}

t_setup_prepare() {
    # Everything but the emulation's own drop-in (PrivateUsers=no, 95-*).
    find "$ROOT$SETUP_DROPINS" -mindepth 1 ! -name '95-system-test-*' -exec rm -rf {} + 2>/dev/null
    rm -rf "$ROOT/etc/ekos-log-monitor"
    in_ct systemctl daemon-reload
    in_ct sh -c "cd /root && apt install -y ./$DEBNAME" </dev/null >"$WORK/setup-apt.log" 2>&1 ||
        { tail -n 20 "$WORK/setup-apt.log"; return 1; }
    in_ct sh -c 'id astro >/dev/null 2>&1 || useradd -m -s /bin/bash astro' || return 1
    in_ct chmod 0700 /home/astro || return 1
    in_ct su astro -c "umask 022 && mkdir -p $(dirname "$SETUP_EKOS_LOG") && : >$SETUP_EKOS_LOG" || return 1
    in_ct install -d -m 0750 /srv/service /srv/service/event "$(dirname "$SETUP_SCRIPT_LOG")" || return 1
    in_ct chmod 0750 /srv/service /srv/service/event || return 1
    in_ct setfacl -R -b /srv || return 1
    in_ct install -m 0640 /dev/null "$SETUP_SCRIPT_LOG" || return 1
    in_ct sh -c "umask 077 && echo '$WEBHOOK' >/root/webhook.txt"
    [ "$(in_ct systemctl is-enabled "$UNIT")" = disabled ] && ! is_active
}
check "setup: package reinstalled; astro's KStars log in a 0700 home; a 0640 root script log" t_setup_prepare

t_setup_yes() {
    local msgs_before
    msgs_before=$(wc -l <"$MSGS")
    in_ct ekos-log-monitor setup --webhook-file /root/webhook.txt --ekos-user astro \
        --scripts /srv/service/event --yes >"$WORK/setup.log" 2>&1 ||
        { sed 's/^/  | /' "$WORK/setup.log"; show_journal; return 1; }
    sed 's/^/  | /' "$WORK/setup.log"
    if grep -q systemtest-token "$WORK/setup.log"; then echo "  the token was printed"; return 1; fi
    grep -q '^  Active: active (running)' "$WORK/setup.log" || { echo "  no Active: line"; return 1; }
    [ "$(in_ct systemctl is-enabled "$UNIT")" = enabled ] && is_active || return 1
    # The test message, posted before anything was written.
    tail -n +$((msgs_before + 1)) "$MSGS" | grep "set up on" >/dev/null || { echo "  no test message"; return 1; }
    [ "$(in_ct stat -c '%a %U:%G' /etc/ekos-log-monitor/webhook)" = "600 root:root" ] || return 1
    grep -q '^BindReadOnlyPaths=-/home/astro/.local/share/kstars/logs$' "$ROOT$SETUP_DROPINS/read-home-logs.conf" ||
        return 1
    if [ "${CREDENTIALS_WORK:-yes}" = yes ]; then
        grep -q '^LoadCredential=discord-webhook:/etc/ekos-log-monitor/webhook$' \
            "$ROOT$SETUP_DROPINS/webhook-credential.conf" && [ ! -e "$ROOT/etc/ekos-log-monitor/webhook.env" ]
    else
        # Emulated: systemd cannot pass credentials; setup saw it and used
        # a root-only EnvironmentFile= instead.
        grep -q '^EnvironmentFile=/etc/ekos-log-monitor/webhook.env$' "$ROOT$SETUP_DROPINS/webhook-credential.conf" &&
            [ "$(in_ct stat -c '%a %U:%G' /etc/ekos-log-monitor/webhook.env)" = "600 root:root" ] &&
            grep -q "cannot pass credentials" "$WORK/setup.log"
    fi
}
check "setup --webhook-file F --ekos-user astro --scripts /srv/service/event --yes: enabled, active" t_setup_yes

# The shipped defaults hold (batch_size 10, batch_timeout 30 s): ten lines
# from each file make full batches, posted at once.
t_setup_deliver() {
    append "$SETUP_EKOS_LOG" setup-ekos 1 10
    append "$SETUP_SCRIPT_LOG" setup-script 1 10
    if ! wait_for 30 delivered setup-ekos 1 10 || ! wait_for 10 delivered setup-script 1 10; then
        missing setup-ekos 1 10
        missing setup-script 1 10
        show_journal
        return 1
    fi
}
check "setup: lines from the 0700 home and the 0640 root tree reach Discord, no file edited by hand" t_setup_deliver

t_setup_acl() {
    # An ACL where root's tree was unreadable (and to pass /srv/service),
    # none on the KStars logs, which were readable already.
    in_ct getfacl -p "$SETUP_SCRIPT_LOG" | grep -q '^user:ekos-log-monitor:r--' || return 1
    in_ct getfacl -p /srv/service | grep -q '^user:ekos-log-monitor:--x' || return 1
    if in_ct getfacl -pR /home/astro | grep -q ekos-log-monitor; then
        echo "  an ACL on the home directory"
        return 1
    fi
}
check "setup: ACLs only where the service user could not read" t_setup_acl

t_setup_rerun() {
    local before pid
    before=$(setup_sums)
    pid=$(main_pid)
    in_ct ekos-log-monitor setup --yes >"$WORK/setup-rerun.log" 2>&1 ||
        { sed 's/^/  | /' "$WORK/setup-rerun.log"; return 1; }
    grep -q 'Nothing to change.' "$WORK/setup-rerun.log" || { sed 's/^/  | /' "$WORK/setup-rerun.log"; return 1; }
    [ "$(setup_sums)" = "$before" ] || { echo "  files changed"; return 1; }
    [ "$(main_pid)" = "$pid" ] || { echo "  the service was restarted"; return 1; }
    append "$SETUP_EKOS_LOG" setup-rerun 1 10
    wait_for 30 delivered setup-rerun 1 10 || { missing setup-rerun 1 10; show_journal; return 1; }
}
check "setup --yes again: nothing changed, not restarted, still delivering" t_setup_rerun

# setup_refused MESSAGE ARGS...: exit 1, MESSAGE on stderr, no file changed.
setup_refused() {
    local msg=$1 before rc
    shift
    before=$(setup_sums)
    in_ct ekos-log-monitor setup "$@" >"$WORK/setup-bad.log" 2>&1
    rc=$?
    sed 's/^/  | /' "$WORK/setup-bad.log" | grep -v '^  | \(Posting\|Discord accepted\)'
    [ "$rc" = 1 ] || { echo "  exit status $rc"; return 1; }
    grep -qF "$msg" "$WORK/setup-bad.log" || { echo "  no \"$msg\""; return 1; }
    [ "$(setup_sums)" = "$before" ] || { echo "  files changed"; return 1; }
}

t_setup_bad_url() {
    in_ct sh -c "echo 'https://example.com/api/webhooks/1/x' >/root/bad-url.txt"
    setup_refused "is not a Discord webhook URL" --webhook-file /root/bad-url.txt --ekos-user astro --yes
}
check "setup with a URL that is not a Discord webhook: exit 1, nothing changed" t_setup_bad_url

t_setup_404() {
    local ok=0
    curl -fsS -d notfound "http://127.0.0.1:$PORT/control/mode" >/dev/null || return 1
    setup_refused "HTTP 404" --webhook-file /root/webhook.txt --ekos-user astro --yes || ok=1
    curl -fsS -d normal "http://127.0.0.1:$PORT/control/mode" >/dev/null || return 1
    return $ok
}
check "setup with a webhook Discord answers 404: exit 1, nothing changed" t_setup_404

t_setup_no_logs() {
    in_ct sh -c 'id nolog >/dev/null 2>&1 || useradd -m -s /bin/bash nolog' || return 1
    setup_refused "user nolog has no KStars logs directory" --ekos-user nolog --yes
}
check "setup --ekos-user for a user without KStars logs: exit 1, nothing changed" t_setup_no_logs
