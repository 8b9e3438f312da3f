# The two commands of the README: `make run` and `make test`. Each installs what it needs.
.PHONY: setup run envd test lint format proto envd-bundle bench

setup:
	@bash scripts/setup.sh

# The server: REST api, proxy and container sandboxes on port 3000, data in /var/lib/hearth.
run: setup envd-bundle
	uv run hearth serve

# envd alone, in a throwaway isolated root, for the SDK's debug mode.
envd: setup envd-bundle
	uv run hearth envd --isolated

test: setup envd-bundle
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy
	uv run hearth template build base
	uv run hearth template build code-interpreter-v1
	uv run pytest -q

lint:
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

format:
	uv run ruff check --fix .
	uv run ruff format .

proto: setup
	bash scripts/gen_proto.sh

envd-bundle: setup
	uv run python -m hearth.node.guest.envd_bundle

bench: setup envd-bundle
	uv run python bench/envd.py
	uv run python bench/sandbox.py
	uv run python bench/metrics.py
	uv run python bench/interpreter.py
