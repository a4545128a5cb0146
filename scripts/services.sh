#!/usr/bin/env bash
# Makes sure MariaDB, RabbitMQ and Redis run on loopback, starting the ones that
# do not. With --install, first installs (Debian packages) whatever is missing.
# Idempotent; safe to run on a machine where everything already runs.
set -euo pipefail

# Server binaries (mariadbd, rabbitmqctl, redis-server) live in sbin.
export PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"

INSTALL=0
[ "${1:-}" = "--install" ] && INSTALL=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo "$@"; else log "need root for: $*"; return 1; fi; }

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  log "$what did not come up within ${secs}s"; return 1
}

install_missing() {
  local pkgs=()
  have mariadbd || have mysqld || pkgs+=(mariadb-server)
  have mysql || pkgs+=(mariadb-client)
  have rabbitmq-server || pkgs+=(rabbitmq-server)
  have redis-server || pkgs+=(redis-server)
  have cc || pkgs+=(build-essential)
  have pkg-config || pkgs+=(pkg-config)
  have curl || pkgs+=(curl ca-certificates)
  have python3 || pkgs+=(python3 python3-venv)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
  fi
  if ! have cargo; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
      log "installing the Rust toolchain with rustup (Debian's rustc is too old for the dependencies)"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
}

mariadb_up() { mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || mysql -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; }
start_mariadb() {
  if mariadb_up; then return 0; fi
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root service mariadb start >/dev/null 2>&1 || as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" 60 mysqladmin ping
  fi
  if ! mariadb_up; then
    # Debian's root logs in by unix socket only; Aegis's default URL is
    # mysql://root@127.0.0.1 (a development machine). Allow it over TCP too.
    log "allowing root without a password over TCP on loopback (development machine)"
    as_root mysql -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED BY ''; GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
  fi
  wait_for "MariaDB on 127.0.0.1:3306" 30 mariadb_up
}

rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1 && (echo > /dev/tcp/127.0.0.1/5672) >/dev/null 2>&1; }
start_rabbitmq() {
  if rabbit_up; then return 0; fi
  log "starting RabbitMQ"
  as_root service rabbitmq-server start >/dev/null 2>&1 || as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for "RabbitMQ" 120 rabbit_up
  # A stopped application (rabbitmqctl stop_app) is started too.
  as_root rabbitmqctl -q start_app >/dev/null 2>&1 || true
}

redis_up() { redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG; }
start_redis() {
  if redis_up; then return 0; fi
  log "starting Redis"
  as_root service redis-server start >/dev/null 2>&1 || as_root mkdir -p /var/lib/redis /var/log/redis
  redis_up || as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for "Redis" 30 redis_up
}

[ $INSTALL = 1 ] && install_missing
start_mariadb
start_rabbitmq
start_redis
log "MariaDB, RabbitMQ and Redis are running on loopback"
