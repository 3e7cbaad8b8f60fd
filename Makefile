# klptrace: `make run` and `make test` set up everything they need on a fresh
# Debian 12 or 13 machine (as root), idempotently: a second run installs and
# rebuilds nothing.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
KLPTRACE := $(VENV)/bin/klptrace
# The kernels that `make test` boots, one guest each (tests/test_kernel_vm.py),
# and that `make bench` measures: Debian 12's stock kernel and the newest one
# Debian carries. `make test-all` adds the others, and the newest kernel's
# PREEMPT_RT flavour (latest-rt). The cloud flavour has no 9p and boots only
# where the Rust virtiofsd is (Debian 13's virtiofsd package): add latest-cloud
# there.
TEST_KERNELS := 6.1 latest
ALL_KERNELS := 6.1 6.12 trixie latest sid latest-rt

# Debian packages (Debian 12 and 13): QEMU and virtme-ng's needs (busybox-static
# builds the guest's initramfs; udev makes the guest's virtio-port links that
# carry the command's I/O and status; vng runs `file` to read the kernel
# image's version, which a minimal Debian 13 lacks), bcc from Debian (never the
# unrelated PyPI package of that name), and what kbuild needs to build modules
# against unpacked headers (the headers call gcc-12; pahole for BTF; kmod's
# depmod indexes the modules). Kernels whose compiler the host lacks (trixie's
# gcc-14, sid's) build in a root of their own suite, made with mmdebstrap.
DEB_PACKAGES := qemu-system-x86 busybox-static udev kmod file \
	python3-bpfcc bpfcc-tools python3-venv \
	make gcc gcc-12 libc6-dev pahole mmdebstrap

# What only `make test` needs: tests/report/test_html.py opens the HTML report in
# headless Chromium, driven by selenium through Debian's chromium-driver.
TEST_DEB_PACKAGES := chromium chromium-driver

.PHONY: setup deb-packages test-deb-packages venv kernel modules test-kernels run test test-all \
	bench screenshot lint check coverage

setup: deb-packages venv kernel modules

# $(call apt_install,WHAT,PACKAGES): install the PACKAGES not installed yet.
define apt_install
	@missing=$$(for p in $(2); do \
		dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || echo "$$p"; \
	done); \
	if [ -z "$$missing" ]; then \
		echo "setup: $(1): all present, nothing to install"; \
	else \
		echo "setup: installing $(1):" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "setup: need root to install them" >&2; exit 1; fi; \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deb-packages:
	$(call apt_install,Debian packages,$(DEB_PACKAGES))

test-deb-packages:
	$(call apt_install,Debian packages for the tests,$(TEST_DEB_PACKAGES))

venv: $(VENV)/.installed
	@echo "setup: $(VENV): up to date with pyproject.toml"

$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# Reinstall only when pyproject.toml changed.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[lab,test]'
	touch $@

kernel: deb-packages venv
	@$(KLPTRACE) kernel >/dev/null

modules: kernel
	@$(KLPTRACE) build >/dev/null

# Every kernel of TEST_KERNELS fetched, and the test modules built for it.
test-kernels: setup
	@for k in $(TEST_KERNELS); do \
		$(KLPTRACE) kernel --kernel "$$k" >/dev/null && $(KLPTRACE) build --kernel "$$k" >/dev/null; \
	done

# klptrace's main job: every scenario (klptrace/scenarios), in the lab VM (this host's kernel
# cannot load modules), recorded with BPF and checked; a table of results.
# KERNELS="6.1 latest" runs them on each, one guest per kernel: one table with a
# column per kernel (empty: the default kernel of this host's Debian).
KERNELS :=
run: setup
	$(KLPTRACE) run --vm $(foreach k,$(KERNELS),--kernel $(k))

test: test-kernels test-deb-packages
	KLPTRACE_TEST_KERNELS="$(TEST_KERNELS)" $(VENV)/bin/pytest -v

# Every kernel line klptrace knows by a short name, and the rt flavour, one guest each
# (about an hour).
test-all:
	$(MAKE) test TEST_KERNELS="$(ALL_KERNELS)"

# A benchmark, not a test: klptrace against a selftest-style shell harness, one
# VM boot per kernel; prints the figures and writes them to bench/results.md.
bench: test-kernels
	$(VENV)/bin/python bench/run.py $(foreach k,$(TEST_KERNELS),--kernel $(k))

# The README's pictures: the HTML report of busy-target-module and of two state and
# shadow scenarios from the saved runs, drawn by headless Chromium.
screenshot: venv test-deb-packages
	$(VENV)/bin/python tests/browser.py tests/data/run-busy-6.1.json busy-target-module \
		docs/busy-target-module.png
	$(VENV)/bin/python tests/browser.py tests/data/run-shadow-6.1.json \
		state-taken-over-by-replace docs/state-taken-over-by-replace.png
	$(VENV)/bin/python tests/browser.py tests/data/run-shadow-6.1.json \
		shadow-leak-reported docs/shadow-leak-reported.png

# Lint (ruff), types (mypy --strict on the whole package, and on the kernel tests, which
# run only inside a guest: this is what checks them offline) and every test that boots
# no guest: what fails in minutes, run before anything is fetched or booted (.ci/run
# runs it first). ruff and mypy come with the test extra.
check: deb-packages venv test-deb-packages
	$(VENV)/bin/python -m ruff check klptrace tests
	$(VENV)/bin/python -m mypy --strict klptrace
	MYPYPATH=tests $(VENV)/bin/python -m mypy tests/linux_kernel
	$(VENV)/bin/python -m mypy bench
	$(VENV)/bin/pytest -q -m "not vm"

lint: venv
	$(VENV)/bin/python -m ruff check klptrace tests
	$(VENV)/bin/python -m mypy --strict klptrace
	MYPYPATH=tests $(VENV)/bin/python -m mypy tests/linux_kernel
	$(VENV)/bin/python -m mypy bench

# The offline tests' coverage of each module (what `make check` runs, measured);
# the data stays out of the tree (.coverage is ignored).
coverage: deb-packages venv test-deb-packages
	$(VENV)/bin/python -m coverage run --source=klptrace -m pytest -q -m "not vm"
	$(VENV)/bin/python -m coverage report --skip-covered --sort=cover
