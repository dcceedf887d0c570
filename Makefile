# Developer entry points. `make` lists the targets.

CONF ?= configs/config.yaml
COMPOSE := docker compose -f deploy/docker-compose.yaml

.DEFAULT_GOAL := help
.PHONY: help run test bench migrate build fmt lint up down clean-run

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## Run order-server and daemon-worker on CONF, starting RabbitMQ when none listens
	CONF=$(CONF) scripts/run.sh

test: ## Start throwaway RabbitMQ and PostgreSQL, then run fmt, clippy and all tests
	scripts/test.sh

bench: ## Measure relay, CreateOrder and saga throughput beside raw ceilings (release build)
	scripts/bench.sh

migrate: ## Apply the database migrations for CONF (default configs/config.yaml)
	cargo run --bin migrate -- -conf $(CONF) up

build: ## Build every binary of the workspace (debug)
	cargo build --workspace --bins

fmt: ## Format the code with rustfmt
	cargo fmt --all

lint: ## Run clippy on all targets, with warnings as errors
	cargo clippy --workspace --all-targets -- -D warnings

up: ## Build the images and start the stack in deploy/docker-compose.yaml
	$(COMPOSE) up -d --build

down: ## Stop and remove the containers of the stack
	$(COMPOSE) down

clean-run: ## Remove the local state of `make run`: .run (RabbitMQ node, logs) and var (SQLite)
	rm -rf .run var
