#!/usr/bin/env bash
# The disaster drill against the docker-compose cluster:
#
#   1. brings the cluster up (deploy/docker-compose.yml) and waits for the
#      one-shot setup service to finish;
#   2. puts a file into the export, backs the export up to the `tape`
#      volume (`nasctl backup create`), and writes a copy of the shared LU
#      to its backup location on the disk array (`nasctl shared-lu backup`);
#   3. stops every CHN and deletes every CHN's data volume: the Raft logs
#      and tables of the whole cluster are gone, the disk array is left;
#   4. starts the CHNs again with empty data, and shows that the setup
#      service refuses to start an empty cluster over that array;
#   5. restores in the client container with `nasctl cluster restore
#      --chn ... --from-array`, then reads the file back and compares it,
#      and checks that the user, the export and the LU came back;
#   6. deletes the file (an operator's mistake) and restores it from the
#      export backup on the tape (`nasctl backup restore --path`);
#   7. tears everything down.
#
# Usage: deploy/restore-drill.sh [--keep]
#   --keep    leave the cluster running afterwards (tear down yourself with
#             `docker-compose -p nasdrill -f deploy/docker-compose.yml --profile client down -v`)
# Environment: as deploy/drill.sh (COMPOSE, DRILL_PROJECT, NAS_IMAGE, and
#   every setting docker-compose.yml reads). Needs the image (see
#   deploy/drill.sh). Exit status 0 only when the file reads back the same.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"

keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "restore-drill.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

drill=restore-drill.sh
# shellcheck source=deploy/compose-drill.sh
. ./compose-drill.sh
start_cluster
export_name=${NAS_EXPORT:-home}
chns=CHN1=chn1:7000,CHN2=chn2:7000,CHN5=chn5:7000

head -c 3000000 /dev/urandom >"$work/data.bin"
ctl fs put /work/data.bin "$export_name:/data.bin" >/dev/null || die "fs put failed"
tape=/var/lib/nas/tape
ctl --json backup create "$export_name" --to "$tape" >"$work/backup.json" || die "backup create failed"
backup_id=$(grep -o '"id":"[^"]*"' "$work/backup.json" | head -n1 | cut -d'"' -f4)
[ -n "$backup_id" ] || die "backup create printed no id: $(cat "$work/backup.json")"
say "export $export_name backed up to the tape as $backup_id"
ctl shared-lu backup || die "shared-lu backup failed"

say "stopping every CHN and deleting every CHN's data volume (the whole Raft group); the disk array stays"
compose stop chn1 chn2 chn5 >/dev/null 2>&1
compose rm -f chn1 chn2 chn5 >/dev/null 2>&1
for v in chn1-data chn2-data chn5-data; do
    docker volume rm "${project}_$v" >/dev/null || die "cannot remove volume ${project}_$v"
done
compose up -d chn1 chn2 chn5 >/dev/null 2>&1 || die "the CHNs did not start again"
for svc in chn1 chn2 chn5; do
    wait_until 120 healthy "$svc" || die "$svc did not come back healthy"
done

say "the setup service, run again, must refuse to start an empty cluster over this array"
if compose run --rm -T setup >"$work/setup.out" 2>&1; then
    die "setup started a new, empty cluster over an array that holds a cluster's state"
fi
grep -q "cluster restore" "$work/setup.out" \
    || die "setup failed, but not because of the backup: $(tail -n 3 "$work/setup.out")"
say "refused: $(grep -o 'the disk array holds[^;]*' "$work/setup.out" | head -n1)"

say "restoring: nasctl cluster restore --chn $chns --from-array"
compose run --rm -T client cluster restore --chn "$chns" --from-array 2>&1 | grep -v '^Creating ' \
    || die "cluster restore failed"
ctl fs get "$export_name:/data.bin" /work/back.bin >/dev/null || die "the file cannot be read after the restore"
cmp -s "$work/data.bin" "$work/back.bin" || die "the file read back after the restore differs"
ctl --json user list | grep -q "\"${NAS_USER:-alice}\"" || die "user ${NAS_USER:-alice} did not come back"
ctl --json lu list | grep -q '"health"' || die "the LU did not come back"
say "owner of $export_name after the restore: $(owner)"

say "deleting $export_name:/data.bin, then restoring it from backup $backup_id on the tape"
ctl fs rm "$export_name:/data.bin" >/dev/null || die "fs rm failed"
ctl backup restore "$backup_id" --target "$tape" --to-export "$export_name" --path /data.bin --force \
    || die "backup restore failed"
ctl fs get "$export_name:/data.bin" /work/again.bin >/dev/null || die "the restored file cannot be read"
cmp -s "$work/data.bin" "$work/again.bin" || die "the file restored from the tape differs"
echo "result: PASS (the cluster came back from the array's copy; $export_name:/data.bin reads back the same, and again after a delete and a restore from the tape)"
