# The two commands a newcomer needs: `make run` and `make test`.
# Service settings come from VLKD_* variables, e.g. `VLKD_PORT=9000 make run`.
.PHONY: run test lint bench

run:
	scripts/setup.sh serve
	.venv/bin/python -m app

test:
	scripts/setup.sh test
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check app training tests bench
	.venv/bin/ruff format --check app training tests bench
	.venv/bin/mypy app

bench:
	.venv/bin/python bench/service_vs_raw.py
