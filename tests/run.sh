#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# cargo test (the Rust core), ruff, mypy and pytest.  Extra arguments go to pytest (e.g. -k tls, -x).
#
# As root on Debian/Ubuntu it installs the real clients and servers the end-to-end tests
# drive in network namespaces (dnsmasq, nginx, tinyproxy, dig, curl, openssl, tcpdump,
# chromium).  Without root, or without apt-get, those tests are skipped and say why.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(python3-venv tcpdump tshark dnsmasq-base nginx-light tinyproxy bind9-dnsutils curl openssl ethtool iproute2 chromium rsyslog rsyslog-gnutls liblognorm-utils)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${DEBS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # tshark asks whether non-root users may capture; answer no, without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# The Rust core's own tests (core/), where a toolchain exists; pip above built the
# extension from the same crate (or, without cargo, installed the pure-Python path).
if command -v cargo >/dev/null 2>&1; then
  (cd core && cargo test --release --no-default-features -q 2>&1 | grep -E "^test result|FAILED|panicked|error" ; exit "${PIPESTATUS[0]}")
fi

.venv/bin/ruff check detector tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
