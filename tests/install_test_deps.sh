#!/usr/bin/env bash
# `make test-deps`: the programs the test suite starts that no Python registry ships, installed
# when missing. Today: Debian's Prometheus and Pushgateway (tests/integration/test_metrics.py runs
# them on loopback ports). Installs with apt-get as root or through password-less sudo; otherwise
# it fails with one line saying what to install. Installs nothing when they are already there.
set -euo pipefail

# Debian package = the command it installs. SEAL_TEST_DEPS replaces the list (the script's own test).
read -r -a PACKAGES <<< "${SEAL_TEST_DEPS:-prometheus prometheus-pushgateway}"
missing=()
for pkg in "${PACKAGES[@]}"; do
  command -v "$pkg" >/dev/null 2>&1 || [[ -x "/usr/bin/$pkg" ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(unavailable)
fi
if [[ ${sudo[0]:-} == unavailable ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "make test: the tests need ${missing[*]}, which are not installed: run 'sudo apt-get install --no-install-recommends ${missing[*]}' (Debian/Ubuntu) or put them on PATH, then rerun" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt-get) for tests/integration/test_metrics.py"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
