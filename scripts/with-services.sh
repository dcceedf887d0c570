#!/usr/bin/env bash
# Runs a command beside a throwaway RabbitMQ node and PostgreSQL cluster on free ports of
# 127.0.0.1, installing RabbitMQ, PostgreSQL and grpcurl first when they are missing. Every
# process it starts is stopped on exit, and its scratch folder is removed. scripts/test.sh and
# scripts/bench.sh run through it.
#
# Usage: scripts/with-services.sh COMMAND [ARGS...]
#
# The command gets these environment variables:
#   TEST_AMQP_URL       amqp://guest:guest@127.0.0.1:PORT/%2f of the throwaway node
#   TEST_RABBITMQ_DIR   the node's folder, for "$RABBITMQ_SCRIPT ctl $TEST_RABBITMQ_DIR stop_app"
#   RABBITMQ_SCRIPT     absolute path of scripts/rabbitmq.sh
#   TEST_POSTGRES_URL   postgres://postgres@127.0.0.1:PORT/postgres (trust authentication)
#   GRPCURL             absolute path of a grpcurl binary
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname -- "$SCRIPTS_DIR")
readonly SCRIPTS_DIR REPO_ROOT

die() {
    echo "with-services.sh: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib.sh
source "$SCRIPTS_DIR/lib.sh"

# Set once each resource exists, so cleanup stops only what was started.
SCRATCH_DIR=
RABBITMQ_DIR=
RABBITMQ_PID=
POSTGRES_DIR=
EPMD_PID=

# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $RABBITMQ_PID ]]; then
        stop_rabbitmq_node "$RABBITMQ_DIR" "$RABBITMQ_PID"
    fi
    if [[ -n $POSTGRES_DIR && -f $POSTGRES_DIR/data/postmaster.pid ]]; then
        "$SCRIPTS_DIR/postgres.sh" stop "$POSTGRES_DIR"
    fi
    stop_epmd_if_started
    if [[ -n $SCRATCH_DIR ]]; then
        rm -rf "$SCRATCH_DIR"
        rmdir "$REPO_ROOT/.scratch" 2>/dev/null
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the last lines of a log file to stderr, because the scratch folder is removed on exit.
show_log_tail() {
    echo "--- last lines of $1 ---" >&2
    tail -n 40 "$1" >&2 || true
}

cd "$REPO_ROOT"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs) and run this again"
command -v python3 >/dev/null || die "python3 not found: install it (Debian: apt-get install -y python3 python3-venv)"

"$SCRIPTS_DIR/rabbitmq.sh" install
"$SCRIPTS_DIR/postgres.sh" install
"$SCRIPTS_DIR/grpcurl.sh" install

SCRATCH_DIR=$REPO_ROOT/.scratch/services-$$
rm -rf "$SCRATCH_DIR"
mkdir -p "$SCRATCH_DIR"
# Root runs PostgreSQL as user postgres, which must be able to enter the folder.
chmod 755 "$SCRATCH_DIR"

mapfile -t ports < <(free_ports 3)
((${#ports[@]} == 3)) || die "could not find 3 free TCP ports on 127.0.0.1"
amqp_port=${ports[0]}
rabbitmq_dist_port=${ports[1]}
postgres_port=${ports[2]}

echo "with-services.sh: starting RabbitMQ on 127.0.0.1:$amqp_port and PostgreSQL on 127.0.0.1:$postgres_port" >&2
start_epmd_if_missing "$SCRATCH_DIR/epmd.log"
RABBITMQ_DIR=$SCRATCH_DIR/rabbitmq
"$SCRIPTS_DIR/rabbitmq.sh" run "$RABBITMQ_DIR" "$amqp_port" "$rabbitmq_dist_port" \
    >"$SCRATCH_DIR/rabbitmq-server.log" 2>&1 &
RABBITMQ_PID=$!

# Start PostgreSQL while the RabbitMQ node boots.
POSTGRES_DIR=$SCRATCH_DIR/postgres
if ! "$SCRIPTS_DIR/postgres.sh" start "$POSTGRES_DIR" "$postgres_port"; then
    show_log_tail "$POSTGRES_DIR/postgres.log"
    die "PostgreSQL failed to start (log above)"
fi

if ! "$SCRIPTS_DIR/rabbitmq.sh" wait "$RABBITMQ_DIR" 90; then
    show_log_tail "$SCRATCH_DIR/rabbitmq-server.log"
    die "RabbitMQ failed to start (log above)"
fi

export TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$amqp_port/%2f"
export TEST_RABBITMQ_DIR=$RABBITMQ_DIR
export RABBITMQ_SCRIPT=$SCRIPTS_DIR/rabbitmq.sh
TEST_POSTGRES_URL=$("$SCRIPTS_DIR/postgres.sh" url "$postgres_port")
export TEST_POSTGRES_URL
GRPCURL=$("$SCRIPTS_DIR/grpcurl.sh" path)
export GRPCURL

(($# > 0)) || die "no command given: usage: scripts/with-services.sh COMMAND [ARGS...]"
command_status=0
"$@" || command_status=$?
exit "$command_status"
