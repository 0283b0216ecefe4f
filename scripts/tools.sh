# The third-party servers and tools the test suite runs, pinned here and nowhere else, and the
# functions that install each into an ignored folder of the repository (reused when present).
# Sourced by scripts/test and .ci/run; every function expects to run at the repository root.

AZURITE_VERSION=3.35.0 # npm: Microsoft's Azure Storage emulator (the Storage source's tests)
TANSU_VERSION=0.6.0    # crates.io: a Kafka-protocol broker (the Event Hubs source's tests)
TANSU_FEATURES=dynostore # the in-memory storage engine the tests start it with
KUSTO_VERSION=12.4.1   # npm: @kusto/language-service-next, Microsoft's KQL analyzer (content tests)
# The chart tools (Helm's engine, Kubernetes schemas) are pinned in helm/tests/requirements.txt.
CHART_REQUIREMENTS=helm/tests/requirements.txt

TOOLS_DIR=.tools
AZURITE_DIR=$TOOLS_DIR/azurite
TANSU_ROOT=$TOOLS_DIR/tansu
KUSTO_DIR=$TOOLS_DIR/kusto
VENV_DIR=.venv

note() { printf '== %s\n' "$*"; }

# Debian packages: OpenSSL and zlib headers, make and g++ for the bundled librdkafka and
# openssl-sys; Node.js for Azurite; python3-venv for the chart tools.
install_system_packages() {
  local missing=() pkg
  for pkg in libssl-dev pkg-config zlib1g-dev make g++ python3-venv nodejs; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
  note "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

install_chart_tools() {
  local stamp=$VENV_DIR/.requirements
  if [ -x "$VENV_DIR/bin/python" ] && cmp -s "$CHART_REQUIREMENTS" "$stamp" &&
    "$VENV_DIR/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
    note "chart tools: reusing $VENV_DIR"
    return 0
  fi
  note "chart tools: installing $CHART_REQUIREMENTS into $VENV_DIR (PyPI)"
  [ -x "$VENV_DIR/bin/python" ] || python3 -m venv "$VENV_DIR"
  "$VENV_DIR/bin/pip" install -q --disable-pip-version-check -r "$CHART_REQUIREMENTS"
  cp "$CHART_REQUIREMENTS" "$stamp"
}

azurite_installed_version() {
  sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$AZURITE_DIR/node_modules/azurite/package.json" 2>/dev/null | head -n1
}

install_azurite() {
  if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] &&
    [ "$(azurite_installed_version)" = "$AZURITE_VERSION" ]; then
    note "Azurite $AZURITE_VERSION: reusing $AZURITE_DIR"
    return 0
  fi
  note "Azurite $AZURITE_VERSION: installing into $AZURITE_DIR (npm)"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
}

install_kusto() {
  local pkg=$KUSTO_DIR/node_modules/@kusto/language-service-next/package.json
  if [ -f "$pkg" ] && grep -q "\"version\": *\"$KUSTO_VERSION\"" "$pkg"; then
    note "KQL analyzer $KUSTO_VERSION: reusing $KUSTO_DIR"
    return 0
  fi
  note "KQL analyzer $KUSTO_VERSION: installing into $KUSTO_DIR (npm)"
  npm install --prefix "$KUSTO_DIR" --no-audit --no-fund --loglevel=error "@kusto/language-service-next@$KUSTO_VERSION"
}

install_tansu() {
  if [ -x "$TANSU_ROOT/bin/tansu" ] && grep -q "^\"tansu $TANSU_VERSION " "$TANSU_ROOT/.crates.toml" 2>/dev/null; then
    note "tansu $TANSU_VERSION: reusing $TANSU_ROOT"
    return 0
  fi
  note "tansu $TANSU_VERSION: building into $TANSU_ROOT (crates.io; the first time only, about 12 minutes on 2 cores)"
  local started=$SECONDS ticker
  # cargo's own lines say which crate compiles; the ticker says it is alive between them.
  (while sleep 60; do note "still building tansu ($(((SECONDS - started) / 60)) min)"; done) &
  ticker=$!
  local status=0
  cargo install tansu --version "$TANSU_VERSION" --features "$TANSU_FEATURES" --locked \
    --root "$TANSU_ROOT" || status=$?
  kill "$ticker" 2>/dev/null
  wait "$ticker" 2>/dev/null || true
  [ "$status" -eq 0 ] || { echo "building tansu failed (cargo install exit $status)" >&2; return "$status"; }
  note "tansu $TANSU_VERSION built in $(((SECONDS - started) / 60)) min"
}

install_test_servers() {
  install_system_packages
  install_chart_tools
  install_azurite
  install_kusto
  install_tansu
}
