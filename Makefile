# glance-vhd — build, test, install, demo. Every target installs what it needs
# (idempotently) on a fresh Debian machine with rustup.
SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
TARGET       := x86_64-unknown-linux-musl
BIN          := target/$(TARGET)/release/glance-vhd
VENV         := .venv
PY           := $(VENV)/bin/python
SAMPLES      ?= $(abspath ../shared/vhd-samples)
PREFIX       ?= /usr/local
DESTDIR      ?=
PLUGIN_DIR   ?= /etc/xapi.d/plugins
SUDO         := $(if $(filter 0,$(shell id -u)),,sudo)
# ring and other C code build with musl-gcc for the static target.
export CC_x86_64_unknown_linux_musl := musl-gcc

.PHONY: setup build test unit demo bench faults install uninstall fuzz clean fmt glance glance-stop \
        openstack openstack-stop

setup: $(VENV)/.peers glance openstack
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)
	@command -v musl-gcc >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq musl-tools; }
# isal-sys builds ISA-L (levels 1-3) from source: autogen.sh, configure, nasm for its assembly.
	@command -v nasm >/dev/null && command -v autoreconf >/dev/null && command -v automake >/dev/null && command -v libtoolize >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nasm autoconf automake libtool; }
	@command -v qemu-img >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq qemu-utils; }
	@command -v strace >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq strace; }
	@command -v openssl >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssl; }

# A real Glance 33 for the tests (pip venv in .venv-glance; the tests start it on
# 127.0.0.1 and leave it running: `make glance-stop` stops it).
glance:
	bash tests/glance/glance.sh install

glance-stop:
	bash tests/glance/glance.sh stop

# Keystone 30 added to that venv: the tests start a Keystone + a Glance that authenticates
# through it (plain and TLS, tests/openstack/openstack.sh) and leave them running:
# `make openstack-stop` stops both. `make demo` needs neither.
openstack: glance
	bash tests/openstack/openstack.sh install

openstack-stop:
	bash tests/openstack/openstack.sh stop --all

# The Python peers the tests drive: libvhdi (independent VHD reader).
$(VENV)/.peers: tests/peers/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/peers/requirements.txt
	touch $@

build: setup
	cargo build --release --locked --target $(TARGET)
	@file -L $(BIN) | grep -Eq 'statically linked|static-pie linked' || { echo "$(BIN) is not static:"; file -L $(BIN); exit 1; }
	@! ldd $(BIN) 2>/dev/null | grep -q '=>' || { echo "$(BIN) has dynamic dependencies"; exit 1; }
	@echo "static binary: $(abspath $(BIN)) ($$(stat -c %s $(BIN)) bytes)"

# Unit tests, then integration tests that run the static binary as users do.
test: build
	GLANCE_VHD_BIN=$(abspath $(BIN)) GLANCE_VHD_PYTHON=$(abspath $(PY)) GLANCE_VHD_SAMPLES=$(SAMPLES) \
		cargo test --locked -- --test-threads=2

# The fault suite in full: every cut offset tests/peers/offsets.py finds (≥ 20 per
# direction), cut and reset, plus stall, drip, SIGKILL in each phase, disk full and
# concurrency; prints the tables (README "Guarantees"). `make test` runs a short form.
faults: build
	GLANCE_VHD_FAULTS=full GLANCE_VHD_BIN=$(abspath $(BIN)) GLANCE_VHD_PYTHON=$(abspath $(PY)) GLANCE_VHD_SAMPLES=$(SAMPLES) \
		cargo test --locked --test integration -- faults:: --test-threads=1
	@cat target/tmp/faults-*.md

demo: build
	GLANCE_VHD_BIN=$(abspath $(BIN)) SAMPLES=$(SAMPLES) ./scripts/demo.sh

# Throughput, CPU-s per GB, peak RSS and size per gzip level against the old plugin's data
# path, and a guest's read latency during an upload (bench/probe.py), in one run (not a test).
bench: build
	GLANCE_VHD_BIN=$(abspath $(BIN)) ./bench/run.sh
	GLANCE_VHD_BIN=$(abspath $(BIN)) ./bench/upload.sh

# The xapi plugin shims: the same exec line under each name xapi may call (glance.py
# and kernel.py for callers that name the plugin so), with the binary's installed path.
PLUGINS      := glance glance.py kernel kernel.py

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/glance-vhd
	install -d $(DESTDIR)$(PLUGIN_DIR)
	for p in $(PLUGINS); do \
		sed 's|/usr/local/bin/glance-vhd|$(PREFIX)/bin/glance-vhd|' plugin-wrapper/$${p%.py} >$(DESTDIR)$(PLUGIN_DIR)/$$p; \
		chmod 0755 $(DESTDIR)$(PLUGIN_DIR)/$$p; \
	done

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/glance-vhd
	for p in $(PLUGINS); do rm -f $(DESTDIR)$(PLUGIN_DIR)/$$p; done

# Fuzz every target: VHD open/check and relink, the tarball policy, XML-RPC, the params
# pickle (nightly toolchain, cargo-fuzz). FUZZ_SECONDS per target, one after the other.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh vhd_open
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh vhd_relink
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh tar_unpack
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh xmlrpc_call
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh pickle_params
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh upload_list

fmt:
	cargo fmt

clean:
	cargo clean
	rm -rf $(VENV)
