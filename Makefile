# zarrfs: `make demo` and `make test` install everything they need (as root on Debian).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev rsync patch

.PHONY: demo test stress bench bench-s3 bench-deps install system-deps entry-point clean

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

# Long soak and crash runs (not in CI): kill -9 rounds over every writer idiom, then
# the random-operation exerciser with many seeds; each prints a summary table.
STRESS_ROUNDS ?= 500
STRESS_SEEDS ?= 4
STRESS_OPS ?= 5000
stress: install
	$(PY) tests/stress_crash.py --rounds $(STRESS_ROUNDS)
	$(PY) tests/stress_exerciser.py --seeds $(STRESS_SEEDS) --ops $(STRESS_OPS)

# The benchmark suite (docs/performance.md): generates its data once into
# bench/.cache/, then compares zarrfs with the peers below. BENCH_ARGS passes
# options, e.g. `make bench BENCH_ARGS=--quick`.
bench: install bench-deps
	$(PY) bench/suite.py $(BENCH_ARGS)

# The peers' mount tools and image builders (ratarmount gets its own venv from
# the suite). Only what is missing is installed, as for system-deps.
BENCH_APT_PACKAGES := squashfuse squashfs-tools fuse-zip zip tar findutils
bench-deps:
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# zarrfs on S3 against raw obstore, rclone mount and s3fs (docs/performance.md): starts its own
# SeaweedFS on free ports of 127.0.0.1, uploads D1 and a small D2-like set, measures, stops it.
BENCH_S3_APT_PACKAGES := rclone s3fs
bench-s3: install
	@missing=$$(for p in $(BENCH_S3_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(PY) bench/s3.py $(BENCH_S3_ARGS)

install: system-deps $(VENV)/.installed entry-point

# mount -t fuse.zarrfs, fstab lines and the systemd units run `zarrfs` from a
# reset PATH: make this checkout's entry point reachable there.
entry-point: $(VENV)/.installed
	ln -sf $(abspath $(VENV))/bin/zarrfs /usr/local/bin/zarrfs

# Only what is missing is installed, so repeated runs are quick and offline-safe.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# pyfuse3 is built from its source release with zarrfs's patch (see the patch's
# header): no FLUSH at close of files opened to read, no OPEN on read-only mounts.
PYFUSE3 := pyfuse3-3.5.0
PYFUSE3_SOURCE := .cache/$(PYFUSE3)

$(VENV)/.installed: pyproject.toml patches/$(PYFUSE3)-zarrfs.patch
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -rf $(PYFUSE3_SOURCE) && mkdir -p .cache
	$(PY) -m pip download -q --no-binary :all: --no-deps -d .cache $(subst -,==,$(PYFUSE3))
	tar -xzf .cache/$(PYFUSE3).tar.gz -C .cache
	patch -s -d $(PYFUSE3_SOURCE) -p1 < patches/$(PYFUSE3)-zarrfs.patch
	rm -f $(PYFUSE3_SOURCE)/src/pyfuse3/__init__.c  # made again from the patched sources
	$(PY) -m pip install -q $(PYFUSE3_SOURCE)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
