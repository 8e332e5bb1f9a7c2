#!/usr/bin/env bash
# Checks kvmio's Prometheus files with promtool (Prometheus 2.42 as Debian 12 ships it):
#   - the rule files parse (promtool check rules),
#   - the rule unit tests pass (promtool test rules tests/*.test.yml): a firing and a non-firing
#     case for every alert, hand-computed values for every recording rule,
#   - the example configuration and the scrape snippet are valid (promtool check config).
# `make rules-test` runs it; so does `make test`.
set -euo pipefail
cd "$(dirname "$0")"
command -v promtool >/dev/null || {
    echo "rules-test: promtool not found: run deploy/setup.sh (it installs Debian's prometheus package, which ships promtool)" >&2
    exit 1
}
promtool check rules rules/*.rules.yml
promtool test rules tests/*.test.yml
promtool check config prometheus.yml
# The snippet is a list of scrape jobs: check it inside a minimal configuration.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{ echo 'scrape_configs:'; sed 's/^/  /' kvmio-scrape.yml; } > "$tmp/snippet.yml"
promtool check config "$tmp/snippet.yml"
