#!/usr/bin/env bash
# tests/openstack/openstack.sh - a real Keystone (v3, fernet, sqlite) and a real Glance whose
# every request is authenticated by keystonemiddleware, on 127.0.0.1, for the tests.
#
#   openstack.sh install       keystone into the Glance venv (glance.sh install first if needed)
#   openstack.sh start [--tls] [--token-expiration SECONDS]
#                              a fresh stack (plain HTTP, or HTTPS with a private CA); prints
#                              its facts as KEY=VALUE lines; a running stack with the same
#                              options is reused (its facts printed again)
#   openstack.sh env [--tls]   the facts of the running stack, or exit 1
#   openstack.sh stop [--tls|--all]
#
# The plain and the TLS stack are independent (own ports, own state dir) and may run at once.
# All subcommands are idempotent; start/stop of one stack hold its lock, so parallel callers
# share one stack. Only the facts go to stdout; progress and errors go to stderr.
#
# What start makes (from scratch every time it starts servers: both sqlite databases are
# copied from templates synced once, the image store is emptied):
#   Keystone  `keystone-manage bootstrap` (admin, roles admin/member/reader/manager/service,
#             region RegionOne, identity endpoints = KEYSTONE_URL/v3); then over its API:
#             project service + user glance (role service: what keystonemiddleware needs to
#             validate tokens), project demo + user demo (role member), the image service with
#             public/internal/admin endpoints = GLANCE_URL in RegionOne, and a public endpoint
#             GLANCE_URL/v2 (versioned, as some clouds list it) in region RegionTwo, and an
#             application credential of demo (secret new at every start).
#   Glance    [paste_deploy] flavor = keystone: 401 without a valid token.
#   STATE/clouds.yaml  clouds "ks-password" (demo's password) and "ks-appcred"
#             (v3applicationcredential), region_name, interface public, identity_api_version 3,
#             and cacert with --tls. Mode 0600.
#   --tls     STATE/tls/ca.pem (CA:TRUE, keyCertSign; kept between starts) and a server
#             certificate for IP:127.0.0.1 and DNS:localhost (serverAuth); both servers HTTPS.
#
# Facts printed (KEY=VALUE, one a line, values never contain a newline):
#   KEYSTONE_URL AUTH_URL (=KEYSTONE_URL/v3) GLANCE_URL USERNAME USER_ID PASSWORD PROJECT_NAME
#   PROJECT_ID USER_DOMAIN_NAME PROJECT_DOMAIN_NAME DOMAIN_ID REGION REGION_V2 APP_CRED_ID
#   APP_CRED_NAME APP_CRED_SECRET CACERT (empty without --tls) CLOUDS_YAML CLOUD_PASSWORD
#   CLOUD_APPCRED TOKEN_EXPIRATION KEYSTONE_ACCESS_LOG GLANCE_ACCESS_LOG STATE
#
# Environment (all optional):
#   OPENSTACK_VENV    venv (default: GLANCE_VENV, else <repo>/.venv-glance)
#   OPENSTACK_STATE   state root (default <repo>/target/openstack-state; stacks in plain/, tls/)
#   OPENSTACK_PIN=1   install with the constraints (versions proven together); 0: pip chooses
#   OPENSTACK_START_TIMEOUT  seconds to wait for each server (default 90)
#   PYTHON            interpreter for a new venv (default python3, needs >= 3.11)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)

KEYSTONE_VERSION=30.0.0
GLANCE_VERSION=33.0.0
VENV=${OPENSTACK_VENV:-${GLANCE_VENV:-$REPO/.venv-glance}}
STATE_ROOT=${OPENSTACK_STATE:-$REPO/target/openstack-state}
PIN=${OPENSTACK_PIN:-1}
START_TIMEOUT=${OPENSTACK_START_TIMEOUT:-90}
PYTHON=${PYTHON:-python3}
# Fixed test passwords (the stack lives on loopback for the length of a test run).
DEMO_PASSWORD=demo-pw-Kq7fX2
ADMIN_PASSWORD=admin-pw-Jm3vR8
GLANCE_SVC_PASSWORD=glance-svc-pw-Zt5wB1

say() { echo "openstack.sh: $*" >&2; }
die() { say "$*"; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------
# install

STAMP=$VENV/.keystone-installed

installed() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "keystone==$KEYSTONE_VERSION glance==$GLANCE_VERSION" ] &&
    [ -x "$VENV/bin/keystone-manage" ] && [ -x "$VENV/bin/glance-manage" ] && [ -x "$VENV/bin/gunicorn" ]
}

cmd_install() {
  if installed; then
    say "keystone $KEYSTONE_VERSION already installed in $VENV"
    return 0
  fi
  local t0; t0=$(now_ms)
  GLANCE_VENV=$VENV bash "$REPO/tests/glance/glance.sh" install
  "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "keystone $KEYSTONE_VERSION needs Python >= 3.11 ($("$VENV/bin/python" -V 2>&1))"
  local args=(--disable-pip-version-check --no-input --progress-bar off)
  if [ "$PIN" = 1 ]; then
    args+=(-c "$REPO/tests/glance/constraints.txt" -c "$HERE/constraints.txt")
  fi
  say "pip install keystone==$KEYSTONE_VERSION into $VENV"
  "$VENV/bin/pip" install "${args[@]}" "keystone==$KEYSTONE_VERSION" "glance==$GLANCE_VERSION" \
    keystonemiddleware 2>&1 | grep -E '^(Successfully|ERROR)' >&2 || true
  "$VENV/bin/pip" check >&2 || die "pip check fails in $VENV after adding keystone"
  "$VENV/bin/python" -W ignore - "$KEYSTONE_VERSION" <<'PY' || die "install failed (keystone does not import)"
import sys, importlib.metadata as md
import keystone.server, keystonemiddleware.auth_token  # noqa: F401
sys.exit(md.version("keystone") != sys.argv[1])
PY
  echo "keystone==$KEYSTONE_VERSION glance==$GLANCE_VERSION" > "$STAMP"
  say "installed keystone $KEYSTONE_VERSION in $(( $(now_ms) - t0 )) ms"
}

# ---------------------------------------------------------------------------------------
# one stack: S is its state dir, TLS 0/1, CAFILE its CA ("" without TLS)

pick() {  # pick MODE: sets S, TLS, CAFILE
  case "$1" in
    plain) TLS=0 ;;
    tls) TLS=1 ;;
  esac
  S=$STATE_ROOT/$1
  CAFILE=""
  [ "$TLS" = 1 ] && CAFILE=$S/tls/ca.pem
  return 0
}

with_lock() {
  mkdir -p "$S/run"
  exec 9> "$S/run/lock"
  flock -w 180 9 || die "timed out waiting for $S/run/lock"
}

alive() {  # pid exists and is not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ]
}

pid_of() {  # the gunicorn master of NAME, if alive
  local pid
  pid=$(cat "$S/run/$1.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && grep -qa gunicorn "/proc/$pid/cmdline" 2>/dev/null ||
    return 1
  echo "$pid"
}

# HTTP status of GET URL (000 when nothing answers), trusting only our CA; no proxy.
http_status() {
  local ca=()
  [ -n "$CAFILE" ] && ca=(--cacert "$CAFILE")
  curl --noproxy '*' -s -o /dev/null -m 3 "${ca[@]}" -w '%{http_code}' "$1" 2>/dev/null || true
}

free_ports() {  # two distinct free loopback ports
  "$PYTHON" -c 'import socket
a = socket.socket(); a.bind(("127.0.0.1", 0)); b = socket.socket(); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])'
}

make_tls() {
  local t=$S/tls
  command -v openssl >/dev/null || die "--tls needs openssl"
  mkdir -p "$t"; chmod 700 "$t"
  if [ ! -s "$t/ca.pem" ] || [ ! -s "$t/ca.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$t/ca.key" -out "$t/ca.pem" -subj "/CN=glance-vhd test CA $(date +%s)" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" >/dev/null 2>&1 || die "openssl: making the CA failed"
    rm -f "$t/server.pem"
  fi
  # Kept while it verifies and has more than a day left.
  if [ -s "$t/server.pem" ] && openssl verify -CAfile "$t/ca.pem" "$t/server.pem" >/dev/null 2>&1 &&
     openssl x509 -in "$t/server.pem" -noout -checkend 86400 >/dev/null 2>&1; then
    return 0
  fi
  # What strict verifiers (rustls/webpki) want of a leaf: SAN, serverAuth, CA:FALSE, AKI.
  cat > "$t/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl req -new -newkey rsa:2048 -nodes -keyout "$t/server.key" -out "$t/server.csr" \
    -subj "/CN=127.0.0.1" >/dev/null 2>&1 || die "openssl: the server key failed"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 825 -sha256 -extfile "$t/server.ext" \
    -out "$t/server.pem" >/dev/null 2>&1 || die "openssl: signing the server certificate failed"
  chmod 600 "$t"/*.key
}

write_config() {  # KEYSTONE_URL TOKEN_EXPIRATION
  local ks=$1 exp=$2
  mkdir -p "$S/etc/keystone" "$S/etc/glance" "$S/log" "$S/run" "$S/lib" "$S/data/locks"
  cat > "$S/etc/keystone/keystone.conf" <<EOF
# Written by tests/openstack/openstack.sh start.
[DEFAULT]
log_file = $S/log/keystone.log

[database]
connection = sqlite:///$S/data/keystone.sqlite

[token]
provider = fernet
expiration = $exp

[fernet_tokens]
key_repository = $S/etc/keystone/fernet-keys

[fernet_receipts]
key_repository = $S/etc/keystone/fernet-keys

[credential]
key_repository = $S/etc/keystone/credential-keys

[identity]
# bcrypt's minimum: a password or application-credential check costs ~1 ms, not ~0.25 s.
password_hash_rounds = 4

[cache]
enabled = false
EOF

  # keystone.server.configure() parses sys.argv (gunicorn's own command line) and the worker
  # dies with "unrecognized arguments", forever respawned: hide argv while it is imported.
  cat > "$S/lib/keystone_test_wsgi.py" <<'EOF'
"""Keystone's WSGI app under gunicorn (written by tests/openstack/openstack.sh)."""
import sys

_argv = sys.argv
sys.argv = _argv[:1]
try:
    from keystone.wsgi.api import application  # noqa: F401
finally:
    sys.argv = _argv
EOF

  cat > "$S/etc/glance/glance-api.conf" <<EOF
# Written by tests/openstack/openstack.sh start.
[DEFAULT]
log_file = $S/log/glance-api.log
hashing_algorithm = sha512
enabled_backends = file1:file

[database]
connection = sqlite:///$S/data/glance.sqlite

[glance_store]
default_backend = file1

[file1]
filesystem_store_datadir = $S/data/images

[os_glance_staging_store]
filesystem_store_datadir = $S/data/staging

[os_glance_tasks_store]
filesystem_store_datadir = $S/data/tasks

[paste_deploy]
flavor = keystone
config_file = $S/etc/glance/glance-api-paste.ini

[keystone_authtoken]
www_authenticate_uri = $ks/v3
auth_url = $ks/v3
auth_type = password
username = glance
password = $GLANCE_SVC_PASSWORD
user_domain_name = Default
project_name = service
project_domain_name = Default
region_name = RegionOne
interface = public
${CAFILE:+cafile = $CAFILE}
# Expiry is checked on every request, cached or not; the cache only hides revocations.
token_cache_time = 5

[oslo_concurrency]
lock_path = $S/data/locks
EOF

  # Glance 33's shipped keystone pipeline (no policy override: the real default policies).
  cat > "$S/etc/glance/glance-api-paste.ini" <<EOF
# Written by tests/openstack/openstack.sh start.
[composite:glance-api-keystone]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
keystone = cors http_proxy_to_wsgi versionnegotiation authtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = $S/run/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
EOF
}

# db_from_template NAME CMD...: S/data/NAME.sqlite copied from a template synced once.
db_from_template() {
  local name=$1; shift
  # Shared by both stacks: the schema does not depend on ports or TLS.
  local tpl=$STATE_ROOT/templates/$name-$KEYSTONE_VERSION-$GLANCE_VERSION.sqlite db=$S/data/$name.sqlite
  mkdir -p "$STATE_ROOT/templates"
  rm -f "$db"
  if [ ! -s "$tpl" ]; then
    "$@" >> "$S/log/$name-db_sync.log" 2>&1 || { tail -n 30 "$S/log/$name-db_sync.log" >&2; die "$name db_sync failed"; }
    cp "$db" "$tpl.$$.tmp" && mv "$tpl.$$.tmp" "$tpl"
  else
    cp "$tpl" "$db"
  fi
}

# spawn NAME PORT APP ENV...: gunicorn in its own session, away from the caller's pipes (a test
# runner capturing our output must not wait for the server to close them). Prints its pid.
spawn() {
  local name=$1 port=$2 app=$3; shift 3
  local gargs=(
    --bind "127.0.0.1:$port" --workers 1 --worker-class gthread --threads 8
    --timeout 0            # never kill a worker in the middle of a long transfer
    --graceful-timeout 5 --pid "$S/run/$name.pid" --chdir "$S"
    --error-logfile "$S/log/$name-gunicorn.log" --access-logfile "$S/log/$name-access.log"
  )
  [ "$TLS" = 1 ] && gargs+=(--certfile "$S/tls/server.pem" --keyfile "$S/tls/server.key")
  "$VENV/bin/gunicorn" --help 2>/dev/null | grep -q -- '--no-control-socket' && gargs+=(--no-control-socket)
  rm -f "$S/run/$name.pid"
  env "$@" setsid "$VENV/bin/gunicorn" "${gargs[@]}" "$app" \
    < /dev/null >> "$S/log/$name-console.log" 2>&1 9>&- &
  echo $!
}

wait_up() {  # NAME PID URL
  local name=$1 bg=$2 url=$3 t0=$SECONDS code
  while :; do
    if ! alive "$bg"; then
      tail -n 30 "$S/log/$name-gunicorn.log" "$S/log/$name-console.log" >&2 2>/dev/null || true
      die "$name exited during start-up (logs in $S/log)"
    fi
    # A worker that dies at import is respawned forever: fail at once instead.
    if [ "$(grep -c 'exited with code' "$S/log/$name-gunicorn.log" 2>/dev/null)" -ge 2 ]; then
      tail -n 30 "$S/log/$name-console.log" >&2 || true
      die "$name: the gunicorn worker keeps dying (logs in $S/log)"
    fi
    code=$(http_status "$url")
    [ "$code" = 200 ] && [ -s "$S/run/$name.pid" ] && return 0
    [ $((SECONDS - t0)) -lt "$START_TIMEOUT" ] ||
      die "$name: no 200 from $url after ${START_TIMEOUT}s (last: $code; logs in $S/log)"
    sleep 0.2
  done
}

stop_one() {  # NAME
  local pid kids p i
  if ! pid=$(pid_of "$1"); then rm -f "$S/run/$1.pid"; return 0; fi
  kids=$(for p in /proc/[0-9]*; do
    [ "$(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f2)" = "$pid" ] && echo "${p#/proc/}"
  done; true)
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then say "$1 pid $pid ignored TERM for 10 s, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  for p in $kids; do
    if alive "$p" && grep -qa gunicorn "/proc/$p/cmdline" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  rm -f "$S/run/$1.pid"
  say "stopped $1 (pid $pid)"
}

stop_stack() { stop_one glance-api; stop_one keystone; rm -f "$S/run/facts" "$S/run/params"; }

running() {  # both servers alive and answering, facts written
  pid_of keystone >/dev/null && pid_of glance-api >/dev/null && [ -s "$S/run/facts" ] || return 1
  local ks gl
  ks=$(sed -n 's/^KEYSTONE_URL=//p' "$S/run/facts")
  gl=$(sed -n 's/^GLANCE_URL=//p' "$S/run/facts")
  [ "$(http_status "$ks/v3")" = 200 ] && [ "$(http_status "$gl/healthcheck")" = 200 ]
}

# Users, projects, roles, endpoints and the application credential, through Keystone's API
# (stdlib only, trusting exactly CAFILE whatever the environment says); prints KEY=VALUE.
setup_keystone() {  # KEYSTONE_URL GLANCE_URL
  "$VENV/bin/python" - "$1" "$2" "$CAFILE" "$ADMIN_PASSWORD" "$GLANCE_SVC_PASSWORD" \
    "$DEMO_PASSWORD" <<'PY'
import json, secrets, ssl, sys, urllib.request, urllib.error
ks, gl, ca, admin_pw, glance_pw, demo_pw = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca) if ca else None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ctx))

def call(method, path, token=None, body=None):
    req = urllib.request.Request(ks + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with opener.open(req, timeout=30) as r:
            data = r.read()
            return r.headers, (json.loads(data) if data else None)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: HTTP {e.code}: {e.read()[:300]!r}")

def token(user, pw, project):
    h, b = call("POST", "/v3/auth/tokens", body={"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": user, "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    return h["X-Subject-Token"]

adm = token("admin", admin_pw, "admin")
roles = {r["name"]: r["id"] for r in call("GET", "/v3/roles", adm)[1]["roles"]}
def project(name):
    return call("POST", "/v3/projects", adm, {"project": {"name": name, "domain_id": "default"}})[1]["project"]["id"]
def user(name, pw, proj):
    return call("POST", "/v3/users", adm, {"user": {"name": name, "password": pw, "domain_id": "default",
        "default_project_id": proj, "enabled": True}})[1]["user"]["id"]
svc, demo = project("service"), project("demo")
glance_user, demo_user = user("glance", glance_pw, svc), user("demo", demo_pw, demo)
call("PUT", f"/v3/projects/{svc}/users/{glance_user}/roles/{roles['service']}", adm)
call("PUT", f"/v3/projects/{demo}/users/{demo_user}/roles/{roles['member']}", adm)
call("POST", "/v3/regions", adm, {"region": {"id": "RegionTwo"}})
image = call("POST", "/v3/services", adm, {"service": {"type": "image", "name": "glance"}})[1]["service"]["id"]
for iface in ("public", "internal", "admin"):
    call("POST", "/v3/endpoints", adm, {"endpoint": {"service_id": image, "interface": iface,
                                                     "url": gl, "region_id": "RegionOne"}})
# A versioned image endpoint, as some clouds list it: a client must not make it .../v2/v2.
call("POST", "/v3/endpoints", adm, {"endpoint": {"service_id": image, "interface": "public",
                                                 "url": gl + "/v2", "region_id": "RegionTwo"}})
# Keystone lets only the user make its own application credentials.
dtok = token("demo", demo_pw, "demo")
secret = secrets.token_urlsafe(24)
ac = call("POST", f"/v3/users/{demo_user}/application_credentials", dtok,
          {"application_credential": {"name": "glance-vhd-tests", "secret": secret}})[1]["application_credential"]
# Proof that it signs in and its catalog holds the image endpoint.
h, b = call("POST", "/v3/auth/tokens", body={"auth": {"identity": {"methods": ["application_credential"],
    "application_credential": {"id": ac["id"], "secret": secret}}}})
assert any(e["url"] == gl for s in b["token"]["catalog"] if s["type"] == "image" for e in s["endpoints"])
# Glance refuses no token and a junk one, accepts demo's (validated by keystonemiddleware).
def glance(tok):
    req = urllib.request.Request(gl + "/v2/images")
    if tok:
        req.add_header("X-Auth-Token", tok)
    try:
        with opener.open(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
codes = (glance(None), glance("junk"), glance(dtok))
assert codes == (401, 401, 200), f"Glance without/junk/demo token: {codes}"
print(f"USER_ID={demo_user}\nPROJECT_ID={demo}\nAPP_CRED_ID={ac['id']}\n"
      f"APP_CRED_NAME={ac['name']}\nAPP_CRED_SECRET={secret}")
PY
}

write_clouds() {  # AUTH_URL APP_CRED_ID APP_CRED_SECRET
  local c=""
  [ -n "$CAFILE" ] && c="    cacert: \"$CAFILE\""
  ( umask 077; cat > "$S/clouds.yaml" <<EOF
# Written by tests/openstack/openstack.sh start; valid while that stack runs.
clouds:
  ks-password:
    auth:
      auth_url: "$1"
      username: "demo"
      password: "$DEMO_PASSWORD"
      project_name: "demo"
      user_domain_name: "Default"
      project_domain_name: "Default"
    auth_type: "password"
    region_name: "RegionOne"
    interface: "public"
    identity_api_version: 3
$c
  ks-appcred:
    auth:
      auth_url: "$1"
      application_credential_id: "$2"
      application_credential_secret: "$3"
    auth_type: "v3applicationcredential"
    region_name: "RegionOne"
    interface: "public"
    identity_api_version: 3
$c
EOF
  )
}

cmd_start() {
  local mode=plain exp=3600
  while [ $# -gt 0 ]; do
    case "$1" in
      --tls) mode=tls ;;
      --token-expiration) [ $# -ge 2 ] || die "--token-expiration needs SECONDS"; exp=$2; shift ;;
      *) die "start: unknown argument $1" ;;
    esac
    shift
  done
  [[ "$exp" =~ ^[0-9]+$ ]] && [ "$exp" -ge 1 ] || die "bad --token-expiration: $exp"
  pick "$mode"
  with_lock
  local params="keystone==$KEYSTONE_VERSION glance==$GLANCE_VERSION tls=$TLS expiration=$exp"
  if running; then
    if [ "$(cat "$S/run/params" 2>/dev/null)" = "$params" ]; then
      say "$mode stack already running"
      cat "$S/run/facts"
      return 0
    fi
    say "$mode stack running with other options ($(cat "$S/run/params" 2>/dev/null)): restarting it"
  fi
  stop_stack   # whatever is left of an earlier stack (half running, not answering)
  installed || die "keystone not installed in $VENV; run: $0 install (or make setup)"

  local t0 ports kport gport scheme=http
  t0=$(now_ms)
  read -r kport gport < <(free_ports)
  [ "$TLS" = 1 ] && { make_tls; scheme=https; }
  local ks=$scheme://127.0.0.1:$kport gl=$scheme://127.0.0.1:$gport
  # A start that fails half-way stops what it started.
  trap 'rc=$?; if [ $rc != 0 ]; then say "start failed: stopping what it started"; stop_stack; fi' EXIT
  write_config "$ks" "$exp"
  rm -rf "$S/data/images" "$S/data/staging" "$S/data/tasks" "$S/clouds.yaml"
  mkdir -p "$S/data/images" "$S/data/staging" "$S/data/tasks"
  : > "$S/log/keystone-access.log"; : > "$S/log/glance-api-access.log"
  : > "$S/log/keystone-gunicorn.log"; : > "$S/log/glance-api-gunicorn.log"
  local km=("$VENV/bin/keystone-manage" --config-file "$S/etc/keystone/keystone.conf")
  db_from_template glance "$VENV/bin/glance-manage" --config-file "$S/etc/glance/glance-api.conf" db_sync
  # Glance needs Keystone only at its first request: boot it while Keystone is prepared.
  local gbg kbg
  gbg=$(spawn glance-api "$gport" glance.wsgi.api:application OS_GLANCE_CONFIG_DIR="$S/etc/glance")
  db_from_template keystone "${km[@]}" db_sync
  local ug=(--keystone-user "$(id -un)" --keystone-group "$(id -gn)")
  [ -s "$S/etc/keystone/fernet-keys/0" ] || "${km[@]}" fernet_setup "${ug[@]}" >> "$S/log/keystone-manage.log" 2>&1 ||
    die "keystone-manage fernet_setup failed (log: $S/log/keystone-manage.log)"
  [ -s "$S/etc/keystone/credential-keys/0" ] || "${km[@]}" credential_setup "${ug[@]}" >> "$S/log/keystone-manage.log" 2>&1 ||
    die "keystone-manage credential_setup failed (log: $S/log/keystone-manage.log)"
  "${km[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" --bootstrap-username admin \
    --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-service-name keystone \
    --bootstrap-region-id RegionOne --bootstrap-admin-url "$ks/v3" --bootstrap-internal-url "$ks/v3" \
    --bootstrap-public-url "$ks/v3" >> "$S/log/keystone-manage.log" 2>&1 ||
    { tail -n 20 "$S/log/keystone-manage.log" >&2; die "keystone-manage bootstrap failed"; }
  kbg=$(spawn keystone "$kport" keystone_test_wsgi:application \
    OS_KEYSTONE_CONFIG_FILES="$S/etc/keystone/keystone.conf" PYTHONPATH="$S/lib")
  wait_up keystone "$kbg" "$ks/v3"
  wait_up glance-api "$gbg" "$gl/healthcheck"
  local ids
  ids=$(setup_keystone "$ks" "$gl") || die "setting up Keystone failed (logs in $S/log)"
  local acid acsecret
  acid=$(sed -n 's/^APP_CRED_ID=//p' <<< "$ids")
  acsecret=$(sed -n 's/^APP_CRED_SECRET=//p' <<< "$ids")
  write_clouds "$ks/v3" "$acid" "$acsecret"
  ( umask 077; cat > "$S/run/facts.tmp" <<EOF
KEYSTONE_URL=$ks
AUTH_URL=$ks/v3
GLANCE_URL=$gl
USERNAME=demo
PASSWORD=$DEMO_PASSWORD
PROJECT_NAME=demo
USER_DOMAIN_NAME=Default
PROJECT_DOMAIN_NAME=Default
DOMAIN_ID=default
REGION=RegionOne
REGION_V2=RegionTwo
$ids
CACERT=$CAFILE
CLOUDS_YAML=$S/clouds.yaml
CLOUD_PASSWORD=ks-password
CLOUD_APPCRED=ks-appcred
TOKEN_EXPIRATION=$exp
KEYSTONE_ACCESS_LOG=$S/log/keystone-access.log
GLANCE_ACCESS_LOG=$S/log/glance-api-access.log
STATE=$S
EOF
  )
  mv "$S/run/facts.tmp" "$S/run/facts"
  echo "$params" > "$S/run/params"
  trap - EXIT
  say "$mode stack up in $(( $(now_ms) - t0 )) ms: keystone $ks (pid $(cat "$S/run/keystone.pid"))," \
      "glance $gl (pid $(cat "$S/run/glance-api.pid")), tokens ${exp}s"
  cat "$S/run/facts"
}

cmd_env() {
  local mode=plain
  [ "${1:-}" = --tls ] && mode=tls
  pick "$mode"
  running || die "the $mode stack is not running"
  cat "$S/run/facts"
}

cmd_stop() {
  local modes=(plain)
  case "${1:-}" in
    --tls) modes=(tls) ;;
    --all) modes=(plain tls) ;;
    "") ;;
    *) die "stop: unknown argument $1" ;;
  esac
  local m
  for m in "${modes[@]}"; do
    pick "$m"
    [ -d "$S/run" ] || continue
    ( with_lock; stop_stack )
  done
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  env) shift; cmd_env "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
