#!/usr/bin/env bash
# Runs the order service locally: order-server (gRPC) and daemon-worker (outbox relay), on
# SQLite in var/ with the default configuration, and beside them the saga participants
# inventory-server and payment-server, each with its own SQLite file and daemon-worker. When no broker listens on the configured
# loopback address, it installs RabbitMQ if needed and starts a node in .run/rabbitmq.
# Ctrl-C stops every process that it started. When one of them exits early, it stops the
# others and exits non-zero with that process's name.
#
# Usage: scripts/run.sh                  # or: make run
#   CONF=PATH                  configuration file (default configs/config.yaml)
#   APP__BROKER__AMQP_URL      overrides broker.amqp_url, here and in the binaries
#   APP__SERVER__GRPC_ADDR     overrides server.grpc_addr of order-server only
#   INVENTORY_CONF=PATH        inventory-server configuration (default configs/inventory.yaml)
#   PAYMENT_CONF=PATH          payment-server configuration (default configs/payment.yaml)
# Logs go to .run/NAME.log for each process (order-server, daemon-worker, inventory-server,
# inventory-daemon-worker, payment-server, payment-daemon-worker) and to .run/rabbitmq/log/.
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname -- "$SCRIPTS_DIR")
readonly SCRIPTS_DIR REPO_ROOT
readonly RUN_DIR=$REPO_ROOT/.run
readonly RABBITMQ_DIR=$RUN_DIR/rabbitmq
# Seconds allowed for order-server to listen after it starts. It migrates the database first.
readonly STARTUP_SECONDS=60

die() {
    echo "run.sh: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib.sh
source "$SCRIPTS_DIR/lib.sh"

((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))) ||
    die "bash 5.1 or newer is required (this is $BASH_VERSION), because the script uses 'wait -n -p'"

# Set once each process runs, so cleanup stops only what was started.
ORDER_SERVER_PID=
DAEMON_WORKER_PID=
INVENTORY_SERVER_PID=
INVENTORY_WORKER_PID=
PAYMENT_SERVER_PID=
PAYMENT_WORKER_PID=
RABBITMQ_PID=
EPMD_PID=

# Stops the servers first, so they do not log broker errors while the broker goes down.
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    stop_child payment-daemon-worker "$PAYMENT_WORKER_PID"
    stop_child payment-server "$PAYMENT_SERVER_PID"
    stop_child inventory-daemon-worker "$INVENTORY_WORKER_PID"
    stop_child inventory-server "$INVENTORY_SERVER_PID"
    stop_child daemon-worker "$DAEMON_WORKER_PID"
    stop_child order-server "$ORDER_SERVER_PID"
    stop_rabbitmq_node "$RABBITMQ_DIR" "$RABBITMQ_PID"
    stop_epmd_if_started
    exit "$status"
}
trap cleanup EXIT
trap 'echo "run.sh: stopping" >&2; exit 0' INT TERM

# Prints the value of KEY from the configuration FILE (default $CONF): the first line
# "KEY: value" at any indentation, without quotes. Both keys used here occur once in the
# shipped configurations.
config_value() {
    local key=$1 file=${2:-$CONF} value
    value=$(sed -n "s/^[[:space:]]*$key:[[:space:]]*//p" "$file" | head -n 1)
    value=${value%%[[:space:]]#*}
    value=${value%\"}
    value=${value#\"}
    value=${value%\'}
    value=${value#\'}
    [[ -n $value ]] || die "no '$key:' found in $file"
    echo "$value"
}

show_log_tail() {
    echo "--- last lines of $1 ---" >&2
    tail -n 20 "$1" >&2 || true
}

is_loopback() {
    [[ $1 == 127.0.0.1 || $1 == localhost ]]
}

cd "$REPO_ROOT"
CONF=${CONF:-configs/config.yaml}
INVENTORY_CONF=${INVENTORY_CONF:-configs/inventory.yaml}
PAYMENT_CONF=${PAYMENT_CONF:-configs/payment.yaml}
[[ -f $CONF ]] || die "configuration file '$CONF' not found: set CONF to a file such as configs/config.yaml"
[[ -f $INVENTORY_CONF ]] || die "configuration file '$INVENTORY_CONF' not found: set INVENTORY_CONF to a file such as configs/inventory.yaml"
[[ -f $PAYMENT_CONF ]] || die "configuration file '$PAYMENT_CONF' not found: set PAYMENT_CONF to a file such as configs/payment.yaml"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs) and run this again"
mkdir -p "$RUN_DIR"

amqp_url=${APP__BROKER__AMQP_URL:-$(config_value amqp_url)}
[[ $amqp_url =~ ^amqps?://([^@/]*@)?([^:/?]+)(:([0-9]+))? ]] ||
    die "invalid broker URL '$amqp_url': expected amqp://USER:PASSWORD@HOST:PORT/VHOST"
amqp_host=${BASH_REMATCH[2]}
amqp_port=${BASH_REMATCH[4]:-5672}

grpc_addr=${APP__SERVER__GRPC_ADDR:-$(config_value grpc_addr)}
[[ $grpc_addr =~ ^(.+):([0-9]+)$ ]] || die "invalid gRPC address '$grpc_addr': expected HOST:PORT"
grpc_host=${BASH_REMATCH[1]}
grpc_port=${BASH_REMATCH[2]}
# A server bound to 0.0.0.0 also accepts connections on 127.0.0.1.
if is_loopback "$grpc_host" || [[ $grpc_host == 0.0.0.0 ]]; then
    grpc_host=127.0.0.1
else
    die "gRPC address '$grpc_addr' is not local: this script runs the server on 127.0.0.1 or 0.0.0.0 only"
fi
if port_accepts "$grpc_port"; then
    die "127.0.0.1:$grpc_port is already in use: stop the process listening there or set APP__SERVER__GRPC_ADDR"
fi

# Prints the loopback port of the participant configuration FILE, or exits when it is not
# local or already in use.
participant_port() {
    local file=$1 addr
    addr=$(config_value grpc_addr "$file")
    [[ $addr =~ ^(127\.0\.0\.1|localhost|0\.0\.0\.0):([0-9]+)$ ]] ||
        die "gRPC address '$addr' in $file is not local: this script runs the servers on 127.0.0.1 or 0.0.0.0 only"
    if port_accepts "${BASH_REMATCH[2]}"; then
        die "127.0.0.1:${BASH_REMATCH[2]} (from $file) is already in use: stop the process listening there"
    fi
    echo "${BASH_REMATCH[2]}"
}
inventory_port=$(participant_port "$INVENTORY_CONF")
payment_port=$(participant_port "$PAYMENT_CONF")

# Start the broker first, so that it boots while cargo builds.
started_broker=false
if ! is_loopback "$amqp_host"; then
    echo "run.sh: using the broker at $amqp_host:$amqp_port from the configuration" >&2
elif port_accepts "$amqp_port"; then
    echo "run.sh: using the broker already listening on 127.0.0.1:$amqp_port" >&2
else
    "$SCRIPTS_DIR/rabbitmq.sh" install
    dist_port=$((amqp_port + 20000))
    if ((dist_port > 65535)); then
        dist_port=$(free_ports 1)
    fi
    echo "run.sh: starting RabbitMQ on 127.0.0.1:$amqp_port in $RABBITMQ_DIR" >&2
    start_epmd_if_missing "$RUN_DIR/epmd.log"
    "$SCRIPTS_DIR/rabbitmq.sh" run "$RABBITMQ_DIR" "$amqp_port" "$dist_port" >"$RUN_DIR/rabbitmq-server.log" 2>&1 &
    RABBITMQ_PID=$!
    started_broker=true
fi

cargo build --bin order-server --bin daemon-worker --bin inventory-server --bin payment-server
bin_dir=${CARGO_TARGET_DIR:-target}/debug
"$SCRIPTS_DIR/grpcurl.sh" install
grpcurl=$("$SCRIPTS_DIR/grpcurl.sh" path)

if [[ $started_broker == true ]]; then
    if ! "$SCRIPTS_DIR/rabbitmq.sh" wait "$RABBITMQ_DIR" 90; then
        show_log_tail "$RUN_DIR/rabbitmq-server.log"
        die "RabbitMQ failed to start (log above)"
    fi
fi

# order-server runs the migrations (data.auto_migrate) before it listens, so the worker starts
# after it and does not migrate the same database at the same time.
echo "run.sh: starting order-server on $grpc_host:$grpc_port" >&2
"$bin_dir/order-server" -conf "$CONF" >"$RUN_DIR/order-server.log" 2>&1 &
ORDER_SERVER_PID=$!
if ! (wait_for_port "$grpc_port" "$STARTUP_SECONDS" "$ORDER_SERVER_PID" order-server); then
    show_log_tail "$RUN_DIR/order-server.log"
    exit 1
fi

echo "run.sh: starting daemon-worker" >&2
"$bin_dir/daemon-worker" -conf "$CONF" >"$RUN_DIR/daemon-worker.log" 2>&1 &
DAEMON_WORKER_PID=$!

# The participants take their addresses from their own configurations, so an override meant
# for order-server is removed from their environment.
echo "run.sh: starting inventory-server on 127.0.0.1:$inventory_port" >&2
env -u APP__SERVER__GRPC_ADDR "$bin_dir/inventory-server" -conf "$INVENTORY_CONF" >"$RUN_DIR/inventory-server.log" 2>&1 &
INVENTORY_SERVER_PID=$!
if ! (wait_for_port "$inventory_port" "$STARTUP_SECONDS" "$INVENTORY_SERVER_PID" inventory-server); then
    show_log_tail "$RUN_DIR/inventory-server.log"
    exit 1
fi
echo "run.sh: starting the daemon-worker of inventory-server" >&2
"$bin_dir/daemon-worker" -conf "$INVENTORY_CONF" >"$RUN_DIR/inventory-daemon-worker.log" 2>&1 &
INVENTORY_WORKER_PID=$!

echo "run.sh: starting payment-server on 127.0.0.1:$payment_port" >&2
env -u APP__SERVER__GRPC_ADDR "$bin_dir/payment-server" -conf "$PAYMENT_CONF" >"$RUN_DIR/payment-server.log" 2>&1 &
PAYMENT_SERVER_PID=$!
if ! (wait_for_port "$payment_port" "$STARTUP_SECONDS" "$PAYMENT_SERVER_PID" payment-server); then
    show_log_tail "$RUN_DIR/payment-server.log"
    exit 1
fi
echo "run.sh: starting the daemon-worker of payment-server" >&2
"$bin_dir/daemon-worker" -conf "$PAYMENT_CONF" >"$RUN_DIR/payment-daemon-worker.log" 2>&1 &
PAYMENT_WORKER_PID=$!

request='{"request_id":"demo-1","user_id":"alice","currency":"EUR","items":[{"sku":"book","quantity":2,"unit_price":1250}]}'
place_request='{"request_id":"demo-2","user_id":"alice","currency":"EUR","items":[{"sku":"book","quantity":2,"unit_price":1250}],"wait_timeout":"10s"}'
cat <<EOF

The order service is running. Logs: .run/*.log

  order-server      $grpc_host:$grpc_port
  inventory-server  127.0.0.1:$inventory_port
  payment-server    127.0.0.1:$payment_port

Create an order:
  $grpcurl -plaintext -d '$request' $grpc_host:$grpc_port order.v1.OrderService/CreateOrder

Stock a SKU, fund an account, and place an order through the saga:
  $grpcurl -plaintext -d '{"sku":"book","available":10}' 127.0.0.1:$inventory_port inventory.v1.InventoryService/SetStock
  $grpcurl -plaintext -d '{"user_id":"alice","amount":5000}' 127.0.0.1:$payment_port payment.v1.PaymentService/Deposit
  $grpcurl -plaintext -d '$place_request' $grpc_host:$grpc_port order.v1.OrderService/PlaceOrder

EOF
if [[ $started_broker == true ]]; then
    cat <<EOF
See the published event in the queue (from $REPO_ROOT):
  scripts/rabbitmq.sh ctl .run/rabbitmq list_queues name messages

EOF
else
    echo "See the published event with 'rabbitmqctl list_queues name messages' on the broker at $amqp_host:$amqp_port."
    echo
fi
echo "Press Ctrl-C to stop."

declare -A names=(
    [$ORDER_SERVER_PID]=order-server
    [$DAEMON_WORKER_PID]=daemon-worker
    [$INVENTORY_SERVER_PID]=inventory-server
    [$INVENTORY_WORKER_PID]=inventory-daemon-worker
    [$PAYMENT_SERVER_PID]=payment-server
    [$PAYMENT_WORKER_PID]=payment-daemon-worker
)
pids=("$ORDER_SERVER_PID" "$DAEMON_WORKER_PID" "$INVENTORY_SERVER_PID" "$INVENTORY_WORKER_PID"
    "$PAYMENT_SERVER_PID" "$PAYMENT_WORKER_PID")
if [[ -n $RABBITMQ_PID ]]; then
    names[$RABBITMQ_PID]="RabbitMQ node"
    pids+=("$RABBITMQ_PID")
fi
if [[ -n $EPMD_PID ]]; then
    names[$EPMD_PID]=epmd
    pids+=("$EPMD_PID")
fi

# Returns when any of the processes exits, or when Ctrl-C runs the INT trap.
exited_pid=
exit_status=0
wait -n -p exited_pid "${pids[@]}" || exit_status=$?
name="a child process"
if [[ -n $exited_pid && -n ${names[$exited_pid]:-} ]]; then
    name=${names[$exited_pid]}
fi
# The process was reaped by 'wait -n', so cleanup must not wait for it again.
case $exited_pid in
    "$ORDER_SERVER_PID") ORDER_SERVER_PID= ;;
    "$DAEMON_WORKER_PID") DAEMON_WORKER_PID= ;;
    "$INVENTORY_SERVER_PID") INVENTORY_SERVER_PID= ;;
    "$INVENTORY_WORKER_PID") INVENTORY_WORKER_PID= ;;
    "$PAYMENT_SERVER_PID") PAYMENT_SERVER_PID= ;;
    "$PAYMENT_WORKER_PID") PAYMENT_WORKER_PID= ;;
    "$RABBITMQ_PID") RABBITMQ_PID= ;;
    "$EPMD_PID") EPMD_PID= ;;
esac
case $name in
    order-server | daemon-worker | inventory-server | inventory-daemon-worker | payment-server | payment-daemon-worker)
        show_log_tail "$RUN_DIR/$name.log"
        ;;
    "RabbitMQ node") show_log_tail "$RUN_DIR/rabbitmq-server.log" ;;
esac
die "$name (pid $exited_pid) exited with status $exit_status: stopping the other processes"
