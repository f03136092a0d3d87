#!/usr/bin/env bash
# Start what opsq needs on this machine when it is not already running:
# PostgreSQL and RabbitMQ (local services), and the OpenSSH server and sudo packages for
# the local test fleet. Idempotent; prints one line per thing it had to do.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { echo "PostgreSQL did not start; see /var/log/postgresql/" >&2; exit 1; }
fi

if ! rabbit_up; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached
    for _ in $(seq 1 120); do rabbit_up && break; sleep 0.5; done
    rabbit_up || { echo "RabbitMQ did not start; see /var/log/rabbitmq/" >&2; exit 1; }
    rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
    echo "installing openssh-server (for the local fleet)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq openssh-server openssh-client >/dev/null
fi

if ! command -v sudo >/dev/null; then
    echo "installing sudo (for --become on the local fleet)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq sudo >/dev/null
fi
