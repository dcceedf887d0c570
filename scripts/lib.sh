# shellcheck shell=bash
# Process and port helpers shared by scripts/run.sh and scripts/test.sh. The caller defines die()
# and sets SCRIPTS_DIR to the absolute path of scripts/ before it sources this file.

# Returns success when something accepts TCP connections on 127.0.0.1:$1.
port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Returns success while the process exists and is not a zombie (a process that has exited but
# that its parent has not reaped yet, which `kill -0` still reports as alive).
process_running() {
    local stat
    # $(<file) would end a `set -e` script when the file is missing, even after ||, so use cat.
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Prints N distinct free TCP ports on 127.0.0.1, one per line. The sockets stay bound until all
# ports are chosen, so the kernel cannot hand out the same port twice.
free_ports() {
    python3 - "$1" <<'EOF'
import socket
import sys

sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
for s in sockets:
    print(s.getsockname()[1])
EOF
}

# Polls until 127.0.0.1:PORT accepts connections. Fails when SECONDS_MAX pass or when the
# process PID, which should open the port, exits first.
wait_for_port() {
    local port=$1 seconds_max=$2 pid=$3 name=$4
    local deadline=$((SECONDS + seconds_max))
    until port_accepts "$port"; do
        process_running "$pid" || die "$name (pid $pid) exited before it listened on 127.0.0.1:$port"
        ((SECONDS < deadline)) || die "timed out after $seconds_max s waiting for $name to listen on 127.0.0.1:$port"
        sleep 0.2
    done
}

# Sends SIGTERM to the child process PID, waits up to SECONDS_MAX for it to exit, then sends
# SIGKILL, and finally reaps it. Does nothing when PID is empty.
stop_child() {
    local name=$1 pid=$2 seconds_max=${3:-20}
    [[ -n $pid ]] || return 0
    if process_running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + seconds_max))
        while process_running "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if process_running "$pid"; then
            echo "$name (pid $pid) did not exit within $seconds_max s of SIGTERM: sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# Starts epmd as a child of this shell unless one is already running, logging to LOG_FILE, and
# sets EPMD_PID to its pid (empty when an existing epmd is used). Owning epmd lets the caller
# stop and reap it. A node that finds no epmd starts one with -daemon, which ends up a child of
# process 1 and outlives the caller.
start_epmd_if_missing() {
    local log_file=$1
    EPMD_PID=
    if pgrep -x epmd >/dev/null; then
        return 0
    fi
    "$SCRIPTS_DIR/rabbitmq.sh" epmd >"$log_file" 2>&1 &
    EPMD_PID=$!
    # The default epmd port is 4369. If another epmd won the race for it, this one exits and the
    # port still opens, and stop_epmd_if_started then leaves the other one alone.
    wait_for_port 4369 10 "$EPMD_PID" epmd
}

# Stops the epmd that start_epmd_if_missing started, unless a node outside this script is still
# registered with it.
stop_epmd_if_started() {
    [[ -n ${EPMD_PID:-} ]] || return 0
    if process_running "$EPMD_PID"; then
        if ! "$SCRIPTS_DIR/rabbitmq.sh" stop-epmd; then
            echo "epmd (pid $EPMD_PID) left running because another Erlang node is registered with it" >&2
            EPMD_PID=
            return 0
        fi
    fi
    wait "$EPMD_PID" 2>/dev/null || true
    EPMD_PID=
}

# Stops the RabbitMQ node in DIR that runs as the child process PID, then reaps it. Tries a
# graceful 'rabbitmqctl stop' first, then SIGTERM (which the rabbitmq-server script forwards to
# the Erlang VM), then SIGKILL.
stop_rabbitmq_node() {
    local dir=$1 pid=$2
    [[ -n $pid ]] || return 0
    if process_running "$pid"; then
        "$SCRIPTS_DIR/rabbitmq.sh" stop "$dir" >/dev/null ||
            echo "rabbitmqctl stop failed for the node in $dir: sending SIGTERM" >&2
    fi
    stop_child "RabbitMQ node in $dir" "$pid" 30

    # SIGKILL on the rabbitmq-server script leaves its Erlang VM running, so end that too.
    local vm_pid
    vm_pid=$(cat "$dir/rabbitmq.pid" 2>/dev/null) || return 0
    if [[ $vm_pid =~ ^[0-9]+$ ]] && process_running "$vm_pid" &&
        [[ $(cat "/proc/$vm_pid/comm" 2>/dev/null) == beam.smp ]]; then
        echo "the Erlang VM of the node in $dir (pid $vm_pid) is still running: sending SIGKILL" >&2
        kill -KILL "$vm_pid" 2>/dev/null || true
    fi
}
