# shellcheck shell=bash
# Shared functions for the local stack (deploy/local/up, deploy/local/down) and
# the compat tests (compat-tests/run): a private Postgres cluster, a Synapse from
# a cached venv, and hungryserv in front of it, all on 127.0.0.1.
#
# Source it, or run one function directly, e.g. from a pytest fixture:
#   bash deploy/local/lib.sh synapse_stop STACK_DIR
#
# Everything lives in one stack directory STACK:
#   stack.env        ports and server name, rewritten by stack_configure
#   secrets.env      passwords and tokens, generated once
#   postgres/        the cluster (owned by the postgres user; server.log inside)
#   synapse/         homeserver.yaml, log config, signing key, media, synapse.log, synapse.pid
#   hungryserv/      hungryserv.toml, hungryserv.log, hungryserv.pid
# Functions take STACK as their first argument and read ports from stack.env.

HUNGRYSERV_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SYNAPSE_VERSION=1.163.2

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

random_secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

# free_ports N: N distinct free loopback ports, one per line. The sockets are
# held open together so the same port cannot be handed out twice.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# require_commands CMD...: install the Debian package of the same name for
# any CMD this machine lacks (a fresh machine may come without curl).
require_commands() {
    local cmd missing=()
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# wait_http URL TIMEOUT_S [PIDFILE]: poll until URL answers 2xx. With PIDFILE,
# give up as soon as that process has died instead of waiting out the timeout.
wait_http() {
    local url=$1 timeout=$2 pidfile=${3:-} deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n $pidfile ]] && ! pid_alive "$pidfile"; then
            log "process of $pidfile exited while waiting for $url"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$url did not answer within ${timeout}s"
            return 1
        fi
        sleep 0.2
    done
}

# pid_alive PIDFILE: the recorded process still runs. Its command line must
# name the program recorded next to the pid, so a stale pidfile whose pid was
# reused (after a reboot) is not mistaken for our server.
pid_alive() {
    local pid program
    [[ -r $1 ]] || return 1
    read -r pid program <"$1" || true
    [[ -n $pid && -n $program ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$program"
}

pidfile_pid() {
    local pid _
    read -r pid _ <"$1" && echo "$pid"
}

# stop_pidfile PIDFILE NAME: SIGTERM, wait up to 30s, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(pidfile_pid "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true # it may have exited just now
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit after 30s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# start_background PIDFILE LOGFILE CMD...: start CMD detached from this shell's
# terminal and session (it must outlive `up`), appending to LOGFILE.
start_background() {
    local pidfile=$1 logfile=$2
    shift 2
    # In a non-interactive shell a background job is not a process-group leader,
    # so setsid execs in place and $! is the server's own pid.
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo "$! $1" >"$pidfile"
}

# stack_configure STACK SERVER_NAME PG_PORT SYNAPSE_PORT HS_PORT: also picks the
# ports the three example appservices listen on (nothing listens there unless a test
# or benchmark starts a bridge on them; the third is in relay mode: Synapse pushes
# to hungryserv, hungryserv to that port).
stack_configure() {
    local stack=$1 as_ports
    require_commands curl
    mkdir -p "$stack"
    mapfile -t as_ports < <(free_ports 3)
    cat >"$stack/stack.env" <<EOF
STACK_SERVER_NAME=$2
STACK_PG_PORT=$3
STACK_SYNAPSE_PORT=$4
STACK_HS_PORT=$5
STACK_AS_PORT=${as_ports[0]}
STACK_AS2_PORT=${as_ports[1]}
STACK_AS3_PORT=${as_ports[2]}
EOF
    if [[ ! -s $stack/secrets.env ]]; then
        (
            umask 077
            cat >"$stack/secrets.env" <<EOF
STACK_PG_SUPERUSER_PASSWORD=$(random_secret)
STACK_SYNAPSE_DB_PASSWORD=$(random_secret)
STACK_HS_DB_PASSWORD=$(random_secret)
STACK_REGISTRATION_SECRET=$(random_secret)
STACK_MACAROON_SECRET=$(random_secret)
STACK_FORM_SECRET=$(random_secret)
STACK_AS_TOKEN=$(random_secret)
STACK_HS_TOKEN=$(random_secret)
EOF
        )
    fi
    # Added after the first stacks were made: complete an older secrets.env.
    if ! grep -q '^STACK_AS2_TOKEN=' "$stack/secrets.env"; then
        printf 'STACK_AS2_TOKEN=%s\nSTACK_HS2_TOKEN=%s\n' "$(random_secret)" "$(random_secret)" \
            >>"$stack/secrets.env"
    fi
    if ! grep -q '^STACK_AS3_TOKEN=' "$stack/secrets.env"; then
        printf 'STACK_AS3_TOKEN=%s\nSTACK_HS3_TOKEN=%s\n' "$(random_secret)" "$(random_secret)" \
            >>"$stack/secrets.env"
    fi
    if ! grep -q '^STACK_UMBRELLA_AS_TOKEN=' "$stack/secrets.env"; then
        printf 'STACK_UMBRELLA_AS_TOKEN=%s\nSTACK_UMBRELLA_HS_TOKEN=%s\n' "$(random_secret)" \
            "$(random_secret)" >>"$stack/secrets.env"
    fi
}

# stack_load STACK: read stack.env and secrets.env into this shell.
stack_load() {
    [[ -r $1/stack.env && -r $1/secrets.env ]] || die "$1 is not a configured stack (no stack.env)"
    # shellcheck source=/dev/null
    source "$1/stack.env"
    # shellcheck source=/dev/null
    source "$1/secrets.env"
}

# ---------------------------------------------------------------- Postgres

# pg_bindir: print the newest installed PostgreSQL server bin dir, installing
# Debian's postgresql package on a machine that has none.
pg_bindir() {
    local found
    found=$(find_pg_bindir)
    if [[ -z $found ]]; then
        log "no PostgreSQL server found, installing Debian's postgresql"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        found=$(find_pg_bindir)
        [[ -n $found ]] || die "postgresql installed but no initdb found"
    fi
    echo "$found"
}

find_pg_bindir() {
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        [[ -x $d/initdb ]] && { echo "$d"; return; }
    done
}

# as_postgres CMD...: run CMD as the postgres user (the server refuses root),
# from / so it never inherits a working directory it cannot enter.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

# make_traversable DIR: the postgres user must reach the data dir, so give
# "others" search (not read) permission on any ancestor that lacks it.
make_traversable() {
    local dir
    dir=$(realpath "$1")
    while [[ $dir != / ]]; do
        if ! as_postgres test -x "$dir"; then
            log "chmod o+x $dir so the postgres user can reach its data dir"
            chmod o+x "$dir"
        fi
        dir=$(dirname "$dir")
    done
}

# pg_init STACK: create the cluster once; an existing one is reused.
pg_init() {
    local stack=$1 data=$1/postgres bindir pwfile
    stack_load "$stack"
    [[ -f $data/PG_VERSION ]] && return 0
    bindir=$(pg_bindir)
    log "initialising Postgres cluster in $data"
    mkdir -p "$data"
    make_traversable "$stack"
    chown postgres:postgres "$data"
    chmod 700 "$data"
    pwfile=$(mktemp)
    echo "$STACK_PG_SUPERUSER_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    # Local socket: peer auth (these scripts run psql as the postgres user).
    # TCP: passwords, so other local users cannot borrow the roles.
    as_postgres "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --no-locale >/dev/null
    rm -f "$pwfile"
}

# pg_start STACK [-c NAME=VALUE ...]: start the cluster on 127.0.0.1:PG_PORT with
# its socket inside the data dir; extra postgres options follow. No-op if running.
pg_start() {
    local stack=$1 data=$1/postgres bindir
    shift
    stack_load "$stack"
    bindir=$(pg_bindir)
    if as_postgres "$bindir/pg_ctl" status -D "$data" >/dev/null; then
        log "Postgres already running ($data)"
        return 0
    fi
    log "starting Postgres on 127.0.0.1:$STACK_PG_PORT"
    as_postgres "$bindir/pg_ctl" start -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$STACK_PG_PORT -c unix_socket_directories=$data $*" \
        >/dev/null || { tail -n 20 "$data/server.log" >&2; die "Postgres did not start"; }
}

pg_stop() {
    local data=$1/postgres bindir
    [[ -f $data/PG_VERSION ]] || return 0
    bindir=$(pg_bindir)
    if as_postgres "$bindir/pg_ctl" status -D "$data" >/dev/null; then
        log "stopping Postgres ($data)"
        as_postgres "$bindir/pg_ctl" stop -D "$data" -m fast -w >/dev/null
    fi
}

# pg_psql STACK [psql args...]: psql as the superuser over the private socket.
pg_psql() {
    local stack=$1
    shift
    stack_load "$stack"
    as_postgres "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$stack/postgres" -p "$STACK_PG_PORT" \
        -U postgres -d postgres "$@"
}

# pg_create_databases STACK: roles `synapse` and `hungryserv` (CREATEDB, for
# tests that make a database each), each owning its database. Idempotent.
pg_create_databases() {
    local stack=$1
    stack_load "$stack"
    pg_psql "$stack" <<EOF
SELECT format('CREATE ROLE %I LOGIN', r) FROM unnest(ARRAY['synapse', 'hungryserv']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE synapse PASSWORD '$STACK_SYNAPSE_DB_PASSWORD';
ALTER ROLE hungryserv CREATEDB PASSWORD '$STACK_HS_DB_PASSWORD';
-- Synapse refuses to start on a database whose collation is not C.
SELECT 'CREATE DATABASE synapse OWNER synapse TEMPLATE template0 LC_COLLATE ''C'' LC_CTYPE ''C'' ENCODING ''UTF8'''
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'synapse') \gexec
SELECT 'CREATE DATABASE hungryserv OWNER hungryserv'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hungryserv') \gexec
EOF
}

# pg_url STACK ROLE: the TCP connection URL for ROLE (postgres, synapse or hungryserv).
pg_url() {
    local stack=$1 role=$2 password db
    stack_load "$stack"
    case $role in
        postgres) password=$STACK_PG_SUPERUSER_PASSWORD db=postgres ;;
        synapse) password=$STACK_SYNAPSE_DB_PASSWORD db=synapse ;;
        hungryserv) password=$STACK_HS_DB_PASSWORD db=hungryserv ;;
        *) die "unknown role $role" ;;
    esac
    echo "postgres://$role:$password@127.0.0.1:$STACK_PG_PORT/$db"
}

# ---------------------------------------------------------------- Python venvs

cache_dir() {
    echo "${HUNGRYSERV_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hungryserv}"
}

# ensure_venv DIR CHECK_MODULES PIP_ARGS...: a venv at DIR whose python can
# import CHECK_MODULES (comma-separated); built with `pip install PIP_ARGS` when
# missing or broken. A venv is not relocatable, so it is built in place; the
# .complete marker tells a finished venv from an interrupted one.
ensure_venv() {
    local dir=$1 modules=$2
    shift 2
    if [[ -f $dir/.complete ]] && "$dir/bin/python" -c "import $modules" 2>/dev/null; then
        return 0
    fi
    log "building Python venv $dir"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@" >&2
    touch "$dir/.complete"
}

# synapse_venv: print the path of the cached venv with the pinned Synapse.
synapse_venv() {
    local dir
    dir=$(cache_dir)/venv-synapse-$SYNAPSE_VERSION
    ensure_venv "$dir" synapse,psycopg2 "matrix-synapse[postgres]==$SYNAPSE_VERSION"
    echo "$dir"
}

# ---------------------------------------------------------------- Synapse

# synapse_configure STACK: (re)write homeserver.yaml, its log config and the
# example appservice registration from stack.env; generate the signing key once.
synapse_configure() {
    local stack=$1 dir=$1/synapse venv
    stack_load "$stack"
    venv=$(synapse_venv)
    mkdir -p "$dir/media_store"
    cat >"$dir/log.yaml" <<'EOF'
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  # stderr is redirected to synapse.log by synapse_start; unbuffered so that
  # tests can read the access log right after a request.
  console:
    class: logging.StreamHandler
    formatter: precise
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
EOF
    # Two example bridges. Nothing listens on their ports unless a test or a
    # benchmark starts a bridge there (compat-tests/test_appservice_delivery.py).
    cat >"$dir/appservice-example.yaml" <<EOF
id: example-bridge
url: "http://127.0.0.1:${STACK_AS_PORT:-9}"
as_token: "$STACK_AS_TOKEN"
hs_token: "$STACK_HS_TOKEN"
sender_localpart: examplebot
rate_limited: false
# MSC2409 under its stable name (the other bridge uses the unstable one).
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@example_.*:${STACK_SERVER_NAME//./\\\\.}"
  aliases: []
  rooms: []
EOF
    cat >"$dir/appservice-other.yaml" <<EOF
id: other-bridge
url: "http://127.0.0.1:${STACK_AS2_PORT:-9}"
as_token: "$STACK_AS2_TOKEN"
hs_token: "$STACK_HS2_TOKEN"
sender_localpart: otherbot
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@other_.*:${STACK_SERVER_NAME//./\\\\.}"
  aliases: []
  rooms: []
EOF
    # Relay mode: Synapse pushes to hungryserv, which relays to the bridge (port AS3,
    # hungryserv.toml [[appservice.relay]]) together with local events.
    cat >"$dir/appservice-relay.yaml" <<EOF
id: relay-bridge
url: "http://127.0.0.1:$STACK_HS_PORT/_hungryserv/appservice/relay-bridge"
as_token: "$STACK_AS3_TOKEN"
hs_token: "$STACK_HS3_TOKEN"
sender_localpart: relaybot
rate_limited: false
receive_ephemeral: true
# MSC3202: device lists and key counts in the transactions (Synapse's, relayed, and
# hungryserv's own for local rooms).
org.matrix.msc3202: true
namespaces:
  users:
    - exclusive: true
      regex: "@relay_.*:${STACK_SERVER_NAME//./\\\\.}"
  aliases:
    - exclusive: true
      regex: "#relay_.*:${STACK_SERVER_NAME//./\\\\.}"
  rooms: []
EOF
    # The umbrella: the one registration Synapse knows for every bridge registered at run
    # time through hungryserv's admin API (hungryserv.toml appservice.umbrella). Its users
    # are every @dyn_…; each bridge gets a part of that (e.g. @dyn_tg_…).
    cat >"$dir/appservice-umbrella.yaml" <<EOF
id: umbrella
url: "http://127.0.0.1:$STACK_HS_PORT/_hungryserv/appservice/umbrella"
as_token: "$STACK_UMBRELLA_AS_TOKEN"
hs_token: "$STACK_UMBRELLA_HS_TOKEN"
sender_localpart: dyn_umbrella
rate_limited: false
receive_ephemeral: true
org.matrix.msc3202: true
namespaces:
  users:
    - exclusive: true
      regex: "@dyn_.*:${STACK_SERVER_NAME//./\\\\.}"
  aliases:
    - exclusive: true
      regex: "#dyn_.*:${STACK_SERVER_NAME//./\\\\.}"
  rooms: []
EOF
    # Rate limits are raised far beyond anything a test does: a throttled test
    # fails for a reason that has nothing to do with hungryserv.
    local fast='{per_second: 10000, burst_count: 100000}'
    cat >"$dir/homeserver.yaml" <<EOF
# Generated by deploy/local/lib.sh (synapse_configure); rewritten on every run.
server_name: "$STACK_SERVER_NAME"
# Clients reach Synapse only through hungryserv, so links point there.
public_baseurl: "http://127.0.0.1:$STACK_HS_PORT/"
report_stats: false
listeners:
  # The one listener hungryserv forwards to: client API (which includes media
  # and /_synapse/admin), no federation. x_forwarded: the client address comes
  # from hungryserv's X-Forwarded-For.
  - port: $STACK_SYNAPSE_PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: true
    resources:
      - names: [client]
        compress: false
database:
  name: psycopg2
  args:
    user: synapse
    password: "$STACK_SYNAPSE_DB_PASSWORD"
    dbname: synapse
    host: 127.0.0.1
    port: $STACK_PG_PORT
    cp_min: 1
    cp_max: 10
log_config: "$dir/log.yaml"
media_store_path: "$dir/media_store"
max_upload_size: 50M
signing_key_path: "$dir/signing.key"
trusted_key_servers: []
suppress_key_server_warning: true
# The compat suite's push gateway listens on 127.0.0.1, which Synapse blocks by default.
ip_range_whitelist: ["127.0.0.1"]
enable_registration: false
# Guests (POST /register?kind=guest), for the compat suite's guest-access scenarios.
allow_guest_access: true
registration_shared_secret: "$STACK_REGISTRATION_SECRET"
macaroon_secret_key: "$STACK_MACAROON_SECRET"
form_secret: "$STACK_FORM_SECRET"
app_service_config_files:
  - "$dir/appservice-example.yaml"
  - "$dir/appservice-other.yaml"
  - "$dir/appservice-relay.yaml"
  - "$dir/appservice-umbrella.yaml"
rc_message: $fast
rc_registration: $fast
rc_registration_token_validity: $fast
rc_login:
  address: $fast
  account: $fast
  failed_attempts: $fast
rc_admin_redaction: $fast
rc_joins:
  local: $fast
  remote: $fast
rc_joins_per_room: $fast
rc_3pid_validation: $fast
rc_invites:
  per_room: $fast
  per_user: $fast
  per_issuer: $fast
rc_third_party_invite: $fast
rc_media_create: $fast
rc_presence:
  per_user: $fast
rc_delayed_event_mgmt: $fast
rc_room_creation: $fast
rc_reports: $fast
rc_user_directory: $fast
rc_profile: $fast
# MSC3202 for the registrations that ask for it (appservice-relay.yaml).
experimental_features:
  msc3202_transaction_extensions: true
# hungryserv's Synapse module (deploy/synapse-module): presence for users who share local
# rooms, read from hungryserv's database. synapse_start puts it on PYTHONPATH. A short cache
# so tests need not wait long after a join.
modules:
  - module: hungryserv_synapse.PresenceRouter
    config:
      database_url: "$(pg_url "$stack" hungryserv)"
      cache_seconds: 2
EOF
    if [[ ! -s $dir/signing.key ]]; then
        PYTHONPATH="$HUNGRYSERV_REPO/deploy/synapse-module" \
            "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >/dev/null
    fi
}

# synapse_start STACK: start Synapse in the background and wait until it
# answers. No-op if it is already running.
synapse_start() {
    local stack=$1 dir=$1/synapse venv
    stack_load "$stack"
    if pid_alive "$dir/synapse.pid"; then
        log "Synapse already running (pid $(pidfile_pid "$dir/synapse.pid"))"
    else
        venv=$(synapse_venv)
        log "starting Synapse on 127.0.0.1:$STACK_SYNAPSE_PORT (log: $dir/synapse.log)"
        # hungryserv's Synapse module (homeserver.yaml `modules`) is imported from here.
        PYTHONPATH="$HUNGRYSERV_REPO/deploy/synapse-module" \
            start_background "$dir/synapse.pid" "$dir/synapse.log" \
            "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml"
    fi
    # The first start creates Synapse's schema, which takes a while on 2 cores.
    wait_http "http://127.0.0.1:$STACK_SYNAPSE_PORT/health" 180 "$dir/synapse.pid" ||
        { tail -n 30 "$dir/synapse.log" >&2; die "Synapse did not come up"; }
}

synapse_stop() { stop_pidfile "$1/synapse/synapse.pid" Synapse; }

# ---------------------------------------------------------------- hungryserv

# hungryserv_configure STACK: (re)write hungryserv.toml from stack.env.
hungryserv_configure() {
    local stack=$1 dir=$1/hungryserv
    stack_load "$stack"
    mkdir -p "$dir"
    cat >"$dir/hungryserv.toml" <<EOF
# Generated by deploy/local/lib.sh (hungryserv_configure); rewritten on every run.
# deploy/hungryserv.toml documents every setting.
server_name = "$STACK_SERVER_NAME"
listen = "127.0.0.1:$STACK_HS_PORT"
routing = "$HUNGRYSERV_REPO/routing.toml"
appservice_registrations = [
    "$stack/synapse/appservice-example.yaml",
    "$stack/synapse/appservice-other.yaml",
    "$stack/synapse/appservice-relay.yaml",
    "$stack/synapse/appservice-umbrella.yaml",
]

[synapse]
url = "http://127.0.0.1:$STACK_SYNAPSE_PORT"

[database]
url = "$(pg_url "$stack" hungryserv)"

[log]
format = "pretty"
filter = "info"

[shutdown]
grace_period_s = 10

[deletion]
# Short, so tests and benchmarks see a deleted room's last rows go.
leaves_kept_s = 3

[appservice]
# Bridges registered at run time (/_hungryserv/admin/v1/appservices) hide behind it.
umbrella = "umbrella"

# Synapse's registration of relay-bridge points at hungryserv; this is the bridge itself.
[[appservice.relay]]
appservice = "relay-bridge"
url = "http://127.0.0.1:${STACK_AS3_PORT:-9}"
EOF
}

# hungryserv_start STACK BINARY: serve on HS_PORT and wait until a forwarded
# request answers. No-op if it is already running.
hungryserv_start() {
    local stack=$1 bin=$2 dir=$1/hungryserv
    stack_load "$stack"
    if pid_alive "$dir/hungryserv.pid"; then
        log "hungryserv already running (pid $(pidfile_pid "$dir/hungryserv.pid"))"
    else
        log "starting hungryserv on 127.0.0.1:$STACK_HS_PORT (log: $dir/hungryserv.log)"
        start_background "$dir/hungryserv.pid" "$dir/hungryserv.log" \
            "$bin" serve --config "$dir/hungryserv.toml"
    fi
    wait_http "http://127.0.0.1:$STACK_HS_PORT/_matrix/client/versions" 60 "$dir/hungryserv.pid" ||
        { tail -n 30 "$dir/hungryserv.log" >&2; die "hungryserv did not come up"; }
}

hungryserv_stop() { stop_pidfile "$1/hungryserv/hungryserv.pid" hungryserv; }

# ---------------------------------------------------------------- several instances
# HUNGRYSERV_INSTANCES=N (N > 1): N hungryserv processes on the one database, each on its
# own port, with `[cluster] enabled`, behind HAProxy on HS_PORT (the public port, where
# clients and Synapse's appservice registrations point). deploy/production/ holds the
# production shape of the same.

# cluster_ports STACK N: the instances' ports, chosen once and kept in stack.env.
cluster_ports() {
    local stack=$1 n=$2 ports
    stack_load "$stack"
    if [[ -z ${STACK_HS_INSTANCE_PORTS:-} ]] || (($(wc -w <<<"$STACK_HS_INSTANCE_PORTS") != n)); then
        mapfile -t ports < <(free_ports "$n")
        echo "STACK_HS_INSTANCE_PORTS=\"${ports[*]}\"" >>"$stack/stack.env"
        stack_load "$stack"
    fi
    echo "$STACK_HS_INSTANCE_PORTS"
}

# cluster_configure STACK N: hungryserv-I.toml per instance (from hungryserv.toml, which
# hungryserv_configure writes) and haproxy.cfg.
cluster_configure() {
    local stack=$1 n=$2 dir=$1/hungryserv i=0 port ports servers=
    require_commands haproxy
    hungryserv_configure "$stack"
    read -r -a ports <<<"$(cluster_ports "$stack" "$n")"
    for port in "${ports[@]}"; do
        i=$((i + 1))
        sed "s|^listen = .*|listen = \"127.0.0.1:$port\"|" "$dir/hungryserv.toml" >"$dir/hungryserv-$i.toml"
        printf '\n[cluster]\nenabled = true\n' >>"$dir/hungryserv-$i.toml"
        servers+="    server hs$i 127.0.0.1:$port"$'\n'
    done
    # The shape of deploy/production/haproxy.cfg, on loopback and without TLS.
    cat >"$dir/haproxy.cfg" <<EOF
# Generated by deploy/local/lib.sh (cluster_configure); rewritten on every run.
global
    maxconn 4096

defaults
    mode http
    option http-server-close
    timeout connect 2s
    timeout client 330s
    timeout server 330s
    timeout tunnel 1h
    default-server check inter 1s fall 2 rise 1

frontend matrix
    bind 127.0.0.1:$STACK_HS_PORT
    acl sliding_sync path_beg /_matrix/client/unstable/org.matrix.simplified_msc3575/
    use_backend hungryserv_by_token if sliding_sync
    default_backend hungryserv

backend hungryserv
    balance roundrobin
    option httpchk GET /_hungryserv/health
${servers}
backend hungryserv_by_token
    balance hdr(Authorization)
    hash-type consistent
    option httpchk GET /_hungryserv/health
${servers}
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy.cfg is invalid"
}

# cluster_start STACK BINARY N: the instances, then HAProxy; waits until each answers.
cluster_start() {
    local stack=$1 bin=$2 n=$3 dir=$1/hungryserv i=0 port ports
    cluster_configure "$stack" "$n"
    stack_load "$stack"
    read -r -a ports <<<"$STACK_HS_INSTANCE_PORTS"
    for port in "${ports[@]}"; do
        i=$((i + 1))
        if ! pid_alive "$dir/hungryserv-$i.pid"; then
            log "starting hungryserv instance $i on 127.0.0.1:$port (log: $dir/hungryserv-$i.log)"
            start_background "$dir/hungryserv-$i.pid" "$dir/hungryserv-$i.log" \
                "$bin" serve --config "$dir/hungryserv-$i.toml"
        fi
        wait_http "http://127.0.0.1:$port/_matrix/client/versions" 60 "$dir/hungryserv-$i.pid" ||
            { tail -n 30 "$dir/hungryserv-$i.log" >&2; die "hungryserv instance $i did not come up"; }
    done
    if ! pid_alive "$dir/haproxy.pid"; then
        log "starting HAProxy on 127.0.0.1:$STACK_HS_PORT in front of $n instances"
        start_background "$dir/haproxy.pid" "$dir/haproxy.log" \
            "$(command -v haproxy)" -db -f "$dir/haproxy.cfg"
    fi
    wait_http "http://127.0.0.1:$STACK_HS_PORT/_matrix/client/versions" 30 "$dir/haproxy.pid" ||
        { tail -n 30 "$dir/haproxy.log" >&2; die "HAProxy did not come up"; }
}

# cluster_stop STACK: HAProxy and every instance (no-op for what is not running).
cluster_stop() {
    local dir=$1/hungryserv pidfile
    stop_pidfile "$dir/haproxy.pid" HAProxy
    for pidfile in "$dir"/hungryserv-*.pid; do
        [[ -e $pidfile ]] && stop_pidfile "$pidfile" "hungryserv $(basename "$pidfile" .pid)"
    done
    return 0
}

# Run as a script: call one function, e.g. `bash lib.sh synapse_start STACK`.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    "$@"
fi
