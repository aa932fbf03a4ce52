# zarrfs: `make demo` and `make test` install everything they need (as root on Debian).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev rsync

.PHONY: demo test bench install system-deps entry-point clean

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/read_bench.py

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

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
