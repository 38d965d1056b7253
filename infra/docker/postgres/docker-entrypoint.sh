#!/usr/bin/env bash
# The official postgres image's start-up, for Debian's packages: as root, make the data and
# socket folders the postgres user's and drop to it; on an empty PGDATA, initdb with
# POSTGRES_USER and the password from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, create
# POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sh|*.sql on a server reachable only by its
# socket, stop it; then exec postgres, listening on every address with scram-sha-256.
# The password is passed to initdb through a file descriptor: never in argv, never logged.
set -Eeuo pipefail

log() { printf '%s docker-entrypoint: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

# VAR or VAR_FILE (a secret file), as the official image reads them; both set is an error.
file_env() {
    local var="$1" file_var="${1}_FILE" default="${2:-}" value
    if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then
        log "both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    value="$default"
    if [[ -n ${!var:-} ]]; then
        value="${!var}"
    elif [[ -n ${!file_var:-} ]]; then
        if [[ ! -r ${!file_var} ]]; then
            log "$file_var=${!file_var}: cannot read it as $(id -un) (uid $(id -u)); make it readable (mode 0644, or owned by this user)"
            exit 1
        fi
        value="$(<"${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

if [[ ${1:0:1} == - ]]; then
    set -- postgres "$@"
fi

# Read the *_FILE secrets while still root, as the official image does: a secret file owned
# by another user (the app's uid 10001, mode 0600) is readable here, not after the switch.
if [[ $1 == postgres ]]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
fi

if [[ $1 == postgres && $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ $1 == postgres && ! -s $PGDATA/PG_VERSION ]]; then
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [[ -z $POSTGRES_PASSWORD && $auth != trust ]]; then
        log "no password: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust)"
        exit 1
    fi
    log "initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options, as upstream
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host="$auth" --encoding=UTF8 --locale=C.UTF-8 \
        $POSTGRES_INITDB_ARGS >/dev/null
    printf '\nlisten_addresses = '"'*'"'\n' >>"$PGDATA/postgresql.conf"
    printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    # A server for the set-up only, on the socket: no client sees a half-made database.
    pg_ctl --pgdata="$PGDATA" --wait --silent --options="-c listen_addresses=''" start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username="$POSTGRES_USER" --no-password)
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql[@]}" --dbname=postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) log "running $script"; . "$script" ;;
            *.sql) log "running $script"; "${psql[@]}" --dbname="$POSTGRES_DB" -f "$script" ;;
            *) [[ -e $script ]] && log "ignoring $script" ;;
        esac
    done
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
    log "initialised; starting the server"
fi

# The server has no use for the password: keep it out of its environment (/proc/1/environ).
unset POSTGRES_PASSWORD
exec "$@"
