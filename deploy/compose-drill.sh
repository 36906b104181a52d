# Sourced by deploy/drill.sh and deploy/restore-drill.sh: the compose
# plumbing both drills share. The caller sets `keep` (1: leave the cluster
# running) and `drill` (its name, for messages), and has cd'ed to deploy/.
# Defines say, die, compose, ctl (nasctl in the client container), now_ms,
# wait_until, healthy, ready, owner and start_cluster; makes the work folder the
# client container shares ($work) and tears everything down at exit.

if [ -z "${COMPOSE:-}" ]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
project=${DRILL_PROJECT:-nasdrill}
image=${NAS_IMAGE:-nas:latest}
export NAS_IMAGE=$image
say() { printf '[%s %s] %s\n' "$drill" "$(date +%H:%M:%S)" "$*"; }
die() { printf '%s: %s\n' "$drill" "$*" >&2; exit 1; }
compose() { $COMPOSE -p "$project" -f docker-compose.yml "$@"; }
now_ms() { date +%s%3N; }
# nasctl in the client container, on the compose network.
ctl() { compose run --rm -T client "$@" 2>/dev/null; }

docker info >/dev/null 2>&1 || die "no Docker engine answers; start dockerd (deploy/prepare-offline.sh does)"
docker image inspect "$image" >/dev/null 2>&1 \
    || die "no image $image: build it with \`docker build -f deploy/Dockerfile -t $image .\` (online) or deploy/prepare-offline.sh (offline)"

# The compose file has no default passwords; a drill makes its own.
if [ -z "${NAS_ADMIN_PASSWORD:-}" ]; then
    NAS_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    export NAS_ADMIN_PASSWORD
    say "NAS_ADMIN_PASSWORD was unset: this drill's cluster gets a random admin password"
fi
if [ -z "${NAS_PASSWORD:-}" ]; then
    NAS_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    export NAS_PASSWORD
    say "NAS_PASSWORD was unset: this drill's file user gets a random password"
fi

# The CHNs' web ports on free host ports: a cluster already running on
# 9101/9102/9105 must not stop the drill's.
export NAS_WEB_CHN1=${NAS_WEB_CHN1:-127.0.0.1:} NAS_WEB_CHN2=${NAS_WEB_CHN2:-127.0.0.1:} NAS_WEB_CHN5=${NAS_WEB_CHN5:-127.0.0.1:}

# The client container writes here as the nas user (uid 10001).
work=$(mktemp -d /tmp/nas-drill.XXXXXX)
chmod 0777 "$work"
export NAS_CLIENT_DIR=$work
# A container the drill started on its own, removed at exit.
drill_cid=
teardown() {
    [ -n "$drill_cid" ] && docker rm -f "$drill_cid" >/dev/null 2>&1
    if [ "$keep" = 0 ]; then
        say "tearing down"
        compose --profile client down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap teardown EXIT

# Waits up to $1 seconds for the command after it to succeed.
wait_until() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")" 2>/dev/null)" = healthy ]; }
# Ready, not merely running: the CHN has a quorum and its exports are open.
ready() { compose exec -T "$1" nasctl health --ready >/dev/null 2>&1; }
# The CHN serving $NAS_EXPORT, from the service table.
owner() { ctl --json export list | tr -d ' \n' | grep -o "{[^}]*\"export\":\"${NAS_EXPORT:-home}\"[^}]*}" | grep -o '"owner_chn":"[^"]*"' | cut -d'"' -f4; }

# Brings the whole cluster up and waits for the one-shot setup service.
start_cluster() {
    say "starting the cluster ($COMPOSE, project $project)"
    compose up -d >/dev/null 2>&1 || { compose up -d; die "compose up failed"; }
    local setup_cid rc
    setup_cid=$(compose ps -q setup)
    [ -n "$setup_cid" ] || die "no setup container"
    rc=$(timeout 300 docker wait "$setup_cid") || die "setup did not finish in 300 s: $(docker logs --tail 20 "$setup_cid" 2>&1)"
    [ "$rc" = 0 ] || die "setup failed (exit $rc): $(docker logs --tail 20 "$setup_cid" 2>&1)"
    say "setup done: $(docker logs "$setup_cid" 2>/dev/null | tail -n1)"
    for svc in chn1 chn2 chn5; do
        wait_until 60 ready "$svc" || die "$svc is not ready (quorum, exports open) 60 s after setup"
    done
}
