#!/usr/bin/env bash
# Builds the vmlet test guest (a Debian kernel and a busybox initramfs) from Debian packages, without installing
# anything system-wide, into ${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/guest/<key>/:
#   vmlinux            uncompressed ELF kernel (PVH entry: boots faster under TCG than vmlinuz)
#   vmlinuz            the package's bzImage, as a fallback
#   initramfs.cpio.gz  busybox, the virtio-net and power-button modules, dhcpcd (DHCPv6) with its C library,
#                      the acpid configuration, /init
#   cmdline            the recommended kernel command line
#   info               package versions, the modules and how they are provided
# The .deb files are kept in <cache>/guest/debs; the three newest builds are kept.
# <key> hashes this script, the guest's init files and the package versions, so any change rebuilds; a finished
# build is found and reused. Logs go to stderr; the last line on stdout is the output directory:
#   dir=$(images/guest/build.sh)
# Environment: VMLET_CACHE_DIR (cache root), VMLET_GUEST_REBUILD=1 (build even when cached).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/guest

# Loaded by /init with insmod in this order; each one's dependencies must come before it. A module the kernel has
# built in is left out (and recorded in `info`). virtio_*, failover: the NIC. evdev (the /dev/input/event* nodes)
# and button (the ACPI power button, an input device sending KEY_POWER): what acpid needs to see a power-button
# press; in Debian's 6.1 kernel both are modules (CONFIG_INPUT_EVDEV=m, CONFIG_ACPI_BUTTON=m) without dependencies.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio failover net_failover
  virtio_net evdev button)
cmdline="console=ttyS0 quiet panic=-1"

log() { echo "guest: $*" >&2; }
die() {
  echo "guest: error: $*" >&2
  exit 1
}

for tool in apt-cache apt-get dpkg-deb xz gzip cpio modinfo flock sha256sum grep; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup)"
done

# Candidate versions. apt-cache can take a second or two per call when apt keeps no binary cache (as in Debian's
# container images), so the answer is remembered until the package lists or the apt configuration change.
# field PACKAGE FIELD < "apt-cache show" output
field() {
  awk -v pkg="$1" -v field="$2:" '
    /^Package:/ { cur = $2 }
    cur == pkg && $1 == field { sub(/^[^:]*: */, ""); print; exit }'
}
resolve() {
  local meta
  meta=$(apt-cache show --no-all-versions linux-image-amd64 busybox-static dhcpcd-base libc6 2>/dev/null) || true
  kernel_pkg=$(field linux-image-amd64 Depends <<<"$meta" | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1) || true
  [[ -n $kernel_pkg ]] ||
    die "cannot resolve the kernel package of linux-image-amd64 (apt lists missing? run apt-get update)"
  busybox_ver=$(field busybox-static Version <<<"$meta")
  dhcpcd_ver=$(field dhcpcd-base Version <<<"$meta")
  libc_ver=$(field libc6 Version <<<"$meta")
  kernel_ver=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null | field "$kernel_pkg" Version) || true
  local v
  for v in kernel_ver busybox_ver dhcpcd_ver libc_ver; do
    [[ -n ${!v} ]] || die "no candidate version for ${v%_ver} (apt lists missing? run apt-get update)"
  done
}
mkdir -p "$cache_root"
apt_stamp=$(stat -c '%n %s %Y' /var/lib/apt/lists /var/lib/apt/lists/*Packages* /etc/apt /etc/apt/* \
  /etc/apt/*/* 2>/dev/null | sha256sum | cut -c1-16)
resolved=$cache_root/.resolved-$apt_stamp
if [[ -s $resolved ]]; then
  read -r kernel_pkg kernel_ver busybox_ver dhcpcd_ver libc_ver <"$resolved"
fi
if [[ -z ${libc_ver:-} ]]; then
  resolve
  echo "$kernel_pkg $kernel_ver $busybox_ver $dhcpcd_ver $libc_ver" >"$cache_root/.tmp.$$"
  find "$cache_root" -maxdepth 1 -name '.resolved-*' -exec rm -f {} +
  mv "$cache_root/.tmp.$$" "$resolved"
fi

key=$(
  {
    cat "$here/build.sh" "$here/init" "$here/udhcpc.script" "$here/dhcpcd.conf" "$here/dhcpcd.script" \
      "$here/power-button.script"
    echo "$kernel_pkg=$kernel_ver busybox-static=$busybox_ver dhcpcd-base=$dhcpcd_ver libc6=$libc_ver"
  } | sha256sum | cut -c1-16
)
out=$cache_root/$key

if [[ -d $out && ${VMLET_GUEST_REBUILD:-0} != 1 ]]; then
  log "cached: $kernel_pkg $kernel_ver, busybox $busybox_ver, dhcpcd $dhcpcd_ver"
  echo "$out"
  exit 0
fi

exec 9>"$cache_root/.lock"
flock 9 # one build at a time; a build that finishes while we wait is reused below
if [[ -d $out && ${VMLET_GUEST_REBUILD:-0} != 1 ]]; then
  echo "$out"
  exit 0
fi

# Left over by a build that was killed (every build holds the lock).
find "$cache_root" -mindepth 1 -maxdepth 1 \( -name '.build.*' -o -name '.dl.*' -o -name '.tmp.*' \) -exec rm -rf {} +
tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# first_of PATH...: prints the first PATH that exists.
first_of() {
  local p
  for p; do
    [[ -e $p ]] && echo "$p" && return 0
  done
  return 1
}

# fetch PACKAGE VERSION: prints the path of the .deb, downloaded once into the cache.
fetch() {
  local dir=$cache_root/debs/$1_$2 dl
  if ! compgen -G "$dir/*.deb" >/dev/null; then
    log "downloading $1 $2"
    dl=$(mktemp -d "$cache_root/.dl.XXXXXX")
    local -a opts=()
    # As root apt drops to the _apt user for downloads, which cannot write to our directory.
    ((EUID != 0)) || opts=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get download -qq "${opts[@]}" "$1=$2" >&2); then
      rm -rf "$dl"
      die "apt-get download $1=$2 failed"
    fi
    rm -rf "$dir"
    mkdir -p "$cache_root/debs"
    mv -T "$dl" "$dir"
    # Older versions of the same package are of no further use.
    find "$cache_root/debs" -mindepth 1 -maxdepth 1 -name "$1_*" ! -name "$1_$2" -exec rm -rf {} +
  fi
  compgen -G "$dir/*.deb" | head -n 1
}

kernel_deb=$(fetch "$kernel_pkg" "$kernel_ver")
busybox_deb=$(fetch busybox-static "$busybox_ver")
dhcpcd_deb=$(fetch dhcpcd-base "$dhcpcd_ver")
libc_deb=$(fetch libc6 "$libc_ver")

log "unpacking $kernel_pkg $kernel_ver"
mkdir "$tmp/kernel" "$tmp/busybox" "$tmp/dhcpcd" "$tmp/libc" "$tmp/out"
dpkg-deb -x "$kernel_deb" "$tmp/kernel"
dpkg-deb -x "$busybox_deb" "$tmp/busybox"
dpkg-deb -x "$dhcpcd_deb" "$tmp/dhcpcd"
dpkg-deb -x "$libc_deb" "$tmp/libc"

vmlinuz=$(compgen -G "$tmp/kernel/boot/vmlinuz-*" | head -n 1) || die "no /boot/vmlinuz-* in $kernel_deb"
kver=${vmlinuz##*/vmlinuz-}
moddir=
for d in "$tmp/kernel/lib/modules/$kver" "$tmp/kernel/usr/lib/modules/$kver"; do
  [[ -d $d ]] && moddir=$d
done
[[ -n $moddir ]] || die "no modules directory for $kver in $kernel_deb"
cp "$vmlinuz" "$tmp/out/vmlinuz"

# vmlinux: the bzImage carries the kernel as an xz stream. Try each xz magic (FD '7zXZ' 00) until one
# decompresses to an ELF file, as the kernel's scripts/extract-vmlinux does.
log "extracting vmlinux"
found=0
while IFS=: read -r offset _; do
  # xz stops after the stream, so tail may die of SIGPIPE: only the result counts.
  tail -c "+$((offset + 1))" "$vmlinuz" | xz -dc --single-stream >"$tmp/vmlinux" 2>/dev/null || true
  if [[ $(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
    found=1
    break
  fi
done < <(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" || true)
((found)) || die "no xz-compressed ELF kernel found in $vmlinuz"
mv "$tmp/vmlinux" "$tmp/out/vmlinux"

# --- initramfs --------------------------------------------------------------------------------------------------
root=$tmp/root
mkdir -p "$root"/{bin,etc,proc,sys,run,tmp,root,usr,lib/modules}
ln -s bin "$root/sbin"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"

bb=$tmp/busybox/bin/busybox
[[ -x $bb ]] || die "no bin/busybox in $busybox_deb"
cp "$bb" "$root/bin/busybox"
while read -r applet; do
  [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done < <("$bb" --list)
for applet in sh udhcpc ip insmod ping nc mount acpid poweroff; do
  [[ -e $root/bin/$applet ]] || die "busybox $busybox_ver lacks the $applet applet"
done

install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/etc/udhcpc.script"
# dhcpcd, the DHCPv6 client (busybox-static has no udhcpc6), with the C library it links against. It needs a user
# to drop privileges to, with an existing home to chroot into.
dhcpcd_bin=$(first_of "$tmp"/dhcpcd/{usr/,}sbin/dhcpcd) || die "no sbin/dhcpcd in $dhcpcd_deb"
cp "$dhcpcd_bin" "$root/bin/dhcpcd"
install -m 0644 "$here/dhcpcd.conf" "$root/etc/dhcpcd.conf"
install -m 0755 "$here/dhcpcd.script" "$root/etc/dhcpcd.script"
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/lib64" "$root/var/lib/dhcpcd" "$root/usr/lib/dhcpcd"
ln -s ../run "$root/var/run"
for lib in libc.so.6 ld-linux-x86-64.so.2; do
  f=$(first_of "$tmp"/libc/{usr/,}lib/x86_64-linux-gnu/"$lib") || die "no $lib in $libc_deb"
  cp -L "$f" "$root/lib/x86_64-linux-gnu/$lib"
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
# acpid (started by /init) maps input events to actions: the map turns a press (value 1) of KEY_POWER (type EV_KEY
# 0x01, code 116) into the event "button/power", the action file runs /etc/acpi/power-button for it. Explicit, so
# that nothing depends on the defaults compiled into busybox (which would also map the lid switch).
mkdir -p "$root/etc/acpi"
install -m 0755 "$here/power-button.script" "$root/etc/acpi/power-button"
printf '%s\n' '# type type-hex code code-dec value event' 'EV_KEY 01 KEY_POWER 116 1 button/power' >"$root/etc/acpi.map"
printf '%s\n' '# event action (relative to /etc/acpi)' 'button/power power-button' >"$root/etc/acpid.conf"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'dhcpcd:x:100:65534:dhcpcd:/usr/lib/dhcpcd:/bin/false' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"

cat >"$root/bin/vmlet-hello" <<'EOF'
#!/bin/sh
echo "VMLET-GUEST hello hostname=$(hostname)"
EOF
chmod 0755 "$root/bin/vmlet-hello"
# The two ends of a throughput transfer (vmlet.send, vmlet.discard): nc -e makes the socket their stdout or stdin.
printf '%s\n' '#!/bin/sh' 'exec dd if=/dev/zero bs=256k 2>/dev/null' >"$root/bin/vmlet-zeros"
printf '%s\n' '#!/bin/sh' 'exec dd of=/dev/null bs=256k 2>/dev/null' >"$root/bin/vmlet-discard"
chmod 0755 "$root/bin/vmlet-zeros" "$root/bin/vmlet-discard"

# Modules: copy each (uncompressed), skip built-ins, and check that the load order satisfies the dependencies.
loaded=()
builtin=()
: >"$root/etc/vmlet-modules"
for m in "${modules[@]}"; do
  if grep -Eq "/${m}\.ko$" "$moddir/modules.builtin"; then
    builtin+=("$m")
    continue
  fi
  ko=$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" \) | head -n 1)
  [[ -n $ko ]] || die "module $m is neither built into $kver nor shipped as a module"
  case $ko in
    *.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *) cp "$ko" "$root/lib/modules/$m.ko" ;;
  esac
  IFS=, read -ra deps <<<"$(modinfo -F depends "$root/lib/modules/$m.ko")"
  for dep in "${deps[@]}"; do
    [[ " ${loaded[*]} ${builtin[*]} " == *" $dep "* ]] || die "module $m needs $dep, which is not loaded before it"
  done
  loaded+=("$m")
  echo "$m" >>"$root/etc/vmlet-modules"
done

# A newc cpio entry without data (directory or device node), written by hand so that /dev/console exists from the
# start (the kernel opens it for init's stdio before /init runs) without needing root to mknod.
# newc_entry INO MODE RDEVMAJOR RDEVMINOR NAME
newc_entry() {
  local name=$5 namesize=$((${#5} + 1)) pad
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$1" "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
  printf '%s\0' "$name"
  pad=$(((4 - (110 + namesize) % 4) % 4))
  head -c "$pad" /dev/zero
}

log "packing initramfs (${#loaded[@]} modules, built in: ${builtin[*]:-none})"
find "$root" -exec touch -h -d @0 {} +
{
  newc_entry 1 $((0040755)) 0 0 dev
  newc_entry 2 $((0020600)) 5 1 dev/console
  newc_entry 0 0 0 0 'TRAILER!!!'
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet)
} | gzip -9 -n >"$tmp/out/initramfs.cpio.gz"

echo "$cmdline" >"$tmp/out/cmdline"
cat >"$tmp/out/info" <<EOF
kernel_package=$kernel_pkg
kernel_package_version=$kernel_ver
kernel_release=$kver
busybox_version=$busybox_ver
dhcpcd_version=$dhcpcd_ver
libc_version=$libc_ver
modules=${loaded[*]}
modules_builtin=${builtin[*]}
EOF

rm -rf "$out"
mv -T "$tmp/out" "$out"
# Keep the three newest builds: older ones belong to earlier versions of this script or of the packages.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' \
  -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf
log "built $out (vmlinux $(du -h --apparent-size "$out/vmlinux" | cut -f1)," \
  "initramfs $(du -h --apparent-size "$out/initramfs.cpio.gz" | cut -f1))"
echo "$out"
