#!/usr/bin/env bash
# Installs RabbitMQ from the Debian package and runs isolated nodes that keep all their files
# in one scratch folder, so several nodes can run side by side without /var/lib/rabbitmq.
# Every socket is bound to 127.0.0.1 (epmd also listens on ::1).
#
# Usage:
#   scripts/rabbitmq.sh install
#   scripts/rabbitmq.sh run DIR PORT [DIST_PORT]   # foreground; DIST_PORT defaults to PORT+20000
#   scripts/rabbitmq.sh wait DIR [SECONDS]         # waits until the node serves AMQP (default 60 s)
#   scripts/rabbitmq.sh ctl DIR ARGS...            # rabbitmqctl against the node in DIR
#   scripts/rabbitmq.sh stop DIR                   # returns after the node has exited
#   scripts/rabbitmq.sh epmd                       # foreground epmd on 127.0.0.1
#   scripts/rabbitmq.sh stop-epmd                  # fails while nodes are registered
set -euo pipefail

readonly RABBITMQ_BIN=/usr/lib/rabbitmq/bin
readonly EPMD=/usr/lib/erlang/bin/epmd
# Makes Erlang distribution listen on loopback only, for the node and for rabbitmqctl.
readonly LOOPBACK_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'

usage() {
    sed -n '6,13s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

die() {
    echo "rabbitmq.sh: $*" >&2
    exit 1
}

is_port() {
    [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535))
}

# Prints the absolute path of an existing folder, or fails naming it.
absolute_dir() {
    [[ -d $1 ]] || die "folder '$1' not found: pass the DIR given to 'scripts/rabbitmq.sh run'"
    (cd "$1" && pwd)
}

# Returns success when the pid file names a running process.
pid_file_alive() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# Returns success when something accepts TCP connections on 127.0.0.1:$1.
port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_install() {
    if [[ -x $RABBITMQ_BIN/rabbitmq-server ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        cat >&2 <<'EOF'
rabbitmq.sh: RabbitMQ is not installed (/usr/lib/rabbitmq/bin/rabbitmq-server is missing).
Install the Debian package as root, then run this command again:
    sudo apt-get update && sudo apt-get install -y rabbitmq-server
The system service is not needed: the project's scripts start their own nodes.
EOF
        exit 1
    fi
    echo "rabbitmq.sh: installing the rabbitmq-server package" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    [[ -x $RABBITMQ_BIN/rabbitmq-server ]] ||
        die "apt-get installed rabbitmq-server, but $RABBITMQ_BIN/rabbitmq-server is still missing"
}

# Exports the environment shared by the node and rabbitmqctl. Each default path of the Debian
# package (/etc/rabbitmq, /var/lib/rabbitmq, /var/log/rabbitmq) is replaced by one under DIR.
# HOME matters because both sides read the Erlang cookie from $HOME/.erlang.cookie.
export_node_env() {
    local dir=$1
    [[ -f $dir/nodename ]] ||
        die "$dir/nodename is missing: start a node there first with 'scripts/rabbitmq.sh run $dir PORT'"
    export HOME=$dir
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(<"$dir/nodename")
    export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_PID_FILE=$dir/rabbitmq.pid
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CTL_ERL_ARGS=$LOOPBACK_ERL_ARGS
}

# Runs the node in the foreground, so the caller owns the process: start it with & and wait on
# it. A node started with -detached is orphaned, and where process 1 does not reap orphans
# (as in many containers) it stays behind as a zombie after it stops.
cmd_run() {
    (($# == 2 || $# == 3)) || usage
    local dir=$1 port=$2
    is_port "$port" || die "invalid PORT '$port': expected a TCP port number from 1 to 65535"
    local dist_port=${3:-$((10#$port + 20000))}
    is_port "$dist_port" ||
        die "invalid DIST_PORT '$dist_port': pass a free TCP port from 1 to 65535 as the third argument"
    [[ -x $RABBITMQ_BIN/rabbitmq-server ]] ||
        die "$RABBITMQ_BIN/rabbitmq-server is missing: run 'scripts/rabbitmq.sh install'"

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid_file_alive "$dir/rabbitmq.pid"; then
        die "a node is already running in $dir: stop it with 'scripts/rabbitmq.sh stop $dir'"
    fi

    # Remove the previous run's pid file first, so that 'wait' cannot mistake it for this one.
    rm -f "$dir/rabbitmq.pid"
    mkdir -p "$dir/mnesia" "$dir/log"
    echo "rabbit-$port@localhost" >"$dir/nodename"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    echo "listeners.tcp.default = 127.0.0.1:$port" >"$dir/rabbitmq.conf"

    export_node_env "$dir"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$dist_port
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$LOOPBACK_ERL_ARGS
    # The /usr/sbin wrapper switches to the rabbitmq user, so call the server script directly.
    exec "$RABBITMQ_BIN/rabbitmq-server"
}

cmd_ctl() {
    (($# >= 2)) || usage
    local dir
    dir=$(absolute_dir "$1")
    shift
    export_node_env "$dir"
    exec "$RABBITMQ_BIN/rabbitmqctl" "$@"
}

cmd_wait() {
    (($# == 1 || $# == 2)) || usage
    local seconds=${2:-60}
    [[ $seconds =~ ^[0-9]+$ ]] || die "invalid SECONDS '$seconds': expected a whole number of seconds"
    local deadline=$((SECONDS + seconds))
    # The folder may not exist yet when 'run' was started in the background just before.
    local dir
    dir=$(realpath -m -- "$1")
    local timeout_message="timed out after $seconds s waiting for the node in $dir to start: see $dir/log"

    # 'run' writes nodename and rabbitmq.conf before it starts the node, and the node writes its
    # pid file early in boot, so a live pid file means the other files belong to this run.
    until pid_file_alive "$dir/rabbitmq.pid"; do
        ((SECONDS < deadline)) || die "$timeout_message"
        sleep 0.2
    done
    export_node_env "$dir"
    local port
    port=$(sed -n 's/^listeners\.tcp\.default = 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$dir/rabbitmq.conf")
    [[ -n $port ]] || die "no AMQP port found in $dir/rabbitmq.conf"

    # 'rabbitmqctl wait' polls until the rabbit application has booted and fails early when the
    # process in the pid file exits. 'await_startup' would fail at once instead, because a node
    # that has just started is not yet registered with epmd.
    local remaining=$((deadline - SECONDS))
    ((remaining > 0)) || die "$timeout_message"
    if ! "$RABBITMQ_BIN/rabbitmqctl" --quiet wait --timeout "$remaining" "$RABBITMQ_PID_FILE" >/dev/null; then
        pid_file_alive "$RABBITMQ_PID_FILE" || die "the node in $dir exited during startup: see $dir/log"
        die "$timeout_message"
    fi
    until port_accepts "$port"; do
        ((SECONDS < deadline)) || die "$timeout_message (AMQP port $port is closed)"
        sleep 0.2
    done
}

cmd_stop() {
    (($# == 1)) || usage
    local dir
    dir=$(absolute_dir "$1")
    export_node_env "$dir"
    pid_file_alive "$RABBITMQ_PID_FILE" || die "no node is running in $dir ($RABBITMQ_PID_FILE is missing or stale)"
    # Given the pid file, 'stop' returns only after the node's OS process has exited.
    "$RABBITMQ_BIN/rabbitmqctl" --quiet stop "$RABBITMQ_PID_FILE"
}

# Runs epmd in the foreground, so the caller owns it and can reap it: a node that finds no epmd
# starts one with -daemon, which ends up a child of process 1.
cmd_epmd() {
    (($# == 0)) || usage
    exec "$EPMD" -address 127.0.0.1
}

cmd_stop_epmd() {
    (($# == 0)) || usage
    if pgrep -x epmd >/dev/null; then
        # epmd rejects the kill while any node is registered, unless it runs with -relaxed_command_check.
        "$EPMD" -kill >/dev/null || die "epmd did not stop: a node is still registered ('$EPMD -names' lists them)"
    fi
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    case $command in
        install)
            (($# == 0)) || usage
            cmd_install
            ;;
        run) cmd_run "$@" ;;
        ctl) cmd_ctl "$@" ;;
        wait) cmd_wait "$@" ;;
        stop) cmd_stop "$@" ;;
        epmd) cmd_epmd "$@" ;;
        stop-epmd) cmd_stop_epmd "$@" ;;
        -h | --help | help) usage ;;
        *)
            echo "rabbitmq.sh: unknown command '$command'" >&2
            usage
            ;;
    esac
}

main "$@"
