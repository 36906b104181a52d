#!/usr/bin/env bash
# The kill-a-container drill against the docker-compose cluster:
#
#   1. brings the cluster up (deploy/docker-compose.yml) and waits for the
#      one-shot setup service to finish;
#   2. starts `nasctl drill --fault external` in the client container: its
#      writers record every acknowledged write, and once they are going it
#      names the CHN serving the export;
#   3. kills that CHN's container (docker kill, i.e. SIGKILL) and tells the
#      drill when; the drill watches the partner take over, then reads every
#      acknowledged write back;
#   4. starts the killed container again and shows it back as standby (or,
#      with NAS_GIVEBACK_AFTER_S set, the export given back to it);
#   5. prints the report (time to detect, time until clients are served
#      again, writes checked and lost) and tears everything down.
#
# Usage: deploy/drill.sh [--keep] [--runs N]
#   --keep    leave the cluster running afterwards (tear down yourself with
#             `docker-compose -p nasdrill -f deploy/docker-compose.yml --profile client down -v`)
#   --runs N  kill and restart the serving container N times (default 1)
# Environment: COMPOSE (the compose command; default `docker compose` when
#   that works, else `docker-compose`), DRILL_PROJECT (default nasdrill),
#   NAS_IMAGE (default nas:latest), DRILL_WRITERS (default 3), and every
#   setting docker-compose.yml reads (NAS_GIVEBACK_AFTER_S, ...).
# Needs the image: `docker build -f deploy/Dockerfile -t nas:latest .`
# (online) or deploy/prepare-offline.sh (no registry). Exit status 0 only
# when every drill lost no acknowledged write and had no failed call.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"

keep=0
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1 ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "drill.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "drill.sh: --runs needs a positive number, not '$runs'" >&2; exit 2; }

drill=drill.sh
# shellcheck source=deploy/compose-drill.sh
. ./compose-drill.sh
start_cluster

failed=0
reports=()
for run in $(seq 1 "$runs"); do
    rm -f "$work"/fault.*
    drill_cid=$(compose run -d client drill --export "${NAS_EXPORT:-home}" --fault external \
        --handshake /work --writers "${DRILL_WRITERS:-3}" 2>"$work/run.err" | tail -n1)
    [ -n "$drill_cid" ] || die "could not start the drill in the client container: $(cat "$work/run.err")"
    running() { [ "$(docker inspect -f '{{.State.Running}}' "$drill_cid" 2>/dev/null)" = true ]; }
    asked() { [ -s "$work/fault.request" ] || ! running; }
    wait_until 120 asked || die "the drill never asked for the fault: $(docker logs --tail 20 "$drill_cid" 2>&1)"
    [ -s "$work/fault.request" ] || die "the drill ended before the fault: $(docker logs --tail 20 "$drill_cid" 2>&1)"
    chn=$(tr -d '[:space:]' <"$work/fault.request")
    svc=$(printf '%s' "$chn" | tr '[:upper:]' '[:lower:]')
    victim=$(compose ps -q "$svc")
    [ -n "$victim" ] || die "the drill asked to kill $chn, but the cluster has no service $svc"
    say "run $run: killing $svc (serves ${NAS_EXPORT:-home}) while the writers write"
    at=$(now_ms)
    docker kill "$victim" >/dev/null
    printf '%s\n' "$at" >"$work/fault.tmp" && mv "$work/fault.tmp" "$work/fault.done"
    rc=$(timeout 180 docker wait "$drill_cid") || die "the drill did not finish in 180 s"
    report=$(docker logs "$drill_cid" 2>&1 | grep -v '^Creating ' | sed "s/^drill 1:/drill $run:/" || true)
    docker rm -f "$drill_cid" >/dev/null 2>&1; drill_cid=
    printf '%s\n' "$report"
    reports+=("$report")
    [ "$rc" = 0 ] || failed=1

    say "run $run: starting $svc again"
    compose start "$svc" >/dev/null 2>&1
    wait_until 120 ready "$svc" || die "$svc did not come back ready: $(docker logs --tail 20 "$victim" 2>&1)"
    now=$(owner)
    if [ "${NAS_GIVEBACK_AFTER_S:-0}" -gt 0 ]; then
        back() { [ "$(owner)" = "$chn" ]; }
        if wait_until $((NAS_GIVEBACK_AFTER_S + 60)) back; then
            say "run $run: $chn is back; ${NAS_EXPORT:-home} was given back to it after ${NAS_GIVEBACK_AFTER_S} s healthy"
        else
            say "run $run: $chn is back, but ${NAS_EXPORT:-home} is still on $(owner) (giveback expected after ${NAS_GIVEBACK_AFTER_S} s)"
            failed=1
        fi
    else
        say "run $run: $chn is back as standby; ${NAS_EXPORT:-home} stays on $now (automatic giveback off: NAS_GIVEBACK_AFTER_S=0; \`nasctl failover giveback ${NAS_EXPORT:-home}\` moves it)"
        if [ "$run" -lt "$runs" ]; then
            ctl failover giveback "${NAS_EXPORT:-home}" >/dev/null || die "giveback before the next run failed"
        fi
    fi
done

echo
echo "=== drill report ($runs run(s), $COMPOSE, image $image) ==="
for r in "${reports[@]}"; do
    printf '%s\n' "$r" | grep '^drill ' || printf '%s\n' "$r"
done
# Medians and maxima over the runs (nearest rank).
summary() {
    printf '%s\n' "${reports[@]}" | grep -o "$1 [0-9]* ms" | awk '{print $(NF-1)}' | sort -n \
        | awk -v what="$1" '{v[NR]=$1} END {if (NR) printf "%s: median %d ms, max %d ms over %d run(s)\n", what, v[int((NR+1)/2)], v[NR], NR}'
}
summary detected
summary "served again"
if [ "$failed" = 0 ]; then
    echo "result: PASS (every acknowledged write readable, no failed call)"
else
    echo "result: FAIL (see above)"
fi
exit "$failed"
