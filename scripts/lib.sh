# shellcheck shell=bash
# Shared helpers for Tollgate's developer/ops scripts (scripts/dev, scripts/test).
#
# Source it; do not execute it:   . "$(dirname "$0")/lib.sh"
# Safe under `set -euo pipefail`. Every tg_ensure_* function is idempotent:
# it first checks whether the service already answers and only starts what
# is missing. Whatever it starts is recorded with a pid file in
# .tollgate/run/, which is what `scripts/dev down` uses to stop only what
# these scripts started (never a system service).
#
# State lives in $ROOT/.tollgate (gitignored):
#   run/   pid files          log/   logs           pg/   private PostgreSQL
#   env    `export` lines written by tg_write_env (source it from a shell)

if [[ -n "${TG_LIB_LOADED:-}" ]]; then
  return 0
fi
TG_LIB_LOADED=1

TG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TG_STATE="$TG_ROOT/.tollgate"
TG_RUN_DIR="$TG_STATE/run"
TG_LOG_DIR="$TG_STATE/log"
TG_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_ROOT/target}"
case "$TG_TARGET_DIR" in /*) ;; *) TG_TARGET_DIR="$TG_ROOT/$TG_TARGET_DIR" ;; esac

# localstripe release pinned for tests (newest on PyPI when this was written).
TG_LOCALSTRIPE_VERSION="${TOLLGATE_LOCALSTRIPE_VERSION:-1.15.10}"

# Services started by *this* process, in start order (see tg_stop_started).
TG_STARTED=()

# ---- defaults (all overridable from the environment) -----------------------
: "${TOLLGATE_PG_URL:=postgres://postgres@127.0.0.1:5432}"
: "${TOLLGATE_PG_PORT:=55432}"
: "${TOLLGATE_CF_DB:=tollgate_cf}"
: "${TOLLGATE_BILLING_DB:=tollgate_billing}"
: "${TOLLGATE_REDIS_URL:=redis://127.0.0.1:6379}"
: "${TOLLGATE_LOCALSTRIPE_PORT:=8420}"
: "${TOLLGATE_CP_PORT:=7700}"
: "${TOLLGATE_EDGE_PORT:=7701}"
: "${TOLLGATE_CP_URL:=http://127.0.0.1:$TOLLGATE_CP_PORT}"
: "${TOLLGATE_EDGE_URL:=http://127.0.0.1:$TOLLGATE_EDGE_PORT}"
export TOLLGATE_PG_URL TOLLGATE_PG_PORT TOLLGATE_CF_DB TOLLGATE_BILLING_DB \
  TOLLGATE_REDIS_URL TOLLGATE_LOCALSTRIPE_PORT TOLLGATE_CP_PORT \
  TOLLGATE_EDGE_PORT TOLLGATE_CP_URL TOLLGATE_EDGE_URL

# ---- basics -----------------------------------------------------------------
tg_root() { printf '%s\n' "$TG_ROOT"; }

tg_log() { printf 'tollgate: %s\n' "$*" >&2; }

tg_die() {
  printf 'tollgate: error: %s\n' "$*" >&2
  exit 1
}

tg_state_dirs() {
  mkdir -p "$TG_RUN_DIR" "$TG_LOG_DIR"
}

# Print the last lines of a log file to stderr (for failure messages).
tg_log_tail() {
  local f=$1 n=${2:-30}
  if [[ -r "$f" ]]; then
    printf -- '---- last %s lines of %s ----\n' "$n" "${f#"$TG_ROOT"/}" >&2
    tail -n "$n" "$f" >&2 || true
    printf -- '----\n' >&2
  fi
}

# tg_wait_http URL TIMEOUT_SECS [extra curl args...]
# Polls URL every 0.2 s until it answers with a 2xx, or TIMEOUT_SECS pass.
tg_wait_http() {
  local url=$1 timeout=${2:-30}
  shift $(($# < 2 ? $# : 2))
  local end=$((SECONDS + timeout))
  while :; do
    if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then
      return 0
    fi
    if ((SECONDS >= end)); then
      return 1
    fi
    sleep 0.2
  done
}

# Run a command as root (directly, or through non-interactive sudo).
tg__as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    tg_die "need root to run: $*"
  fi
}

TG__APT_UPDATED=""
tg__apt_install() {
  command -v apt-get >/dev/null 2>&1 || tg_die "cannot install $*: apt-get not found; install it yourself"
  tg_state_dirs
  local log="$TG_LOG_DIR/apt.log"
  tg_log "installing $* with apt-get (log: .tollgate/log/apt.log)"
  if [[ -z "$TG__APT_UPDATED" ]]; then
    tg__as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 ||
      { tg_log_tail "$log"; tg_die "apt-get update failed"; }
    TG__APT_UPDATED=1
  fi
  tg__as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$log" 2>&1 ||
    { tg_log_tail "$log"; tg_die "apt-get install $* failed"; }
}

# ---- pid files ----------------------------------------------------------------
tg_pidfile() { printf '%s/%s.pid\n' "$TG_RUN_DIR" "$1"; }

# tg_pid_of NAME -> prints the pid recorded for NAME (empty if none).
tg_pid_of() {
  local f
  f="$(tg_pidfile "$1")"
  [[ -r "$f" ]] || return 0
  local pid
  pid="$(head -n 1 "$f" 2>/dev/null | tr -dc '0-9')" || true
  printf '%s\n' "$pid"
}

# tg_pid_alive NAME [CMDLINE_PATTERN]
# True when NAME's pid file names a live process that is the one we started:
# its command line contains CMDLINE_PATTERN and it is not younger than the pid
# file (which rules out a recycled pid).
tg_pid_alive() {
  local name=$1 pattern=${2:-} pid f
  pid="$(tg_pid_of "$name")"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -n "$pattern" && -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
  fi
  f="$(tg_pidfile "$name")"
  if command -v ps >/dev/null 2>&1; then
    local etimes age
    etimes="$(ps -o etimes= -p "$pid" 2>/dev/null | tr -dc '0-9')" || true
    age=$(($(date +%s) - $(stat -c %Y "$f" 2>/dev/null || date +%s)))
    if [[ -n "$etimes" ]] && ((etimes + 5 < age)); then
      return 1
    fi
  fi
  return 0
}

# tg_stop_pid NAME [CMDLINE_PATTERN] [TIMEOUT_SECS]
# SIGTERM, wait (bounded, polling every 0.2 s), then SIGKILL. Removes the pid file.
tg_stop_pid() {
  local name=$1 pattern=${2:-} timeout=${3:-20} pid
  if ! tg_pid_alive "$name" "$pattern"; then
    rm -f "$(tg_pidfile "$name")"
    return 0
  fi
  pid="$(tg_pid_of "$name")"
  tg_log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local end=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= end)); then
      tg_log "$name did not exit within ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$(tg_pidfile "$name")"
}

# tg_spawn NAME LOGFILE CMD [ARGS...]
# Starts CMD detached (own session, stdin from /dev/null, output appended to
# LOGFILE); the process writes its own pid to .tollgate/run/NAME.pid before
# exec'ing CMD, so the pid file always names CMD itself.
tg_spawn() {
  local name=$1 log=$2
  shift 2
  tg_state_dirs
  local pidfile
  pidfile="$(tg_pidfile "$name")"
  rm -f "$pidfile"
  printf '==== %s: starting %s ====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" >>"$log"
  # shellcheck disable=SC2016 # $$ and $0 are expanded by the inner bash
  local launcher='echo "$$" >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"'
  if command -v setsid >/dev/null 2>&1; then
    setsid -f bash -c "$launcher" "$pidfile" "$@" </dev/null >>"$log" 2>&1
  else
    nohup bash -c "$launcher" "$pidfile" "$@" </dev/null >>"$log" 2>&1 &
  fi
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.1
  done
  tg_log_tail "$log"
  tg_die "$name did not start (no pid file after 5s)"
}

tg__mark_started() { TG_STARTED+=("$1"); }

# ---- PostgreSQL ---------------------------------------------------------------
TG_PG_DIR="$TG_STATE/pg"
TG_PG_READY=""

# Newest PostgreSQL server bin dir (with initdb + pg_ctl), or nothing.
tg__pg_bindir() {
  local d best=""
  while IFS= read -r d; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && best=$d
  done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -V)
  if [[ -z "$best" ]] && command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    best="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  fi
  [[ -n "$best" ]] && printf '%s\n' "$best"
  return 0
}

# Make psql/pg_isready reachable even when only the versioned bin dir has them.
tg__pg_client_path() {
  if ! command -v psql >/dev/null 2>&1; then
    local b
    b="$(tg__pg_bindir)"
    [[ -n "$b" && -x "$b/psql" ]] && PATH="$b:$PATH" && export PATH
  fi
  return 0
}

# tg__pg_answers SERVER_URL: server accepts connections and `select 1` works.
tg__pg_answers() {
  local url=${1%/}
  command -v psql >/dev/null 2>&1 || return 1
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -t 3 -d "$url/postgres" >/dev/null 2>&1 || return 1
  fi
  PGCONNECT_TIMEOUT=5 psql "$url/postgres" -XAtqc 'select 1' >/dev/null 2>&1
}

# Run a PostgreSQL server program as the cluster owner. initdb refuses to run
# as root, so as root we use the `postgres` OS user.
tg__pg_run() {
  if [[ $EUID -eq 0 ]]; then
    if command -v runuser >/dev/null 2>&1; then
      (cd / && runuser -u postgres -- "$@")
    else
      (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")")
    fi
  else
    "$@"
  fi
}

tg__pg_user_can() { # tg__pg_user_can TEST_ARGS...  (run `test` as the owner)
  tg__pg_run test "$@" 2>/dev/null
}

# Create .tollgate/pg writable by the cluster owner. If that user cannot reach
# the repo (e.g. it lives under /root), keep the cluster in /tmp and leave a
# symlink at .tollgate/pg.
tg__pg_prepare_dir() {
  tg_state_dirs
  if [[ $EUID -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    tg_log "creating the 'postgres' OS user (initdb cannot run as root)"
    useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
      --shell /usr/sbin/nologin postgres ||
      tg_die "could not create the postgres user"
  fi
  if [[ ! -e "$TG_PG_DIR" ]]; then
    mkdir -p "$TG_PG_DIR"
    [[ $EUID -eq 0 ]] && chown postgres: "$TG_PG_DIR"
    chmod 700 "$TG_PG_DIR"
    if [[ $EUID -eq 0 ]] && ! tg__pg_user_can -w "$TG_PG_DIR"; then
      local alt
      alt="${TMPDIR:-/tmp}/tollgate-pg-$(printf '%s' "$TG_ROOT" | cksum | cut -d' ' -f1)"
      tg_log "user postgres cannot reach $TG_PG_DIR; keeping the cluster in $alt"
      rmdir "$TG_PG_DIR"
      mkdir -p "$alt"
      chown postgres: "$alt"
      chmod 700 "$alt"
      ln -s "$alt" "$TG_PG_DIR"
    fi
  fi
  TG_PG_DIR_REAL="$(cd "$TG_PG_DIR" && pwd -P)"
  # The server log lives next to the cluster (writable by its owner);
  # .tollgate/log/postgres.log points at it.
  ln -sfn "$TG_PG_DIR_REAL/postgres.log" "$TG_LOG_DIR/postgres.log"
}

# Private cluster in .tollgate/pg/data; sets TOLLGATE_PG_URL.
tg__pg_private() {
  local bindir=$1
  tg__pg_prepare_dir
  local dir=$TG_PG_DIR_REAL data="$TG_PG_DIR_REAL/data" log="$TG_PG_DIR_REAL/postgres.log"
  local port=$TOLLGATE_PG_PORT

  if [[ ! -s "$data/PG_VERSION" ]]; then
    tg_log "initdb: private PostgreSQL cluster in .tollgate/pg/data ($("$bindir/postgres" --version 2>/dev/null | awk '{print $3}'))"
    if ! tg__pg_run "$bindir/initdb" -D "$data" -U postgres --auth=trust \
      -E UTF8 --no-locale --no-sync >"$TG_LOG_DIR/initdb.log" 2>&1; then
      tg_log_tail "$TG_LOG_DIR/initdb.log"
      tg_die "initdb failed"
    fi
    # Throwaway dev/test cluster: trade crash safety for speed.
    # shellcheck disable=SC2016 # $1 is expanded by the inner sh
    tg__pg_run sh -c 'cat >>"$1"' sh "$data/postgresql.conf" <<'EOF'

# ---- added by scripts/lib.sh (private dev/test cluster) ----
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
  fi

  if tg__pg_run "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    # Already running (maybe on another port than asked for): use its port.
    local running_port
    running_port="$(sed -n 4p "$data/postmaster.pid" 2>/dev/null | tr -dc '0-9')" || true
    [[ -n "$running_port" ]] && port=$running_port
  else
    # Unix sockets have a ~107 byte path limit; fall back to TCP only.
    local sockdir="$dir"
    ((${#sockdir} + 20 > 100)) && sockdir=""
    tg_log "starting private PostgreSQL on 127.0.0.1:$port (log: .tollgate/log/postgres.log)"
    if ! tg__pg_run "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$sockdir'" \
      start >/dev/null 2>&1; then
      tg_log_tail "$log"
      tg_die "could not start the private PostgreSQL cluster (port $port taken? set TOLLGATE_PG_PORT)"
    fi
    tg__mark_started postgres
  fi
  tg_state_dirs
  sed -n 1p "$data/postmaster.pid" >"$(tg_pidfile postgres)" 2>/dev/null || true
  TOLLGATE_PG_PORT=$port
  TOLLGATE_PG_URL="postgres://postgres@127.0.0.1:$port"
  export TOLLGATE_PG_PORT TOLLGATE_PG_URL
  local i
  for ((i = 0; i < 100; i++)); do
    tg__pg_answers "$TOLLGATE_PG_URL" && return 0
    sleep 0.2
  done
  tg_log_tail "$log"
  tg_die "private PostgreSQL on port $port does not answer"
}

TG__PG_APT_TRIED=""
tg_ensure_postgres() {
  tg__pg_client_path
  TOLLGATE_PG_URL="${TOLLGATE_PG_URL%/}"
  export TOLLGATE_PG_URL
  if tg__pg_answers "$TOLLGATE_PG_URL"; then
    TG_PG_READY=1
    tg_log "postgres: using $TOLLGATE_PG_URL"
    return 0
  fi
  local bindir
  bindir="$(tg__pg_bindir)"
  if [[ -n "$bindir" ]]; then
    tg_log "postgres: $TOLLGATE_PG_URL does not answer; using a private cluster"
    tg__pg_private "$bindir"
    TG_PG_READY=1
    tg_log "postgres: using $TOLLGATE_PG_URL"
    return 0
  fi
  [[ -z "$TG__PG_APT_TRIED" ]] || tg_die "PostgreSQL server binaries still missing after apt-get install"
  TG__PG_APT_TRIED=1
  tg__apt_install postgresql
  tg_ensure_postgres
}

# Stop the private cluster (only ever the one in .tollgate/pg).
tg_stop_postgres() {
  local data bindir
  # Real path: .tollgate/pg may be a symlink the postgres user cannot follow.
  data="$(readlink -f "$TG_PG_DIR" 2>/dev/null || printf '%s' "$TG_PG_DIR")/data"
  if [[ -s "$data/PG_VERSION" ]]; then
    bindir="$(tg__pg_bindir)"
    if [[ -n "$bindir" ]] && tg__pg_run "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      tg_log "stopping private PostgreSQL (.tollgate/pg/data)"
      tg__pg_run "$bindir/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
        tg__pg_run "$bindir/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
  fi
  rm -f "$(tg_pidfile postgres)"
}

tg__pg_psql() {
  PGCONNECT_TIMEOUT=5 psql "${TOLLGATE_PG_URL%/}/postgres" -XAtq -v ON_ERROR_STOP=1 "$@"
}

tg_ensure_databases() {
  [[ -n "$TG_PG_READY" ]] || tg_ensure_postgres
  local db
  for db in "$TOLLGATE_CF_DB" "$TOLLGATE_BILLING_DB"; do
    [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || tg_die "bad database name: $db"
    if [[ "$(tg__pg_psql -c "select 1 from pg_database where datname = '$db'")" != 1 ]]; then
      # A concurrent run may win the race; re-check before failing.
      if tg__pg_psql -c "create database \"$db\"" >/dev/null 2>&1 ||
        [[ "$(tg__pg_psql -c "select 1 from pg_database where datname = '$db'")" == 1 ]]; then
        tg_log "postgres: created database $db"
      else
        tg_die "could not create database $db on $TOLLGATE_PG_URL"
      fi
    fi
  done
  export TOLLGATE_CF_DATABASE_URL="$TOLLGATE_PG_URL/$TOLLGATE_CF_DB"
  export TOLLGATE_BILLING_DATABASE_URL="$TOLLGATE_PG_URL/$TOLLGATE_BILLING_DB"
}

# tg_drop_test_databases: drops databases left behind by test runs that panicked
# before cleaning up (tg_test_* from router tests, tg_e2e_* from end-to-end tests).
tg_drop_test_databases() {
  [[ -n "$TG_PG_READY" ]] || tg_ensure_postgres
  local db
  while IFS= read -r db; do
    [[ -n "$db" ]] || continue
    tg__pg_psql -c "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
  done < <(tg__pg_psql -c "select datname from pg_database where datname ~ '^tg_(test|e2e)_'")
}

# ---- Redis --------------------------------------------------------------------
tg__redis_answers() {
  local out
  if command -v timeout >/dev/null 2>&1; then
    out="$(timeout 5 redis-cli -u "$1" ping 2>/dev/null)" || return 1
  else
    out="$(redis-cli -u "$1" ping 2>/dev/null)" || return 1
  fi
  [[ "$out" == PONG ]]
}

tg_ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 || tg__apt_install redis-tools
  if tg__redis_answers "$TOLLGATE_REDIS_URL"; then
    tg_log "redis: using $TOLLGATE_REDIS_URL"
    return 0
  fi
  # redis://[user:pass@]host[:port][/db]
  local hp host port
  hp="${TOLLGATE_REDIS_URL#*://}"
  hp="${hp##*@}"
  hp="${hp%%/*}"
  host="${hp%:*}"
  port=6379
  [[ "$hp" == *:* ]] && port="${hp##*:}"
  case "$host" in
  127.0.0.1 | localhost) ;;
  *) tg_die "redis at $TOLLGATE_REDIS_URL does not answer, and it is not local, so it cannot be started here" ;;
  esac
  command -v redis-server >/dev/null 2>&1 || tg__apt_install redis-server
  # Debian's package may have just started its own server on 6379.
  if tg__redis_answers "$TOLLGATE_REDIS_URL"; then
    tg_log "redis: using $TOLLGATE_REDIS_URL"
    return 0
  fi
  tg_state_dirs
  mkdir -p "$TG_STATE/redis"
  local pidfile log rc=0
  pidfile="$(tg_pidfile redis)"
  log="$TG_LOG_DIR/redis.log"
  rm -f "$pidfile"
  tg_log "redis: starting redis-server on 127.0.0.1:$port (log: .tollgate/log/redis.log)"
  # shellcheck disable=SC2094 # --logfile is only a path argument, not a read
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$pidfile" --logfile "$log" --dir "$TG_STATE/redis" \
    </dev/null >>"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    tg_log_tail "$log"
    tg_die "redis-server failed to start"
  fi
  local i
  for ((i = 0; i < 100; i++)); do
    if tg__redis_answers "$TOLLGATE_REDIS_URL"; then
      tg__mark_started redis
      return 0
    fi
    sleep 0.2
  done
  tg_log_tail "$log"
  tg_die "redis-server on port $port does not answer"
}

tg_stop_redis() { tg_stop_pid redis redis-server 20; }

# ---- Redis Cluster (tests) ----------------------------------------------------
# Three masters on loopback (no replicas), for the tests that run the change streams and L2
# on a cluster (e2e/tests/redis_cluster_sharded_stream.rs). Each node keeps its config
# (redis.conf, nodes.conf) and append-only file under .tollgate/redis-cluster/<port>/, so a
# node killed and started again from its redis.conf (as that test does) comes back with its
# writes and its place in the cluster.
: "${TOLLGATE_REDIS_CLUSTER_PORTS:=7001 7002 7003}"
export TOLLGATE_REDIS_CLUSTER_PORTS

tg__redis_cluster_urls() {
  local port urls=()
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do urls+=("redis://127.0.0.1:$port"); done
  (IFS=,; printf '%s\n' "${urls[*]}")
}

# tg__redis_cluster_info PORT FIELD -> prints FIELD of CLUSTER INFO (empty if no answer).
tg__redis_cluster_info() {
  timeout 5 redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null |
    tr -d '\r' | sed -n "s/^$2://p"
}

tg__redis_cluster_ok() {
  local port
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    [[ "$(tg__redis_cluster_info "$port" cluster_state)" == ok ]] || return 1
  done
}

# Stops the cluster's running nodes when any of them runs from a config file that no longer
# exists (started from a checkout since deleted, e.g. an earlier clean clone): such a node can
# be neither restarted by the tests nor trusted to be this checkout's, so the cluster is
# recreated here from scratch.
tg__redis_cluster_drop_orphans() {
  local port cfg orphaned=0 i
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    tg__redis_answers "redis://127.0.0.1:$port" || continue
    cfg="$(redis-cli -p "$port" INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^config_file://p')"
    if [[ -n "$cfg" && ! -f "$cfg" ]]; then
      tg_log "redis cluster: node 127.0.0.1:$port runs from $cfg, which is gone"
      orphaned=1
    fi
  done
  ((orphaned)) || return 0
  tg_log "redis cluster: stopping its nodes to start them again from this checkout"
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  done
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    for ((i = 0; i < 100; i++)); do
      tg__redis_answers "redis://127.0.0.1:$port" || break
      sleep 0.1
    done
    tg__redis_answers "redis://127.0.0.1:$port" && tg_die "cluster node 127.0.0.1:$port does not stop"
  done
  return 0
}

# Starts (if not running) a 3-master Redis Cluster on TOLLGATE_REDIS_CLUSTER_PORTS, creates
# the cluster when its nodes are new, waits for cluster_state:ok on every node, and exports
# TOLLGATE_TEST_REDIS_CLUSTER_URLS.
tg_ensure_redis_cluster() {
  command -v redis-cli >/dev/null 2>&1 || tg__apt_install redis-tools
  command -v redis-server >/dev/null 2>&1 || tg__apt_install redis-server
  TOLLGATE_TEST_REDIS_CLUSTER_URLS="$(tg__redis_cluster_urls)"
  export TOLLGATE_TEST_REDIS_CLUSTER_URLS
  tg__redis_cluster_drop_orphans
  if tg__redis_cluster_ok; then
    tg_log "redis cluster: using $TOLLGATE_TEST_REDIS_CLUSTER_URLS"
    return 0
  fi
  tg_state_dirs
  local port dir log started=0 rc
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    if tg__redis_answers "redis://127.0.0.1:$port"; then
      [[ "$(tg__redis_cluster_info "$port" cluster_enabled)" != 0 ]] ||
        tg_die "127.0.0.1:$port answers but is not a cluster node: set TOLLGATE_REDIS_CLUSTER_PORTS to free ports"
      continue
    fi
    dir="$TG_STATE/redis-cluster/$port"
    log="$TG_LOG_DIR/redis-cluster-$port.log"
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<CONF
port $port
bind 127.0.0.1
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
cluster-require-full-coverage no
appendonly yes
appendfsync everysec
save ""
dir $dir
pidfile $(tg_pidfile "redis-cluster-$port")
logfile $log
daemonize yes
CONF
    tg_log "redis cluster: starting node 127.0.0.1:$port (log: .tollgate/log/redis-cluster-$port.log)"
    rc=0
    redis-server "$dir/redis.conf" </dev/null >>"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
      tg_log_tail "$log"
      tg_die "redis-server (cluster node $port) failed to start"
    fi
    started=1
  done
  local i
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    for ((i = 0; i < 100; i++)); do
      tg__redis_answers "redis://127.0.0.1:$port" && break
      sleep 0.2
    done
    tg__redis_answers "redis://127.0.0.1:$port" || tg_die "cluster node 127.0.0.1:$port does not answer"
  done
  ((started)) && tg__mark_started redis-cluster
  # New nodes (each knows only itself, no slots): form the cluster. Nodes that already
  # formed one (restarted from their nodes.conf) only need to agree again.
  local known new=1 nodes=()
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    known="$(tg__redis_cluster_info "$port" cluster_known_nodes)"
    [[ "$known" == 1 && "$(tg__redis_cluster_info "$port" cluster_slots_assigned)" == 0 ]] || new=0
    nodes+=("127.0.0.1:$port")
  done
  if ((new)); then
    tg_log "redis cluster: creating it (${nodes[*]}, 3 masters, no replicas)"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
      >>"$TG_LOG_DIR/redis-cluster-create.log" 2>&1 ||
      { tg_log_tail "$TG_LOG_DIR/redis-cluster-create.log"; tg_die "redis-cli --cluster create failed"; }
  fi
  for ((i = 0; i < 150; i++)); do
    if tg__redis_cluster_ok; then
      tg_log "redis cluster: ok ($TOLLGATE_TEST_REDIS_CLUSTER_URLS)"
      return 0
    fi
    sleep 0.2
  done
  tg_die "the redis cluster on ports $TOLLGATE_REDIS_CLUSTER_PORTS never reached cluster_state:ok (a half-formed one: stop its nodes and remove .tollgate/redis-cluster)"
}

tg_stop_redis_cluster() {
  local port
  for port in $TOLLGATE_REDIS_CLUSTER_PORTS; do
    tg_stop_pid "redis-cluster-$port" redis-server 20
  done
}

# ---- localstripe --------------------------------------------------------------
TG_VENV="$TG_ROOT/.venv"

tg__localstripe_answers() {
  curl -fsS -o /dev/null --max-time 2 -H 'Authorization: Bearer sk_test_x' \
    "$1/v1/customers" 2>/dev/null
}

tg_ensure_venv() {
  if [[ -x "$TG_VENV/bin/python" ]] && "$TG_VENV/bin/python" -c 'import sys' 2>/dev/null; then
    return 0
  fi
  local py
  py="$(command -v python3 || true)"
  [[ -n "$py" ]] || { tg__apt_install python3 python3-venv; py="$(command -v python3)"; }
  tg_state_dirs
  tg_log "creating Python venv at .venv"
  if ! "$py" -m venv --clear "$TG_VENV" >>"$TG_LOG_DIR/pip.log" 2>&1; then
    # Debian's system python needs python3-venv for ensurepip.
    tg__apt_install python3-venv
    "$py" -m venv --clear "$TG_VENV" >>"$TG_LOG_DIR/pip.log" 2>&1 ||
      { tg_log_tail "$TG_LOG_DIR/pip.log"; tg_die "python3 -m venv failed"; }
  fi
}

tg_ensure_localstripe_installed() {
  tg_ensure_venv
  local py="$TG_VENV/bin/python"
  if "$py" -c 'import sys, importlib.metadata as m, localstripe
sys.exit(m.version("localstripe") != sys.argv[1])' "$TG_LOCALSTRIPE_VERSION" 2>/dev/null; then
    return 0
  fi
  tg_state_dirs
  tg_log "installing localstripe==$TG_LOCALSTRIPE_VERSION into .venv (log: .tollgate/log/pip.log)"
  "$py" -m pip install --disable-pip-version-check -q "localstripe==$TG_LOCALSTRIPE_VERSION" \
    >>"$TG_LOG_DIR/pip.log" 2>&1 || { tg_log_tail "$TG_LOG_DIR/pip.log"; tg_die "pip install localstripe failed"; }
}

# tg_ensure_openfeature: the OpenFeature Python SDK and its OFREP provider in .venv, the real
# client the edge's OFREP endpoints are tested with. Exports TOLLGATE_TEST_PYTHON.
TG_OPENFEATURE_SDK_VERSION="0.10.0"
TG_OFREP_PROVIDER_VERSION="0.3.0"
tg_ensure_openfeature() {
  tg_ensure_venv
  local py="$TG_VENV/bin/python"
  export TOLLGATE_TEST_PYTHON="$py"
  if "$py" -c 'import sys, importlib.metadata as m
sys.exit(m.version("openfeature-sdk") != sys.argv[1] or m.version("openfeature-provider-ofrep") != sys.argv[2])' \
    "$TG_OPENFEATURE_SDK_VERSION" "$TG_OFREP_PROVIDER_VERSION" 2>/dev/null; then
    return 0
  fi
  tg_state_dirs
  tg_log "installing openfeature-sdk and openfeature-provider-ofrep into .venv (log: .tollgate/log/pip.log)"
  "$py" -m pip install --disable-pip-version-check -q "openfeature-sdk==$TG_OPENFEATURE_SDK_VERSION" \
    "openfeature-provider-ofrep==$TG_OFREP_PROVIDER_VERSION" >>"$TG_LOG_DIR/pip.log" 2>&1 ||
    { tg_log_tail "$TG_LOG_DIR/pip.log"; tg_die "pip install openfeature failed"; }
}

# tg_ensure_aiosmtpd: a real SMTP server (aiosmtpd, in .venv) the dunning email tests deliver
# to and read back from a maildir. Exports TOLLGATE_TEST_PYTHON.
TG_AIOSMTPD_VERSION="1.4.6"
tg_ensure_aiosmtpd() {
  tg_ensure_venv
  local py="$TG_VENV/bin/python"
  export TOLLGATE_TEST_PYTHON="$py"
  if "$py" -c 'import sys, importlib.metadata as m; sys.exit(m.version("aiosmtpd") != sys.argv[1])' \
    "$TG_AIOSMTPD_VERSION" 2>/dev/null; then
    return 0
  fi
  tg_state_dirs
  tg_log "installing aiosmtpd into .venv (log: .tollgate/log/pip.log)"
  "$py" -m pip install --disable-pip-version-check -q "aiosmtpd==$TG_AIOSMTPD_VERSION" \
    >>"$TG_LOG_DIR/pip.log" 2>&1 || { tg_log_tail "$TG_LOG_DIR/pip.log"; tg_die "pip install aiosmtpd failed"; }
}

# tg_ensure_chromium: Debian's Chromium and ChromeDriver, the real browser the NinjaPanel's web
# page is tested in (e2e/tests/ninjapanel_in_a_browser.rs). Exports TOLLGATE_TEST_CHROMEDRIVER.
tg_ensure_chromium() {
  if [[ ! -x /usr/bin/chromedriver || ! -x /usr/bin/chromium ]]; then
    tg__apt_install chromium chromium-driver
  fi
  export TOLLGATE_TEST_CHROMEDRIVER=/usr/bin/chromedriver
}

# tg_ensure_schemathesis: schemathesis (in .venv), which e2e/tests/openapi_contract.rs runs
# against the control plane's and the edge's `GET /openapi.json`. Exports TOLLGATE_TEST_PYTHON
# (the `schemathesis` command is its sibling).
TG_SCHEMATHESIS_VERSION="4.32.5"
tg_ensure_schemathesis() {
  tg_ensure_venv
  local py="$TG_VENV/bin/python"
  export TOLLGATE_TEST_PYTHON="$py"
  if "$py" -c 'import sys, importlib.metadata as m; sys.exit(m.version("schemathesis") != sys.argv[1])' \
    "$TG_SCHEMATHESIS_VERSION" 2>/dev/null; then
    return 0
  fi
  tg_state_dirs
  tg_log "installing schemathesis into .venv (log: .tollgate/log/pip.log)"
  "$py" -m pip install --disable-pip-version-check -q "schemathesis==$TG_SCHEMATHESIS_VERSION" \
    >>"$TG_LOG_DIR/pip.log" 2>&1 || { tg_log_tail "$TG_LOG_DIR/pip.log"; tg_die "pip install schemathesis failed"; }
}

# Whether the localstripe at $1 runs this checkout's launcher (scripts/localstripe-serve.py
# answers the hash of its own file): an older launcher lacks routes the tests use.
tg__localstripe_current() {
  local want got
  want="$(sha256sum "$TG_ROOT/scripts/localstripe-serve.py" | cut -d' ' -f1)"
  got="$(curl -fsS --max-time 2 "$1/_config/launcher" 2>/dev/null | tr -d ' \n' |
    sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p')" || true
  [[ "$got" == "$want" ]]
}

tg_ensure_localstripe() {
  local port=$TOLLGATE_LOCALSTRIPE_PORT
  local base="http://127.0.0.1:$port"
  tg_ensure_localstripe_installed
  if tg__localstripe_answers "$base" && ! tg__localstripe_current "$base"; then
    if tg_pid_alive localstripe localstripe-serve; then
      tg_log "localstripe: $base runs an older launcher; restarting it"
      tg_stop_localstripe
    else
      tg_die "the localstripe at $base was not started from this checkout's scripts/localstripe-serve.py (or is an older version of it): stop it, or set TOLLGATE_LOCALSTRIPE_PORT to a free port"
    fi
  fi
  if tg__localstripe_answers "$base"; then
    tg_log "localstripe: using $base"
  else
    local script="$TG_ROOT/scripts/localstripe-serve.py" log="$TG_LOG_DIR/localstripe.log"
    [[ -f "$script" ]] || tg_die "missing $script"
    tg_log "localstripe: starting on $base (log: .tollgate/log/localstripe.log)"
    tg_spawn localstripe "$log" "$TG_VENV/bin/python" "$script" \
      --host 127.0.0.1 --port "$port" --state "$TG_STATE/localstripe.pickle"
    tg__mark_started localstripe
    local end=$((SECONDS + 30))
    until tg__localstripe_answers "$base"; do
      if ! tg_pid_alive localstripe localstripe-serve; then
        tg_log_tail "$log"
        tg_die "localstripe exited during startup"
      fi
      if ((SECONDS >= end)); then
        tg_log_tail "$log"
        tg_die "localstripe did not answer $base/v1/customers within 30s"
      fi
      sleep 0.2
    done
  fi
  TOLLGATE_TEST_STRIPE_API_BASE="$base"
  export TOLLGATE_TEST_STRIPE_API_BASE
}

tg_stop_localstripe() { tg_stop_pid localstripe localstripe-serve 10; }

# Stop what *this* process started (reverse order); used by scripts/test.
tg_stop_started() {
  local i
  for ((i = ${#TG_STARTED[@]} - 1; i >= 0; i--)); do
    case "${TG_STARTED[$i]}" in
    postgres) tg_stop_postgres ;;
    redis) tg_stop_redis ;;
    redis-cluster) tg_stop_redis_cluster ;;
    localstripe) tg_stop_localstripe ;;
    esac
  done
  TG_STARTED=()
}

# ---- env file -----------------------------------------------------------------
tg_write_env() {
  tg_state_dirs
  local f="$TG_STATE/env" v
  local tmp="$f.tmp.$$"
  {
    printf '# Written by scripts/lib.sh (tg_write_env) at %s.\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '# Use from a shell in the repo root:  . .tollgate/env\n'
    for v in TOLLGATE_PG_URL TOLLGATE_PG_PORT TOLLGATE_CF_DB TOLLGATE_BILLING_DB \
      TOLLGATE_CF_DATABASE_URL TOLLGATE_BILLING_DATABASE_URL TOLLGATE_REDIS_URL \
      TOLLGATE_LOCALSTRIPE_PORT TOLLGATE_TEST_STRIPE_API_BASE \
      TOLLGATE_CP_PORT TOLLGATE_EDGE_PORT TOLLGATE_CP_URL TOLLGATE_EDGE_URL \
      TOLLGATE_EDGE_TOKEN TOLLGATE_ADMIN_TOKEN TOLLGATE_ACTOR; do
      [[ -n "${!v:-}" ]] || continue
      # The private-cluster port only matters when that cluster is in use.
      [[ "$v" != TOLLGATE_PG_PORT || "$TOLLGATE_PG_URL" == *":$TOLLGATE_PG_PORT" ]] || continue
      printf 'export %s=%q\n' "$v" "${!v}"
    done
  } >"$tmp"
  mv -f "$tmp" "$f"
}
