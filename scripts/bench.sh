#!/usr/bin/env bash
# Runs the benchmarks behind `make bench` beside throwaway RabbitMQ and PostgreSQL (see
# scripts/with-services.sh). PostgreSQL runs with fsync=off, so its figures are upper bounds
# for a durable setup.
#
# Usage: scripts/bench.sh
#   BENCH_EVENTS=N        outbox events the relay drains (default 10000)
#   BENCH_ORDERS=N        orders created (default 2000)
#   BENCH_CONCURRENCY=N   concurrent CreateOrder tasks (default 8)
#   BENCH_SAGAS=N         PlaceOrder sagas run against inventory-server and payment-server
#                         processes on each backend (default 500)
#   BENCH_SAGA_CONCURRENCY=N
#                         concurrent PlaceOrder tasks, each waiting for its saga (default 8)
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPTS_DIR

cd "$SCRIPTS_DIR/.."
exec "$SCRIPTS_DIR/with-services.sh" cargo bench -p server --bench outbox
