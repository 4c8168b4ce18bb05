#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on 127.0.0.1 for the shared-storage sweep test.
#
#   source .ci/postgres.sh        # exports SHOAL_TEST_POSTGRES_URL (and _DATA, the data dir);
#                                 # when sourced, the server stops as the sourcing shell exits
#   .ci/postgres.sh               # same, printing the export lines (the server keeps running)
#   .ci/postgres.sh --stop DATA   # stops the server of data dir DATA and removes its temp folder
#
# Installs PostgreSQL with apt-get only if it is missing. Runs the server as the postgres user
# when started as root (PostgreSQL refuses to run as root), with trust auth on loopback only.

_shoal_pg_main() {
    local pg_bin run_as=()
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ "$(id -u)" = 0 ]; then
        run_as=(runuser -u postgres --)
    fi

    if [ "${1:-}" = "--stop" ]; then
        local data="${2:?usage: postgres.sh --stop DATA_DIR}"
        if [ -n "$pg_bin" ] && [ -f "$data/postmaster.pid" ]; then
            "${run_as[@]}" "$pg_bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
        fi
        # Only remove folders this script made.
        case "$(basename "$(dirname "$data")")" in
            shoal-pg.*) rm -rf "$(dirname "$data")" ;;
        esac
        return 0
    fi

    if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/pg_ctl" ]; then
        echo "postgres.sh: PostgreSQL not found, installing it with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || {
            echo "postgres.sh: apt-get install postgresql failed" >&2
            return 1
        }
        pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "postgres.sh: running as root but there is no 'postgres' user to run the server" >&2
        return 1
    fi

    local dir port
    dir=$(mktemp -d /tmp/shoal-pg.XXXXXX)
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

    "${run_as[@]}" "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 || {
        echo "postgres.sh: initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        return 1
    }
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/data -c fsync=off" start >/dev/null || {
        echo "postgres.sh: the server did not start:" >&2
        cat "$dir/data/server.log" >&2
        return 1
    }
    "${run_as[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres shoal_test || return 1

    export SHOAL_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/shoal_test"
    export SHOAL_TEST_POSTGRES_DATA="$dir/data"
    echo "export SHOAL_TEST_POSTGRES_URL=$SHOAL_TEST_POSTGRES_URL"
    echo "export SHOAL_TEST_POSTGRES_DATA=$SHOAL_TEST_POSTGRES_DATA"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _shoal_pg_main "$@"
else
    _shoal_pg_main "$@" || return 1
    if [ -z "$(trap -p EXIT)" ] && [ -n "${SHOAL_TEST_POSTGRES_DATA:-}" ]; then
        # shellcheck disable=SC2064
        trap "bash '${BASH_SOURCE[0]}' --stop '$SHOAL_TEST_POSTGRES_DATA'" EXIT
    fi
fi
