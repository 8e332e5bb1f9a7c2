# kvmio: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
# Both install what they need first (deploy/setup.sh, as root; idempotent).

CARGO ?= cargo
RUN_DIR ?= /tmp/kvmio-demo
VMS ?= 2
CACHE ?= none,unsafe

.PHONY: setup build demo lab test lint rules-test units-verify deb bench clean

setup:
	bash deploy/setup.sh

build: setup
	$(CARGO) build --workspace --release

# The main job: boot the lab VMs and serve their metrics. Ctrl-C stops everything.
demo: build
	bash deploy/demo.sh --run-dir $(RUN_DIR) --vms $(VMS) --cache $(CACHE)

# Only the lab (no exporter).
lab: build
	./target/release/kvmio-crashtest lab --run-dir $(RUN_DIR) --vms $(VMS) --cache $(CACHE)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Prometheus rules, their unit tests and the example configuration (promtool).
rules-test:
	bash deploy/prometheus/check.sh

# systemd units: systemd-analyze verify on copies pointing at the binaries just built.
units-verify:
	bash deploy/systemd/verify.sh

# The Debian package (debian/, built by deploy/deb.sh from the release binaries, man pages
# generated from their flags): target/debian/kvmio_VERSION_ARCH.deb, for `apt install ./kvmio_*.deb`.
deb: build
	bash deploy/deb.sh target/release target/debian

# Everything CI runs: setup, lint, the rules, then every test (unit, golden, end-to-end with real
# QEMU and Prometheus, dashboard conventions) and the units, which need the binaries.
test: setup lint rules-test
	$(CARGO) build --workspace
	bash deploy/systemd/verify.sh
	$(CARGO) test --workspace

# The benchmarks quoted in BENCHMARKS.md (figures printed, never asserted). The full crash-test
# matrices take about half an hour: see BENCHMARKS.md for those commands.
bench: build
	KVMIO_GUEST_BIN=$(CURDIR)/target/release/kvmio-guest $(CARGO) bench -p kvmio-e2e --bench lab
	$(CARGO) bench -p kvmio-exporter --bench scrape
	$(CARGO) bench -p kvmio-exporter --bench hostile
	$(CARGO) bench -p kvmio-e2e --bench libvirt
	$(CARGO) bench -p kvmio-crashtest --bench verify -- --size 1024 --runs 5
	bash crashtest/nbd/scripts/bench.sh 5
	bash crashtest/fusedisk/scripts/bench.sh 5

# The README's pictures (docs/img/), taken by the tests that check what they show: the crash
# report of a real small run in Chromium, and kvmio-top in tmux against the lab.
.PHONY: screenshots
screenshots: setup
	$(CARGO) build --workspace
	KVMIO_SCREENSHOTS=$(CURDIR)/docs/img $(CARGO) test -p kvmio-e2e --test report_html --test top

# The seed article's claims measured (docs/seed-claims.md): boots test VMs across cache modes,
# image layouts and guest schedulers, reads every layer through kvmio-exporter, and regenerates
# docs/seed-claims/ (results.csv/json, the SVG plots, summary.md). About 20-30 minutes under TCG.
.PHONY: seed-claims
seed-claims: build
	./target/release/kvmio-claims run --preset full --out docs/seed-claims \
		--exporter ./target/release/kvmio-exporter --guest-bin ./target/release/kvmio-guest

clean:
	$(CARGO) clean
