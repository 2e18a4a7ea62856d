# Benchmarks (see docs/benchmarks.md). Nothing here asserts a time.
#   make bench        the full suite: 1 GiB layers, 50 tags, 3 repetitions, charts (~15 min, 2 cores)
#   make bench-smoke  tiny sizes, one repetition (about 1 min): proves it runs, same table
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--only tags --repeats 5";
# CIP_SKOPEO_RELEASES=1.22 restricts the skopeo releases, as for the tests.

PYTHON := .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-smoke bench-prepare docs

bench: bench-prepare
	$(PYTHON) -m bench $(BENCH_ARGS)

bench-smoke: bench-prepare
	$(PYTHON) -m bench --smoke $(BENCH_ARGS)

# The same preparation as scripts/test.sh: Debian packages and skopeo releases (as root,
# idempotent), then the venv. Not root: use whatever is installed already.
bench-prepare:
	@if [ "$$(id -u)" = 0 ]; then scripts/setup.sh; \
	else echo "bench: not root, using the skopeo releases already installed" >&2; fi
	@scripts/venv.sh
	@# the bench extra (matplotlib, for the charts), once
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PYTHON) -m pip install -q -e ".[bench]"

# The documentation site into site/ (strict: a broken link or reference fails).
docs:
	@scripts/venv.sh
	scripts/docs.sh
