#!/usr/bin/env bash
# Makes sure the prometheus and promtool binaries are installed (Debian's package): the observability
# tests start a Prometheus of their own on a free port, so nothing is started here.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then exit 0; fi
echo "prometheus missing: installing Debian's package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
command -v prometheus >/dev/null
