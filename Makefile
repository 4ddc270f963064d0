# pgwa's shared vocabulary. `make demo` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: db db-url db-stop db-restart psql migrate schema test test-fast lint demo sim worker api \
        bench bench-sim bench-campaign bench-webhooks bench-api bench-bots bench-audiences bench-volume scenario-limits clean

db:            ## the local cluster (or DATABASE_URL), migrated; idempotent
	@scripts/db.sh up

db-url:        ## print the connection URL and nothing else
	@scripts/db.sh url

db-stop:
	@scripts/db.sh stop

db-restart:
	@scripts/db.sh restart

psql: db
	@scripts/db.sh psql

migrate: db

schema: db     ## regenerate db/schema.sql from a freshly migrated database
	@$(PY) -m pgwa.schema > db/schema.sql

test: db
	$(PY) -m pytest

test-fast: db  ## the unit tests alone (PostgreSQL, no processes): the inner loop
	$(PY) -m pytest -m "unit and not slow"

lint: db
	.venv/bin/ruff check .

sim: db
	$(PY) -m sim

worker: db
	$(PY) -m worker

api: db
	$(PY) -m api

demo: db
	$(PY) -m pgwa.local.demo

bench: bench-sim bench-campaign bench-webhooks bench-api bench-bots

bench-sim: db
	$(PY) bench/bench_sim.py

bench-campaign: db
	$(PY) bench/bench_campaign.py

bench-webhooks: db
	$(PY) bench/bench_webhooks.py

bench-api: db
	$(PY) bench/bench_api.py

bench-bots: db
	$(PY) bench/bench_bots.py

bench-audiences: db   ## segments, a campaign from a 1M-contact segment, its streamed report
	$(PY) bench/bench_audiences.py

bench-volume: db   ## hot paths with 100M rows of history vs none (BENCH_VOLUME_ROWS to scale)
	$(PY) bench/bench_volume.py

scenario-limits: db   ## Meta's limits end to end on a compressed clock: tier, 131049 retries, 80007
	$(PY) bench/scenario_limits.py

clean: db-stop
	rm -rf .venv .pgdata
