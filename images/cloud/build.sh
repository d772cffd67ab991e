#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) cloud image from Debian packages, bootable under BIOS (SeaBIOS) and UEFI (OVMF), and
# the same disk as a KubeVirt containerDisk, into ${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/cloud/<key>/:
#   disk.qcow2             the disk, a compressed qcow2 (2 GiB virtual): an MBR with an ESP and an ext4 root
#   containerdisk-oci/     the containerDisk as an OCI image layout (tag `latest`): FROM scratch, one layer holding
#                          /disk/disk.qcow2, owned by 107:107 (the qemu user of KubeVirt's launcher), mode 0440
#   containerdisk.oci.tar  the same layout as an OCI archive (`oci-archive:` for skopeo, podman, buildah)
#   info                   versions of the main packages and of the boot loaders, the kernel, the root's UUID
#   packages               every package in the image with its version
# The .deb files are kept in <cache>/cloud/debs; the two newest builds are kept.
# <key> hashes this script, the files it installs and the versions of the main packages and of the host's boot
# loader packages, so any change rebuilds; a finished build is found and reused. Logs go to stderr; the last line on
# stdout is the output directory:
#   dir=$(images/cloud/build.sh)
# Needs root (chroot, a loop mount), and the packages of scripts/setup. Environment: VMLET_CACHE_DIR (cache root),
# VMLET_CLOUD_REBUILD=1 (build even when cached), VMLET_DEBIAN_MIRROR, VMLET_DEBIAN_SECURITY_MIRROR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/cloud
mirror=${VMLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${VMLET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# What the image holds on top of debootstrap's minbase. dbus: hostnamectl, which cloud-init sets the hostname with.
# systemd-resolved: the DNS servers networkd learns over DHCP reach /etc/resolv.conf. cloud-guest-utils: growpart,
# so the root grows to the size of the VM's disk. sudo: the sudo rules cloud-init writes for its users.
packages=(linux-image-cloud-amd64 systemd systemd-sysv systemd-resolved udev dbus cloud-init cloud-guest-utils
  openssh-server qemu-guest-agent sudo e2fsprogs iproute2 netbase)
# The kernel's command line, for both boot loaders.
cmdline="ro console=ttyS0"
# Disk layout (MiB): partition 1 the ESP (FAT), partition 2 the root (ext4, active, last so that growpart can grow
# it). The MBR's boot code starts the active partition's extlinux under BIOS; OVMF finds EFI/BOOT/BOOTX64.EFI on the
# ESP (type 0xEF is an ESP on an MBR disk too), a standalone GRUB that reads the kernel from the root.
disk_mib=2048
esp_start_mib=1
esp_mib=32
root_start_mib=$((esp_start_mib + esp_mib))
# extlinux cannot read ext4 with 64-bit block numbers; GRUB 2.06 refuses metadata_csum_seed.
ext4_features=^64bit,^metadata_csum_seed,^orphan_file
# Modules of the standalone GRUB: MBR partitions, ext4, finding the root by UUID, booting Linux, and the firmware's
# framebuffer for the kernel (a graphical console, where the VM has a display).
grub_modules="part_msdos part_gpt ext2 fat search search_fs_uuid linux normal echo test efi_gop"
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd

log() { echo "cloud: $*" >&2; }
die() {
  echo "cloud: error: $*" >&2
  exit 1
}

((EUID == 0)) || die "builds a root filesystem in a chroot and mounts it: run as root"
for tool in apt-cache debootstrap sfdisk mkfs.ext4 mkfs.vfat mcopy mmd extlinux grub-mkstandalone qemu-img buildah \
  unshare losetup flock sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup)"
done
mbr_bin=/usr/lib/EXTLINUX/mbr.bin
[[ -f $mbr_bin ]] || die "no $mbr_bin (run scripts/setup)"
[[ -d /usr/lib/grub/x86_64-efi ]] || die "no /usr/lib/grub/x86_64-efi (run scripts/setup)"

# Candidate versions of the main packages, remembered until the package lists or the apt configuration change
# (apt-cache can take seconds per call without apt's binary cache).
# field PACKAGE FIELD < "apt-cache show" output
field() {
  awk -v pkg="$1" -v field="$2:" '
    /^Package:/ { cur = $2 }
    cur == pkg && $1 == field { sub(/^[^:]*: */, ""); print; exit }'
}
versioned=(systemd cloud-init openssh-server qemu-guest-agent libc6)
resolve() {
  local meta p v
  meta=$(apt-cache show --no-all-versions linux-image-cloud-amd64 "${versioned[@]}" 2>/dev/null) || true
  kernel_pkg=$(field linux-image-cloud-amd64 Depends <<<"$meta" | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1) ||
    true
  [[ -n $kernel_pkg ]] ||
    die "cannot resolve the kernel package of linux-image-cloud-amd64 (apt lists missing? run apt-get update)"
  kernel_ver=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null | field "$kernel_pkg" Version) || true
  versions="$kernel_pkg=$kernel_ver"
  for p in "${versioned[@]}"; do
    v=$(field "$p" Version <<<"$meta")
    [[ -n $v ]] || die "no candidate version for $p (apt lists missing? run apt-get update)"
    versions+=" $p=$v"
  done
}
mkdir -p "$cache_root"
apt_stamp=$(stat -c '%n %s %Y' /var/lib/apt/lists /var/lib/apt/lists/*Packages* /etc/apt /etc/apt/* \
  /etc/apt/*/* 2>/dev/null | sha256sum | cut -c1-16)
resolved=$cache_root/.resolved-$apt_stamp
versions=
if [[ -s $resolved ]]; then
  read -r versions <"$resolved"
fi
if [[ -z $versions ]]; then
  resolve
  echo "$versions" >"$cache_root/.tmp.$$"
  find "$cache_root" -maxdepth 1 -name '.resolved-*' -exec rm -f {} +
  mv "$cache_root/.tmp.$$" "$resolved"
fi
# The boot loaders come from the host's packages.
# shellcheck disable=SC2016 # dpkg-query's format
loaders=$(dpkg-query -W -f '${Package}=${Version} ' extlinux grub-efi-amd64-bin)

key=$(
  {
    cat "$here/build.sh" "$here/cloud.cfg"
    echo "$versions $loaders $mirror $security_mirror"
  } | sha256sum | cut -c1-16
)
out=$cache_root/$key

if [[ -f $out/info && ${VMLET_CLOUD_REBUILD:-0} != 1 ]]; then
  log "cached: $versions"
  echo "$out"
  exit 0
fi

exec 9>"$cache_root/.lock"
flock 9 # one build at a time; a build that finishes while we wait is reused below
if [[ -f $out/info && ${VMLET_CLOUD_REBUILD:-0} != 1 ]]; then
  echo "$out"
  exit 0
fi

started=$SECONDS
# Left over by a build that was killed (every build holds the lock). Its mounts lived in mount namespaces that
# ended with it; --one-file-system still keeps rm out of any mount.
find "$cache_root" -mindepth 1 -maxdepth 1 -name '.build.*' -exec rm -rf --one-file-system {} +
tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
debs=$cache_root/debs
mkdir -p "$debs/partial"
buildah=(buildah --storage-driver vfs --root "$tmp/storage" --runroot "$tmp/runroot")
ctr=
cleanup() {
  local dev
  [[ -z $ctr ]] || "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true
  # Loop devices are not bound to the mount namespace that used them.
  for dev in $(losetup -j "$tmp/disk.raw" -O NAME -n 2>/dev/null); do
    losetup -d "$dev" 2>/dev/null || true
  done
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
# A signal ends the build through the EXIT trap, which cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in a mount namespace of its own, so that every mount it makes ends with it, however it ends.
private_mounts() {
  unshare --mount --propagation private -- "$@"
}

# Runs a command chrooted in the root filesystem $1, with /proc, /sys, /dev and the .deb cache mounted.
in_root() {
  local root=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner shell
  private_mounts sh -c '
    root=$1 debs=$2; shift 2
    mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && mount --rbind /dev "$root/dev" &&
      mount --bind "$debs" "$root/var/cache/apt/archives" || exit 1
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"
  ' in_root "$root" "$debs" "$@"
}

# --- root filesystem --------------------------------------------------------------------------------------------
root=$tmp/root
log "debootstrap --variant=minbase bookworm"
private_mounts debootstrap --variant=minbase --cache-dir="$debs" bookworm "$root" "$mirror" >"$tmp/debootstrap.log" ||
  {
    tail -n 30 "$tmp/debootstrap.log" >&2
    [[ ! -f $root/debootstrap/debootstrap.log ]] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  }

uuid=$(cat /proc/sys/kernel/random/uuid)
# Before the kernel: initramfs-tools adds fsck for the root only when /etc/fstab names it.
printf '%s\n' "UUID=$uuid / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
echo debian >"$root/etc/hostname"
printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' >"$root/etc/hosts"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -f "$root/etc/apt/sources.list"
# Documentation, manual pages and translations: nobody reads them in a test guest.
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
  'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
  'path-exclude /usr/share/lintian/*' >"$root/etc/dpkg/dpkg.cfg.d/90vmlet-excludes"
# Installed services must not start in the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
rm -f "$root/etc/resolv.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# apt downloads into the cache mounted from the host as root, not as _apt, whose uid the host may not share.
apt_opts=(-y -qq -o Dpkg::Use-Pty=0 -o APT::Sandbox::User=root -o APT::Install-Recommends=false)

log "apt-get install ${packages[*]}"
{
  in_root "$root" apt-get "${apt_opts[@]}" update &&
    in_root "$root" apt-get "${apt_opts[@]}" dist-upgrade &&
    in_root "$root" apt-get "${apt_opts[@]}" install "${packages[@]}"
} >"$tmp/apt.log" 2>&1 || {
  tail -n 40 "$tmp/apt.log" >&2
  die "apt-get in the chroot failed"
}

kver=$(compgen -G "$root/boot/vmlinuz-*" | head -n 1) || die "no kernel in /boot"
kver=${kver##*/vmlinuz-}
[[ -f $root/boot/initrd.img-$kver ]] || die "no /boot/initrd.img-$kver"

# cloud-init: the datasources, and what this image does at first boot.
install -m 0644 "$here/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90_vmlet.cfg"
echo 'LANG=C.UTF-8' >"$root/etc/default/locale"
# cloud-init writes the network configuration for systemd-networkd (there is neither ifupdown nor netplan).
in_root "$root" systemctl enable --quiet systemd-networkd.service systemd-resolved.service >&2
# qemu-guest-agent is started by udev once its virtio-serial port exists (the unit has no [Install] section): it only
# must not be masked.
in_root "$root" systemctl unmask --quiet qemu-guest-agent.service >&2

# Each instance makes its own identity at first boot: host keys (cloud-init), machine-id (systemd).
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root/usr/sbin/policy-rc.d"
# systemd-resolved made /etc/resolv.conf its link; a copy of the host's would be wrong in a guest.
[[ -L $root/etc/resolv.conf ]] || ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# shellcheck disable=SC2016 # dpkg-query's format
in_root "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$tmp/packages"
# What debootstrap installed before the dpkg excludes applied, and what apt and dpkg leave behind. (No apt-get
# clean in the chroot: it would empty the host's .deb cache mounted there.)
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale" "$root/usr/share/lintian" \
  -mindepth 1 -delete 2>/dev/null || true
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/* "$root"/etc/*- \
  "$root/debootstrap"
find "$root/var/log" -type f -delete

# --- boot loaders -----------------------------------------------------------------------------------------------
# BIOS: extlinux in /boot/extlinux of the root, started by the MBR's boot code.
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=UUID=$uuid $cmdline
EOF
# EFI: a standalone GRUB (its configuration and modules inside the one file) that finds the root by its UUID.
cat >"$tmp/grub.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $uuid
linux /boot/vmlinuz-$kver root=UUID=$uuid $cmdline
initrd /boot/initrd.img-$kver
boot
EOF
# shellcheck disable=SC2086 # a list of modules
grub-mkstandalone -O x86_64-efi -o "$tmp/BOOTX64.EFI" --modules="$grub_modules" --install-modules="$grub_modules" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=$tmp/grub.cfg"

# --- disk -------------------------------------------------------------------------------------------------------
log "making the disk (kernel $kver, root UUID $uuid)"
img=$tmp/disk.raw
truncate -s "${disk_mib}M" "$img"
sfdisk --quiet "$img" <<EOF
label: dos
start=$((esp_start_mib * 2048)), size=$((esp_mib * 2048)), type=ef
start=$((root_start_mib * 2048)), type=83, bootable
EOF
root_bytes=$(((disk_mib - root_start_mib) * 1024 * 1024))
mkfs.ext4 -q -F -O "$ext4_features" -U "$uuid" -L root -d "$root" -E "offset=$((root_start_mib * 1024 * 1024))" \
  "$img" "$((root_bytes / 1024))k"
# extlinux writes its loader into the mounted filesystem and the partition's boot sector; the loop device
# (autoclear) goes with the mount namespace.
# shellcheck disable=SC2016 # expanded by the inner shell
private_mounts sh -c '
  mkdir -p "$1" && mount -o "loop,offset=$3,sizelimit=$4" "$2" "$1" || exit 1
  extlinux --install "$1/boot/extlinux"; rc=$?
  umount "$1" || rc=1
  exit $rc
' extlinux "$tmp/mnt" "$img" "$((root_start_mib * 1024 * 1024))" "$root_bytes" >"$tmp/extlinux.log" 2>&1 || {
  cat "$tmp/extlinux.log" >&2
  die "extlinux --install failed"
}
dd if="$mbr_bin" of="$img" bs=440 count=1 conv=notrunc status=none
truncate -s "${esp_mib}M" "$tmp/esp.img"
mkfs.vfat -n EFI "$tmp/esp.img" >/dev/null
mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$tmp/esp.img" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$tmp/esp.img" of="$img" bs=1M seek="$esp_start_mib" conv=notrunc status=none

mkdir "$tmp/out"
log "converting to a compressed qcow2"
qemu-img convert -c -O qcow2 "$img" "$tmp/out/disk.qcow2"
rm -f "$img"

# --- containerDisk ----------------------------------------------------------------------------------------------
# KubeVirt's format: FROM scratch, the disk at /disk/, readable by the qemu user (107) of KubeVirt's launcher. The
# storage is private to this build and goes with it.
log "containerDisk"
ctr=$("${buildah[@]}" from --quiet scratch)
"${buildah[@]}" copy --quiet --chown 107:107 --chmod 0440 "$ctr" "$tmp/out/disk.qcow2" /disk/disk.qcow2 >/dev/null
"${buildah[@]}" config --os linux --arch amd64 \
  --label "org.opencontainers.image.title=vmlet-cloud-disk" \
  --label "org.opencontainers.image.description=Debian 12 cloud image (BIOS and EFI) as a KubeVirt containerDisk" \
  "$ctr"
"${buildah[@]}" commit --quiet --rm --format oci --timestamp 0 "$ctr" vmlet-cloud-disk:latest >/dev/null
ctr=
"${buildah[@]}" push --quiet vmlet-cloud-disk:latest "oci:$tmp/out/containerdisk-oci:latest" >&2
# An OCI archive is a tar of the layout.
tar -C "$tmp/out/containerdisk-oci" -cf "$tmp/out/containerdisk.oci.tar" oci-layout index.json blobs

mv "$tmp/packages" "$tmp/out/packages"
cat >"$tmp/out/info" <<EOF
versions=$versions
boot_loaders=$loaders
kernel_release=$kver
root_uuid=$uuid
cmdline=root=UUID=$uuid $cmdline
disk_sha256=$(sha256sum "$tmp/out/disk.qcow2" | cut -d' ' -f1)
ovmf_code=$ovmf_code
EOF

rm -rf "$out"
mv -T "$tmp/out" "$out"
# Keep the two newest builds, and only the .debs this one used.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' \
  -printf '%T@ %p\n' | sort -rn | tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
awk '{ v = $2; gsub(/:/, "%3a", v); print $1 "_" v "_" }' "$out/packages" >"$tmp/used"
find "$debs" -maxdepth 1 -name '*.deb' -printf '%f\n' | grep -v -F -f "$tmp/used" |
  sed "s#^#$debs/#" | xargs -r rm -f || true
log "built $out in $((SECONDS - started)) s (disk.qcow2 $(du -h --apparent-size "$out/disk.qcow2" | cut -f1))"
echo "$out"
