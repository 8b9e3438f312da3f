# The two commands of the README: `make run` and `make test`. Each installs what it needs.
.PHONY: setup run test lint format proto envd-bundle bench

setup:
	@bash scripts/setup.sh

run: setup envd-bundle
	uv run hearth envd --isolated

test: setup envd-bundle
	uv run ruff check .
	uv run ruff format --check .
	uv run pytest -q

lint:
	uv run ruff check .
	uv run ruff format --check .

format:
	uv run ruff check --fix .
	uv run ruff format .

proto: setup
	bash scripts/gen_proto.sh

envd-bundle: setup
	uv run python -m hearth.node.guest.envd_bundle

bench: setup envd-bundle
	uv run python bench/envd.py
