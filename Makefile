.PHONY: run test setup

setup:
	./scripts/setup

run:
	./scripts/run

test:
	./scripts/test
