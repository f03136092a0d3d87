#!/usr/bin/env bash
# Create opsq's RabbitMQ vhost and user, grant the user that vhost, and enable the
# management plugin Flower reads queue lengths from. Run as root on the broker's machine
# (rabbitmqctl needs the node's Erlang cookie).
#
# Idempotent: a second run changes nothing. The user's password is generated once, when
# the user is created (or with --rotate), printed once and, with --password-file, written
# to that file (mode 0600). It reaches rabbitmqctl on its standard input, never on a
# command line that `ps` would show.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: rabbitmq-setup.sh [--password-file FILE] [--rotate] [--consumer-timeout MS]
                         [--no-management] [--dry-run]

  --password-file FILE  write a newly generated password to FILE (mode 0600); when FILE
                        already holds one and the user is missing, create the user with it
  --rotate              give the existing user a new password
  --consumer-timeout MS set the delivery acknowledgement timeout for opsq's queues
                        (RabbitMQ 3.12 or later; older versions only have the global
                        consumer_timeout in rabbitmq.conf, which this prints)
  --no-management       leave the management plugin and the user's tags alone
  --dry-run             print the commands that would change something; change nothing

environment: OPSQ_RABBIT_VHOST (opsq), OPSQ_RABBIT_USER (opsq), OPSQ_RABBIT_HOST
(127.0.0.1), OPSQ_RABBIT_PORT (5672), OPSQ_RABBIT_MGMT_PORT (15672): the last three only
go into the printed URLs. RABBITMQCTL and RABBITMQ_PLUGINS name the programs.
EOF
}

VHOST="${OPSQ_RABBIT_VHOST:-opsq}"
RUSER="${OPSQ_RABBIT_USER:-opsq}"
# Where the workers reach the broker and its management API (for the printed URLs).
RABBIT_HOST="${OPSQ_RABBIT_HOST:-127.0.0.1}"
AMQP_PORT="${OPSQ_RABBIT_PORT:-5672}"
MGMT_PORT="${OPSQ_RABBIT_MGMT_PORT:-15672}"
RABBITMQCTL="${RABBITMQCTL:-rabbitmqctl}"
RABBITMQ_PLUGINS="${RABBITMQ_PLUGINS:-rabbitmq-plugins}"
# Letters and digits only, so the password needs no escaping inside a URL.
PASSWORD_LENGTH=32
# The queues the consumer-timeout policy covers: opsq's two task queues.
POLICY_NAME=opsq-consumer-timeout
POLICY_PATTERN='^opsq\.(fleet|control)$'
# First release with per-queue consumer timeouts (policy key consumer-timeout, queue
# argument x-consumer-timeout).
PER_QUEUE_TIMEOUT_SINCE=3.12.0
# Tags that let a user read the management API for its own vhosts.
MANAGEMENT_TAGS=(management policymaker monitoring administrator)
# RabbitMQ's default consumer_timeout, in milliseconds (30 minutes).
DEFAULT_CONSUMER_TIMEOUT_MS=1800000

password_file=""
rotate=0
dry_run=0
management=1
consumer_timeout=""
while [ $# -gt 0 ]; do
    case "$1" in
        --password-file) password_file="${2:?--password-file needs a file name}"; shift 2 ;;
        --password-file=*) password_file="${1#*=}"; shift ;;
        --rotate) rotate=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --no-management) management=0; shift ;;
        --consumer-timeout) consumer_timeout="${2:?--consumer-timeout needs milliseconds}"; shift 2 ;;
        --consumer-timeout=*) consumer_timeout="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "rabbitmq-setup.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -n "$consumer_timeout" ] && ! [[ "$consumer_timeout" =~ ^[0-9]+$ ]]; then
    echo "rabbitmq-setup.sh: --consumer-timeout takes milliseconds, not '$consumer_timeout'" >&2
    exit 2
fi
command -v "$RABBITMQCTL" >/dev/null || {
    echo "rabbitmq-setup.sh: $RABBITMQCTL not found: run this on the RabbitMQ machine" >&2
    exit 1
}

say() { printf '%s\n' "$*"; }
shown() {  # a command as one would type it: words with shell characters in single quotes
    local out="" w
    for w in "$@"; do
        if [[ "$w" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$w "; else out+="'${w//\'/\'\\\'\'}' "; fi
    done
    printf '%s' "${out% }"
}
warn() { printf 'rabbitmq-setup.sh: %s\n' "$*" >&2; }

# Run a command that changes the broker, or only show it with --dry-run. A password is
# never an argument: with_password() feeds it on stdin and shows "<password on stdin>".
change() {
    if [ "$dry_run" = 1 ]; then
        say "+ $(shown "$@")"
    else
        "$@" >/dev/null
    fi
}
with_password() {  # with_password PASSWORD COMMAND...: COMMAND reads PASSWORD on stdin
    local pw="$1"; shift
    if [ "$dry_run" = 1 ]; then
        say "+ $(shown "$@") <password on stdin>"
    else
        printf '%s\n' "$pw" | "$@" >/dev/null
    fi
}

# -s: no banner and no header row, so the output is the data alone.
ctl() { "$RABBITMQCTL" -s "$@"; }

generate_password() {
    local raw
    # 48 random bytes give 64 base64 characters, about 60 after dropping + / =.
    raw="$(head -c 48 /dev/urandom | base64 -w0 | tr -d '+/=')"
    printf '%s' "${raw:0:$PASSWORD_LENGTH}"
}

write_password_file() {  # atomically, never readable by others, even for a moment
    local pw="$1" dir tmp
    if [ "$dry_run" = 1 ]; then
        say "+ write the password to $password_file (mode 0600)"
        return
    fi
    dir="$(dirname -- "$password_file")"
    mkdir -p -- "$dir"
    tmp="$(umask 077 && mktemp "$dir/.rabbitmq-password.XXXXXX")"
    printf '%s\n' "$pw" >"$tmp"
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$password_file"
}

urlencode() {  # percent-encode a vhost name for the path of an amqp:// URL
    local LC_ALL=C  # byte by byte, so UTF-8 names encode as their bytes
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9._~-]) out+="$c" ;;
            *) out+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf '%s' "$out"
}

version_ge() {  # version_ge A B: A >= B
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | sed -n 1p)" = "$2" ]
}

# -- what exists ------------------------------------------------------------------------
reachable=1
if ! version="$("$RABBITMQCTL" version 2>/dev/null)"; then
    if [ "$dry_run" = 1 ]; then
        reachable=0
        version=""
        say "# RabbitMQ is not reachable through $RABBITMQCTL: showing a first-time setup"
    else
        warn "cannot reach RabbitMQ through $RABBITMQCTL (run as root on the broker's machine;"
        warn "is the server up? 'rabbitmqctl status' tells)"
        exit 1
    fi
fi
version="$(printf '%s' "$version" | tr -d '[:space:]')"

vhost_exists=0
user_exists=0
user_tags=""
if [ "$reachable" = 1 ]; then
    if ctl list_vhosts name | grep -Fxq -- "$VHOST"; then vhost_exists=1; fi
    user_line="$(ctl list_users | awk -F'\t' -v u="$RUSER" '$1 == u')"
    if [ -n "$user_line" ]; then
        user_exists=1
        user_tags="$(printf '%s' "$user_line" | cut -f2 | tr -d '[],')"
    fi
fi

stored_password=""
if [ -n "$password_file" ] && [ -s "$password_file" ]; then
    stored_password="$(head -n 1 -- "$password_file")"
fi

# -- vhost ------------------------------------------------------------------------------
if [ "$vhost_exists" = 1 ]; then
    say "vhost '$VHOST': exists"
else
    say "vhost '$VHOST': creating"
    change "$RABBITMQCTL" -q add_vhost "$VHOST"
fi

# -- user and password ------------------------------------------------------------------
new_password=""
if [ "$user_exists" = 0 ]; then
    if [ -n "$stored_password" ] && [ "$rotate" = 0 ]; then
        say "user '$RUSER': creating, with the password already in $password_file"
        with_password "$stored_password" "$RABBITMQCTL" -q add_user "$RUSER"
    else
        new_password="$(generate_password)"
        say "user '$RUSER': creating, with a new password"
        # File first: should add_user fail, the next run creates the user with it.
        if [ -n "$password_file" ]; then write_password_file "$new_password"; fi
        with_password "$new_password" "$RABBITMQCTL" -q add_user "$RUSER"
    fi
elif [ "$rotate" = 1 ]; then
    new_password="$(generate_password)"
    say "user '$RUSER': exists; setting a new password (--rotate)"
    with_password "$new_password" "$RABBITMQCTL" -q change_password "$RUSER"
    # File second: it must never hold a password the broker did not take.
    if [ -n "$password_file" ]; then write_password_file "$new_password"; fi
else
    say "user '$RUSER': exists; password unchanged (--rotate sets a new one)"
    if [ -n "$password_file" ] && [ -z "$stored_password" ]; then
        warn "$password_file holds no password and the user already has one this script"
        warn "cannot read back: use --rotate to set a new one and write it there"
    fi
fi

# The whole vhost is opsq's: Celery declares its own exchanges and queues (task queues,
# pidbox and event queues with generated names), so it needs every permission there and
# none elsewhere.
say "permissions of '$RUSER' on '$VHOST': configure, write, read all"
change "$RABBITMQCTL" -q set_permissions -p "$VHOST" "$RUSER" '.*' '.*' '.*'

# -- management plugin (Flower's queue lengths) -----------------------------------------
if [ "$management" = 1 ]; then
    if [ "$reachable" = 1 ] && "$RABBITMQ_PLUGINS" -q is_enabled rabbitmq_management >/dev/null 2>&1; then
        say "plugin rabbitmq_management: enabled"
    else
        say "plugin rabbitmq_management: enabling"
        change "$RABBITMQ_PLUGINS" -q enable rabbitmq_management
    fi
    has_tag=0
    for t in $user_tags; do
        for m in "${MANAGEMENT_TAGS[@]}"; do [ "$t" = "$m" ] && has_tag=1; done
    done
    if [ "$has_tag" = 1 ]; then
        say "tags of '$RUSER': $user_tags (management API allowed)"
    else
        # Keep whatever tags the user has; add the least one that opens the API.
        say "tags of '$RUSER': adding management (Flower reads queue lengths through the API)"
        # shellcheck disable=SC2086  # the tags are words
        change "$RABBITMQCTL" -q set_user_tags "$RUSER" $user_tags management
    fi
fi

# -- consumer timeout -------------------------------------------------------------------
# opsq acknowledges a task when it has finished. RabbitMQ closes the channel of a
# consumer that holds an unacknowledged message longer than its consumer timeout, so the
# longest per-host deadline must stay below it.
per_queue=0
if [ -n "$version" ] && version_ge "$version" "$PER_QUEUE_TIMEOUT_SINCE"; then per_queue=1; fi
timeout_not_applied=0
say ""
say "consumer timeout (RabbitMQ ${version:-version unknown}):"
if [ "$reachable" = 1 ]; then
    current="$("$RABBITMQCTL" -q eval 'application:get_env(rabbit, consumer_timeout).' 2>/dev/null || true)"
    case "$current" in
        "{ok,"*) current="${current#\{ok,}"; current="${current%\}}" ;;
        undefined) current="$DEFAULT_CONSUMER_TIMEOUT_MS" ;;
        *) current="unknown" ;;
    esac
    say "  global consumer_timeout now: $current ms (RabbitMQ's default: $DEFAULT_CONSUMER_TIMEOUT_MS = 30 min)"
fi
if [ -n "$consumer_timeout" ] && [ "$per_queue" = 1 ]; then
    say "  setting policy $POLICY_NAME on '$VHOST' for $POLICY_PATTERN: $consumer_timeout ms"
    say "  (a queue takes only its highest-priority policy: if another policy matches these"
    say "  queues, add \"consumer-timeout\" to that one instead)"
    change "$RABBITMQCTL" -q set_policy -p "$VHOST" --apply-to queues --priority 0 \
        "$POLICY_NAME" "$POLICY_PATTERN" "{\"consumer-timeout\": $consumer_timeout}"
elif [ -n "$consumer_timeout" ]; then
    timeout_not_applied=1
    warn "RabbitMQ ${version:-(unknown version)} has no per-queue consumer timeout (it came"
    warn "in $PER_QUEUE_TIMEOUT_SINCE). NOT applied. For every vhost of this broker, put"
    warn "    consumer_timeout = $consumer_timeout"
    warn "in /etc/rabbitmq/rabbitmq.conf and restart RabbitMQ; or keep OPSQ_COMMAND_TIMEOUT"
    warn "and every job's --timeout well below the current value."
else
    say "  keep OPSQ_COMMAND_TIMEOUT (default 300 s) and every job's --timeout well below it."
    if [ "$per_queue" = 1 ]; then
        say "  to allow longer commands: rerun with --consumer-timeout MS (a policy on opsq's"
        say "  queues in '$VHOST' only)."
    else
        say "  to allow longer commands on this version: consumer_timeout = MS in"
        say "  /etc/rabbitmq/rabbitmq.conf (global, for every vhost), then restart RabbitMQ."
    fi
fi

# -- what to put in /etc/opsq/secrets.env -----------------------------------------------
vhost_path="$(urlencode "$VHOST")"
if [ -n "$new_password" ] && [ "$dry_run" = 0 ]; then
    pw_shown="$new_password"
    note="the new password is shown this once"
elif [ -n "$password_file" ]; then
    pw_shown="<password in $password_file>"
    note=""
else
    pw_shown="<password>"
    note=""
fi
say ""
say "for /etc/opsq/secrets.env${note:+ ($note)}:"
say "OPSQ_BROKER_URL=amqp://$RUSER:$pw_shown@$RABBIT_HOST:$AMQP_PORT/$vhost_path"
if [ "$management" = 1 ]; then
    say "OPSQ_BROKER_API=http://$RUSER:$pw_shown@$RABBIT_HOST:$MGMT_PORT/api/"
fi
[ "$dry_run" = 1 ] && say "(dry run: nothing was changed)"
if [ "$timeout_not_applied" = 1 ]; then exit 3; fi
exit 0
