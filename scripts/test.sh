#!/usr/bin/env bash
# Runs the checks behind `make test` and CI beside throwaway RabbitMQ and PostgreSQL (see
# scripts/with-services.sh): cargo fmt --check, clippy with warnings denied, and the workspace
# tests.
#
# Usage: scripts/test.sh [ARGS...]   # ARGS go to cargo test, e.g. scripts/test.sh -- --nocapture
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPTS_DIR

if [[ ${1-} != --with-services ]]; then
    exec "$SCRIPTS_DIR/with-services.sh" "$0" --with-services "$@"
fi
shift

die() {
    echo "test.sh: $*" >&2
    exit 1
}

cd "$SCRIPTS_DIR/.."

# The crash tests stop order-server at fail points, which only this feature compiles in.
# Clippy gets the same features, so both share one build.
features=(--features server/failpoints)

echo "test.sh: cargo fmt --all --check" >&2
cargo fmt --all --check || die "formatting differs from rustfmt: run 'cargo fmt --all' (make fmt) and commit the result"

echo "test.sh: cargo clippy --workspace --all-targets ${features[*]} -- -D warnings" >&2
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings || die "clippy reported warnings or errors (listed above)"

echo "test.sh: cargo test --workspace ${features[*]} $*" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
test_status=0
cargo test --workspace "${features[@]}" "$@" 2>&1 | tee "$log" || test_status=${PIPESTATUS[0]}

# One closing line for the whole workspace, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
    END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$test_status"
