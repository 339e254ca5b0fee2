#!/usr/bin/env bash
# tests/glance/glance.sh - a real OpenStack Glance (Image API v2) on 127.0.0.1 for the tests.
#
#   glance.sh install   venv with glance + gunicorn from PyPI (skipped when already done)
#   glance.sh start     config + sqlite db + file store, glance-api under gunicorn in the
#                       background; waits until GET /v2/images answers; prints the URL
#   glance.sh stop      stops the server started by `start` (by its pid file)
#   glance.sh url       prints the URL of the running server, or exits 1
#
# All subcommands are idempotent and safe to run concurrently (start/stop hold a lock).
# Only the URL goes to stdout; progress and errors go to stderr.
#
# No keystone: the paste pipeline uses Glance's UnauthenticatedContextMiddleware, so every
# request runs as admin whatever it carries (X-Auth-Token, X-Roles, X-Tenant-Id ... are
# accepted and ignored). Images are created with owner = null.
#
# Environment (all optional):
#   GLANCE_VENV     venv location            (default <repo>/.venv-glance)
#   GLANCE_STATE    config, db, images, logs (default <repo>/target/glance-state)
#   GLANCE_PORT     port to listen on        (default: a free port chosen at start)
#   GLANCE_VERSION  glance release           (default 33.0.0)
#   GLANCE_PIN=1    install with tests/glance/constraints.txt (versions proven together);
#                   0 lets pip pick the newest dependencies
#   GLANCE_START_TIMEOUT  seconds to wait for the server to answer (default 60)
#   PYTHON          interpreter for the venv (default python3, needs >= 3.10)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)

GLANCE_VENV=${GLANCE_VENV:-$REPO/.venv-glance}
GLANCE_STATE=${GLANCE_STATE:-$REPO/target/glance-state}
GLANCE_VERSION=${GLANCE_VERSION:-33.0.0}
GUNICORN_VERSION=${GUNICORN_VERSION:-}
GLANCE_PIN=${GLANCE_PIN:-1}
GLANCE_START_TIMEOUT=${GLANCE_START_TIMEOUT:-60}
PYTHON=${PYTHON:-python3}

say() { echo "glance.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------------------------------
# install

STAMP=$GLANCE_VENV/.glance-installed

installed() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "glance==$GLANCE_VERSION" ] &&
    [ -x "$GLANCE_VENV/bin/gunicorn" ] && [ -x "$GLANCE_VENV/bin/glance-manage" ]
}

cmd_install() {
  if installed; then
    say "glance $GLANCE_VERSION already installed in $GLANCE_VENV"
    return 0
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "glance $GLANCE_VERSION needs Python >= 3.10 ($("$PYTHON" -V 2>&1))"
  local t0=$SECONDS
  if [ ! -x "$GLANCE_VENV/bin/pip" ]; then
    say "creating venv $GLANCE_VENV"
    rm -rf "$GLANCE_VENV"
    "$PYTHON" -m venv "$GLANCE_VENV" || die "cannot create a venv (Debian: apt-get install python3-venv)"
  fi
  local args=(--disable-pip-version-check --no-input)
  if [ "$GLANCE_PIN" = 1 ] && [ "$GLANCE_VERSION" = 33.0.0 ] && [ -f "$HERE/constraints.txt" ]; then
    args+=(-c "$HERE/constraints.txt")
  fi
  local gunicorn=gunicorn
  [ -n "$GUNICORN_VERSION" ] && gunicorn="gunicorn==$GUNICORN_VERSION"
  say "pip install glance==$GLANCE_VERSION $gunicorn into $GLANCE_VENV (about a minute)"
  "$GLANCE_VENV/bin/pip" install "${args[@]}" --progress-bar off \
    "glance==$GLANCE_VERSION" "$gunicorn" 2>&1 | grep -E '^(Collecting glance|Successfully|ERROR)' >&2 ||
    true
  "$GLANCE_VENV/bin/python" -W ignore - "$GLANCE_VERSION" <<'PY' || die "install failed (glance/gunicorn do not import)"
import sys, importlib.metadata as md
import glance.wsgi, gunicorn  # noqa: F401  importable (glance.wsgi.api would start the app)
sys.exit(md.version("glance") != sys.argv[1])
PY
  echo "glance==$GLANCE_VERSION" > "$STAMP"
  say "installed glance $GLANCE_VERSION in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------
# configuration (rewritten on every start; all paths under GLANCE_STATE)
#   etc/   glance-api.conf  glance-api-paste.ini  policy.yaml
#   data/  glance.sqlite  images/ (file store)  staging/  tasks/  locks/
#   log/   glance-api.log  gunicorn.log  access.log  console.log  db_sync.log
#   run/   glance-api.pid  url  lock

write_config() {
  local s=$GLANCE_STATE
  mkdir -p "$s/etc" "$s/log" "$s/run" "$s/data/images" "$s/data/staging" "$s/data/tasks" \
    "$s/data/locks"

  cat > "$s/etc/glance-api.conf" <<EOF
# Written by tests/glance/glance.sh start.
[DEFAULT]
debug = false
log_file = $s/log/glance-api.log
# v2 multihash: os_hash_algo/os_hash_value on every upload (sha512 is the default too).
hashing_algorithm = sha512
# Multi-store syntax: a single filesystem backend named "file1".
enabled_backends = file1:file

[database]
connection = sqlite:///$s/data/glance.sqlite

[glance_store]
default_backend = file1

[file1]
filesystem_store_datadir = $s/data/images

# Glance's reserved stores must point somewhere writable (default is /var/lib/glance).
[os_glance_staging_store]
filesystem_store_datadir = $s/data/staging

[os_glance_tasks_store]
filesystem_store_datadir = $s/data/tasks

[paste_deploy]
# No flavor: the "glance-api" pipeline below (no keystone).
config_file = $s/etc/glance-api-paste.ini

[oslo_policy]
policy_file = $s/etc/policy.yaml

[oslo_concurrency]
lock_path = $s/data/locks
EOF

  # Glance's shipped pipeline minus keystone: UnauthenticatedContextMiddleware gives every
  # request an admin context and ignores identity headers.
  cat > "$s/etc/glance-api-paste.ini" <<'EOF'
# Written by tests/glance/glance.sh start.
[pipeline:glance-api]
pipeline = cors http_proxy_to_wsgi versionnegotiation unauthenticated-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
EOF

  # The unauthenticated context is is_admin but has no roles, while Glance's default
  # policies test "role:admin": without this rule POST /v2/images is 403.
  cat > "$s/etc/policy.yaml" <<'EOF'
# Written by tests/glance/glance.sh start: every caller is admin.
"context_is_admin": "@"
EOF
}

# ---------------------------------------------------------------------------------------
# process handling

PIDFILE=$GLANCE_STATE/run/glance-api.pid
URLFILE=$GLANCE_STATE/run/url

alive() {  # pid exists and is not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ]
}

running_pid() {  # the gunicorn master pid from the pid file, if it is alive
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && grep -qa gunicorn "/proc/$pid/cmdline" 2>/dev/null ||
    return 1
  echo "$pid"
}

# HTTP status of GET URL (000 when nothing answers), 2 s timeout, no proxy.
http_status() {
  curl --noproxy '*' -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

answering() { [ "$(http_status "$1/v2/images?limit=1")" = 200 ]; }

free_port() {
  "$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

with_lock() {  # serialise start/stop between concurrent callers (parallel test binaries)
  mkdir -p "$GLANCE_STATE/run"
  exec 9> "$GLANCE_STATE/run/lock"
  flock -w 120 9 || die "timed out waiting for $GLANCE_STATE/run/lock"
}

cmd_start() {
  with_lock
  local pid url
  if pid=$(running_pid) && url=$(cat "$URLFILE" 2>/dev/null) && answering "$url"; then
    if [ -z "${GLANCE_PORT:-}" ] || [ "$url" = "http://127.0.0.1:$GLANCE_PORT" ]; then
      say "already running (pid $pid)"
      echo "$url"
      return 0
    fi
    die "already running on $url, not on port $GLANCE_PORT; stop it first"
  fi
  [ -n "${pid:-}" ] && stop_pid "$pid"   # alive but not answering: replace it
  installed || die "glance not installed in $GLANCE_VENV; run: $0 install"

  write_config
  local s=$GLANCE_STATE
  # Schema: glance-manage takes seconds even with nothing to do, so sync only a new db.
  if [ ! -s "$s/data/glance.sqlite" ] || [ "$(cat "$s/data/db_synced" 2>/dev/null)" != "$GLANCE_VERSION" ]; then
    say "db_sync"
    "$GLANCE_VENV/bin/glance-manage" --config-file "$s/etc/glance-api.conf" db_sync \
      >> "$s/log/db_sync.log" 2>&1 || { tail -n 30 "$s/log/db_sync.log" >&2; die "db_sync failed"; }
    echo "$GLANCE_VERSION" > "$s/data/db_synced"
  fi

  local port=${GLANCE_PORT:-$(free_port)}
  url="http://127.0.0.1:$port"
  [ "$(http_status "$url/")" = 000 ] || die "something already answers on $url"
  rm -f "$PIDFILE"
  echo "$url" > "$URLFILE"

  local gargs=(
    --bind "127.0.0.1:$port"
    --workers 1 --worker-class gthread --threads 8
    --timeout 0                 # never kill the worker in the middle of a long transfer
    --graceful-timeout 5
    --pid "$PIDFILE"
    --error-logfile "$s/log/gunicorn.log"
    --access-logfile "$s/log/access.log"
    --chdir "$s"
  )
  # Newer gunicorn opens a control socket under $HOME unless told not to.
  if "$GLANCE_VENV/bin/gunicorn" --help 2>/dev/null | grep -q -- '--no-control-socket'; then
    gargs+=(--no-control-socket)
  fi

  # New session, stdin/stdout/stderr away from the caller: a test runner that captures our
  # output (Command::output) must not wait for the server to close its pipes.
  local t0=$SECONDS
  OS_GLANCE_CONFIG_DIR=$s/etc setsid "$GLANCE_VENV/bin/gunicorn" "${gargs[@]}" \
    glance.wsgi.api:application < /dev/null >> "$s/log/console.log" 2>&1 9>&- &
  local bg=$!
  until [ -s "$PIDFILE" ] && answering "$url"; do
    if ! alive "$bg"; then
      tail -n 25 "$s/log/gunicorn.log" "$s/log/glance-api.log" "$s/log/console.log" >&2 2>/dev/null || true
      die "glance-api exited during start-up (logs in $s/log)"
    fi
    if [ $((SECONDS - t0)) -ge "$GLANCE_START_TIMEOUT" ]; then
      tail -n 25 "$s/log/gunicorn.log" "$s/log/glance-api.log" "$s/log/console.log" >&2 2>/dev/null || true
      kill "$bg" 2>/dev/null || true
      die "no answer from $url/v2/images after ${GLANCE_START_TIMEOUT} s (logs in $s/log)"
    fi
    sleep 0.2
  done
  say "started pid $(cat "$PIDFILE") in $((SECONDS - t0)) s, logs in $s/log"
  echo "$url"
}

stop_pid() {
  local pid=$1 kids i p
  # gunicorn workers: children of the master (no procps needed)
  kids=$(for p in /proc/[0-9]*; do
    [ "$(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f2)" = "$pid" ] && echo "${p#/proc/}"
  done; true)
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    say "pid $pid ignored TERM for 10 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for p in $kids; do
    if alive "$p" && grep -qa gunicorn "/proc/$p/cmdline" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  say "stopped pid $pid"
}

cmd_stop() {
  [ -d "$GLANCE_STATE/run" ] || { say "not running"; return 0; }
  with_lock
  local pid
  if pid=$(running_pid); then stop_pid "$pid"; else say "not running"; fi
  rm -f "$PIDFILE" "$URLFILE"
}

cmd_url() {
  local url
  running_pid >/dev/null && url=$(cat "$URLFILE" 2>/dev/null) && answering "$url" || {
    say "not running"
    return 1
  }
  echo "$url"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
