# shellcheck shell=bash
# The appliance's disk layout and boot chain, shared by image/build and the tests' dry runs:
# fixed partition UUIDs, GRUB's A/B script with boot tries, its environment block, the
# udev names and fstab the root uses, RAUC's system.conf, the ESP and whole-disk assembly.
# Sourced after lib/common.sh, never run.

# GPT: fixed GUIDs, so root=PARTUUID= is known when the image is built. MBR (boards whose
# ROM or firmware needs it): the disk signature, partitions -01..-04.
DISK_GUID=3D9A5C11-7E2B-4B8A-9C3F-000000000000
PART_GUID_PREFIX=3d9a5c11-7e2b-4b8a-9c3f-0000000000
MBR_ID=0x3d9a5c11
# Partition of each role: 1 ESP (FAT, the firmware's boot partition), 2/3 root slots A/B, 4 data.
part_uuid() {  # part_uuid gpt|dos ROLE
    local n
    case $2 in esp) n=1 ;; rootfs_a) n=2 ;; rootfs_b) n=3 ;; data) n=4 ;; *) die "no partition role $2" ;; esac
    if [ "$1" = gpt ]; then
        case $2 in esp) echo "${PART_GUID_PREFIX}e5" ;; rootfs_a) echo "${PART_GUID_PREFIX}0a" ;;
                   rootfs_b) echo "${PART_GUID_PREFIX}0b" ;; data) echo "${PART_GUID_PREFIX}da" ;; esac
    else
        printf '%s-%02d\n' "${MBR_ID#0x}" "$n"
    fi
}

# sfdisk_script gpt|dos ESP_MIB SLOT_MIB DATA_MIB: the partition table.
sfdisk_script() {
    local label=$1 esp=$2 slot=$3 data=$4
    if [ "$label" = gpt ]; then
        cat <<EOF
label: gpt
label-id: $DISK_GUID
first-lba: 2048

start=1MiB, size=${esp}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp, uuid=$(part_uuid gpt esp)
size=${slot}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_a, uuid=$(part_uuid gpt rootfs_a)
size=${slot}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_b, uuid=$(part_uuid gpt rootfs_b)
size=${data}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data, uuid=$(part_uuid gpt data)
EOF
    else
        cat <<EOF
label: dos
label-id: $MBR_ID

start=1MiB, size=${esp}MiB, type=c, bootable
size=${slot}MiB, type=83
size=${slot}MiB, type=83
size=${data}MiB, type=83
EOF
    fi
}

# udev_slot_rules: /dev/disk/wmbus/{esp,rootfs_a,rootfs_b,data} for both table kinds, so one
# root slot serves the GPT and the MBR images (RAUC and fstab use these names).
udev_slot_rules() {
    local role
    echo "# Stable names of the appliance's partitions, GPT or MBR (installed by image/build)."
    for role in esp rootfs_a rootfs_b data; do
        printf 'SUBSYSTEM=="block", ENV{ID_PART_ENTRY_UUID}=="%s|%s", SYMLINK+="disk/wmbus/%s"\n' \
            "$(part_uuid gpt "$role")" "$(part_uuid dos "$role")" "$role"
    done
}

root_fstab() {
    cat <<'EOF'
# The root is a read-only squashfs slot (mounted by the initrd, with /data and its binds:
# /etc/initramfs-tools/scripts/local-bottom/wmbus-data). Installed by image/build.
/dev/disk/wmbus/esp  /boot/efi  vfat   umask=0077,noatime,nofail,x-systemd.device-timeout=2min  0  2
tmpfs                /tmp       tmpfs  nosuid,nodev,size=64m                                    0  0
tmpfs                /var/tmp   tmpfs  nosuid,nodev,size=16m                                    0  0
EOF
}

# rauc_system_conf DEBARCH: RAUC's view of the slots (grub backend, status on /data).
rauc_system_conf() {
    cat <<EOF
# RAUC (docs/image.md, "Updates"): two read-only root slots, GRUB picks one by its
# environment on the ESP; the status lives on the data partition. Installed by image/build.
[system]
compatible=wmbus-stream-$1
bootloader=grub
grubenv=/boot/efi/EFI/BOOT/grubenv
statusfile=/data/rauc/status
# The root is read-only: bundles are mounted under /run.
mountprefix=/run/rauc
bundle-formats=-plain

[keyring]
path=/etc/rauc/keyring.pem
check-purpose=codesign

[slot.rootfs.0]
device=/dev/disk/wmbus/rootfs_a
type=raw
bootname=A

[slot.rootfs.1]
device=/dev/disk/wmbus/rootfs_b
type=raw
bootname=B
EOF
}

# grub_cfg gpt|dos TRIES CONSOLE: the A/B boot script on the ESP. Each boot of a slot counts
# one try (X_TRY); `rauc status mark-good` (after the gateway reached ready) resets it. A
# slot with TRIES tries and no mark-good is skipped: the other good slot boots.
grub_cfg() {
    local table=$1 tries=$2 console=$3 pp s i
    [ "$table" = gpt ] && pp=gpt || pp=msdos
    cat <<'EOF'
# wmbus-stream A/B boot (installed by image/build; RAUC's grub backend edits grubenv).
set timeout=0
regexp --set=1:bootdisk '^([^,]+),' "$root"
set envfile=($root)/EFI/BOOT/grubenv
set ORDER="A B"
set A_OK=0
set A_TRY=0
set B_OK=0
set B_TRY=0
set extra_cmdline=""
load_env --file $envfile
# Optional, per board or for a test: a GRUB fragment that may set extra_cmdline.
if [ -f ($root)/EFI/BOOT/local.cfg ]; then source ($root)/EFI/BOOT/local.cfg; fi
set slot=""
for s in $ORDER; do
  if [ -z "$slot" ]; then
EOF
    for s in A B; do
        printf '    if [ "$s" = "%s" -a "$%s_OK" = "1" ]; then\n' "$s" "$s"
        for ((i = 0; i < tries; i++)); do
            printf '      %s [ "$%s_TRY" = "%d" ]; then set %s_TRY=%d; set slot=%s\n' \
                "$([ $i = 0 ] && echo if || echo elif)" "$s" "$i" "$s" $((i + 1)) "$s"
        done
        printf '      fi\n    fi\n'
    done
    cat <<'EOF'
  fi
done
if [ -z "$slot" ]; then
  # Every good slot used its tries: start over with the first good one rather than stop.
  echo "wmbus-stream: no slot left with boot tries; starting over"
  set A_TRY=0
  set B_TRY=0
  for s in $ORDER; do
    if [ -z "$slot" -a "$s" = "A" -a "$A_OK" = "1" ]; then set slot=A; set A_TRY=1; fi
    if [ -z "$slot" -a "$s" = "B" -a "$B_OK" = "1" ]; then set slot=B; set B_TRY=1; fi
  done
  if [ -z "$slot" ]; then set slot=A; set A_TRY=1; fi
fi
save_env --file $envfile A_TRY B_TRY
echo "wmbus-stream: slot $slot (ORDER=$ORDER A_OK=$A_OK A_TRY=$A_TRY B_OK=$B_OK B_TRY=$B_TRY)"
set default=$slot
EOF
    printf 'set cmdline="ro rootfstype=squashfs rootwait console=tty0 console=%s panic=10"\n' "$console"
    for s in A B; do
        i=$([ $s = A ] && echo 2 || echo 3)
        cat <<EOF
menuentry "wmbus-stream slot $s" --id $s {
  linux (\$bootdisk,$pp$i)/boot/vmlinuz root=PARTUUID=$(part_uuid "$table" "rootfs_${s,,}") \$cmdline rauc.slot=$s \$extra_cmdline
  initrd (\$bootdisk,$pp$i)/boot/initrd.img
}
EOF
    done
}

# grubenv_file FILE: a fresh 1024-byte GRUB environment block: slot A good, B empty.
grubenv_file() {
    local body
    body=$'# GRUB Environment Block\nORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n'
    { printf '%s' "$body"; head -c $((1024 - ${#body})) /dev/zero | tr '\0' '#'; } > "$1"
}

# assemble_disk IMG gpt|dos ESP_IMG SLOT_IMG DATA_IMG ESP_MIB SLOT_MIB DATA_MIB: writes the
# partition table and the file systems at their offsets (no loop devices, no mounts).
assemble_disk() {
    local img=$1 table=$2 esp=$3 slot=$4 data=$5 esp_mib=$6 slot_mib=$7 data_mib=$8 starts
    rm -f "$img"
    truncate -s $((1 + esp_mib + 2 * slot_mib + data_mib + 1))M "$img"
    sfdisk_script "$table" "$esp_mib" "$slot_mib" "$data_mib" | sfdisk -q "$img" >/dev/null \
        || die "sfdisk could not write the partition table of $img"
    mapfile -t starts < <(sfdisk -J "$img" | python3 -c 'import json,sys; [print(p["start"]) for p in json.load(sys.stdin)["partitiontable"]["partitions"]]')
    [ ${#starts[@]} = 4 ] || die "unexpected partition table in $img"
    dd if="$esp" of="$img" bs=4M oflag=seek_bytes seek=$((starts[0] * 512)) conv=notrunc,sparse status=none
    dd if="$slot" of="$img" bs=4M oflag=seek_bytes seek=$((starts[1] * 512)) conv=notrunc,sparse status=none
    dd if="$data" of="$img" bs=4M oflag=seek_bytes seek=$((starts[3] * 512)) conv=notrunc,sparse status=none
}

# rauc_bundle SQUASHFS OUT.raucb CERT KEY DEBARCH VERSION BUILD WORKDIR: a signed RAUC bundle
# (verity format) that installs SQUASHFS into the other root slot of a DEBARCH gateway.
rauc_bundle() {
    local slot=$1 out=$2 cert=$3 key=$4 arch=$5 version=$6 build=$7 content=$8
    rm -rf "$content" && mkdir -p "$content"
    ln "$slot" "$content/rootfs.squashfs" 2>/dev/null || cp "$slot" "$content/rootfs.squashfs"
    printf '[update]\ncompatible=wmbus-stream-%s\nversion=%s\ndescription=wmbus-stream %s %s (%s)\nbuild=%s\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.squashfs\n' \
        "$arch" "$version" "$version" "$arch" "$(basename "$out" .raucb)" "$build" > "$content/manifest.raucm"
    rm -f "$out"
    rauc bundle --cert="$cert" --key="$key" "$content" "$out" > "$content.log" 2>&1 \
        || { cat "$content.log" >&2; die "rauc bundle failed"; }
    rm -rf "$content" "$content.log"
}
