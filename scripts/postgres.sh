#!/usr/bin/env bash
# Installs PostgreSQL from the Debian package and runs throwaway clusters in scratch folders,
# listening on 127.0.0.1 only. Clusters run with fsync=off and trust authentication, so use
# them for tests and local runs, never for data you want to keep.
#
# Usage:
#   scripts/postgres.sh install
#   scripts/postgres.sh start DIR PORT   # initialises DIR/data on first use, logs to DIR/postgres.log
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh url PORT         # prints the connection URL for user postgres
set -euo pipefail

usage() {
    sed -n '6,10s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

is_port() {
    [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535))
}

# Prints the server binaries folder of the highest installed major version, or nothing.
find_bin_dir() {
    local dirs=()
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb ]] && dirs+=("$dir")
    done
    ((${#dirs[@]} > 0)) || return 0
    printf '%s\n' "${dirs[@]}" | sort -t/ -k4,4n | tail -n 1
}

require_bin_dir() {
    local bin_dir
    bin_dir=$(find_bin_dir)
    [[ -n $bin_dir ]] || die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: run 'scripts/postgres.sh install'"
    echo "$bin_dir"
}

# Runs a command as the cluster's owner. PostgreSQL refuses to run as root, so root runs it as
# the postgres user, and any other user runs it as themselves.
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd_install() {
    if [[ -n $(find_bin_dir) ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        cat >&2 <<'EOF'
postgres.sh: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb).
Install the Debian package as root, then run this command again:
    sudo apt-get update && sudo apt-get install -y postgresql
The system service is not needed: the project's scripts start their own clusters.
EOF
        exit 1
    fi
    echo "postgres.sh: installing the postgresql package" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    [[ -n $(find_bin_dir) ]] || die "apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/initdb exists"
}

cmd_start() {
    (($# == 2)) || usage
    local dir=$1 port=$2
    is_port "$port" || die "invalid PORT '$port': expected a TCP port number from 1 to 65535"
    local bin_dir
    bin_dir=$(require_bin_dir)

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        as_postgres test -x "$dir" ||
            die "user postgres cannot enter $dir: make each parent folder searchable (chmod o+x) or choose another DIR"
    fi

    if [[ ! -f $dir/data/PG_VERSION ]]; then
        as_postgres "$bin_dir/initdb" --pgdata="$dir/data" --username=postgres --auth=trust \
            -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            die "initdb failed for $dir/data: see $dir/initdb.log"
    fi

    if as_postgres "$bin_dir/pg_ctl" status --pgdata="$dir/data" >/dev/null 2>&1; then
        die "a server is already running on $dir/data: stop it with 'scripts/postgres.sh stop $dir'"
    fi
    # -k puts the Unix socket in DIR instead of /var/run/postgresql.
    as_postgres "$bin_dir/pg_ctl" start --wait --silent --pgdata="$dir/data" --log="$dir/postgres.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" ||
        die "PostgreSQL failed to start on 127.0.0.1:$port: see $dir/postgres.log"
}

cmd_stop() {
    (($# == 1)) || usage
    local dir=$1
    [[ -f $dir/data/PG_VERSION ]] || die "no cluster found in $dir/data: pass the DIR given to 'scripts/postgres.sh start'"
    local bin_dir
    bin_dir=$(require_bin_dir)
    as_postgres "$bin_dir/pg_ctl" status --pgdata="$dir/data" >/dev/null 2>&1 ||
        die "no server is running on $dir/data"
    as_postgres "$bin_dir/pg_ctl" stop --wait --silent --mode=fast --pgdata="$dir/data" ||
        die "pg_ctl failed to stop the cluster in $dir/data: see $dir/postgres.log"
}

cmd_url() {
    (($# == 1)) || usage
    is_port "$1" || die "invalid PORT '$1': expected a TCP port number from 1 to 65535"
    echo "postgres://postgres@127.0.0.1:$1/postgres"
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
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        url) cmd_url "$@" ;;
        -h | --help | help) usage ;;
        *)
            echo "postgres.sh: unknown command '$command'" >&2
            usage
            ;;
    esac
}

main "$@"
