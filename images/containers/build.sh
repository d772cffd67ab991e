#!/usr/bin/env bash
# Builds vmlet's two container images with no container engine and no registry: root filesystems made from Debian 12
# with debootstrap and apt in a chroot, assembled into OCI images with buildah.
#
#   images/containers/build.sh BIN_DIR
#
# BIN_DIR holds the release programs vmlet-launcher, vmlet-driver and vmlet-handler. The images land in buildah's
# containers-storage (vfs driver) as localhost/vmlet/launcher and localhost/vmlet/handler, each tagged with vmlet's
# version and `latest`, and as OCI archives in the output directory, which is the last line on stdout. Logs go to
# stderr. Needs root (chroot, mounts), debootstrap and buildah.
#
# Cached in ${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/containers: the debootstrap base (made once), and each image's
# root filesystem, made again when this script or the files it installs change. VMLET_IMAGES_REFRESH=1 makes
# everything again, for Debian's latest updates.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:?usage: build.sh BIN_DIR}" && pwd)
cache=${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/containers
out=$cache/out
mirror=${VMLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${VMLET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
buildah=(buildah --storage-driver vfs)

# What `vmlet-launcher run` needs in a pod: QEMU, qemu-img (containerDisk overlays), OVMF (UEFI guests), libvirt's QEMU
# driver (embedded in vmlet-driver), nft and tc; and a static busybox, which the controller's holder mode copies into
# the containerDisk holders (images without a shell).
launcher_packages=(qemu-system-x86 qemu-utils ovmf libvirt-daemon-driver-qemu libvirt0 nftables iproute2 busybox-static)
# The handler image takes only files from this root: its program's libraries and the CA certificates.
handler_packages=(ca-certificates)

log() { echo "images: $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "images/containers/build.sh: chroots and mounts: run as root" >&2; exit 1; }
for program in vmlet-launcher vmlet-driver vmlet-handler; do
  [ -x "$bin/$program" ] || { echo "images/containers/build.sh: no $bin/$program" >&2; exit 1; }
done
mkdir -p "$cache" "$out"
exec 9>"$cache/lock"
flock 9
version=$("$bin/vmlet-launcher" --version | awk '{print $2}')
if [ "${VMLET_IMAGES_REFRESH:-}" = 1 ]; then
  rm -rf "$cache/base-bookworm" "$cache"/*-rootfs "$cache"/*-rootfs.key
fi

# Runs a command chrooted in the root filesystem $1, with /proc and /dev mounted in a mount namespace of its own:
# the mounts end with the command, however it ends.
in_root() {
  local root=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --mount --propagation private -- sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 1
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"
  ' in_root "$root" "$@"
}

# Debian 12 minbase, made once and never changed afterwards: each root filesystem starts as a copy of it.
base=$cache/base-bookworm
if [ ! -d "$base" ]; then
  log "debootstrap --variant=minbase bookworm (a few minutes)"
  rm -rf "$base.tmp"
  debootstrap --variant=minbase bookworm "$base.tmp" "$mirror" >&2
  mv "$base.tmp" "$base"
fi

# The root filesystem $1 ($cache/$1): the base with the packages $2... installed and up to date, without recommends,
# documentation, manual pages, translations, apt's lists and caches, or logs. Kept while its recipe (these
# functions, the files they install, the package list) is unchanged.
rootfs() {
  local name=$1
  shift
  local dir=$cache/$name key
  key=$({
    declare -f rootfs in_root slim
    cat "$here/excludes.cfg" "$here/debian.sources"
    echo "$mirror $security_mirror $*"
  } | sha256sum | cut -c1-16)
  if [ -d "$dir" ] && [ "$(cat "$dir.key" 2>/dev/null)" = "$key" ]; then
    return
  fi
  log "$name: $* (apt in a chroot)"
  rm -rf "$dir" "$dir.tmp" "$dir.key"
  cp -a "$base" "$dir.tmp"
  install -m 0644 "$here/excludes.cfg" "$dir.tmp/etc/dpkg/dpkg.cfg.d/90vmlet-excludes"
  sed -e "s#SECURITY_MIRROR#$security_mirror#" -e "s#MIRROR#$mirror#" "$here/debian.sources" \
    > "$dir.tmp/etc/apt/sources.list.d/debian.sources"
  rm -f "$dir.tmp/etc/apt/sources.list"
  # No package may start a service in a chroot.
  printf '#!/bin/sh\nexit 101\n' > "$dir.tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$dir.tmp/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$dir.tmp/etc/resolv.conf"
  in_root "$dir.tmp" apt-get update -qq >&2
  in_root "$dir.tmp" apt-get -y -qq -o Dpkg::Use-Pty=0 dist-upgrade >&2
  in_root "$dir.tmp" apt-get -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends install "$@" >&2
  in_root "$dir.tmp" apt-get clean
  rm "$dir.tmp/usr/sbin/policy-rc.d"
  slim "$dir.tmp"
  mv "$dir.tmp" "$dir"
  echo "$key" > "$dir.key"
}

# Removes what the base had installed before the dpkg excludes applied, and what apt and dpkg leave behind.
slim() {
  local root=$1
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale" "$root/usr/share/lintian" \
    -mindepth 1 -delete 2>/dev/null || true
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/*
  find "$root/var/log" -type f -delete
  # The container runtime provides these.
  : > "$root/etc/resolv.conf"
  : > "$root/etc/hostname"
}

# The programs without their debug information (line tables, a few times the code's size), which no pod reads.
programs=$(mktemp -d)
# A build that fails leaves no working container behind.
trap 'rm -rf "$programs"; "${buildah[@]}" rm vmlet-launcher-build vmlet-handler-build >/dev/null 2>&1 || true' EXIT
for program in vmlet-launcher vmlet-driver vmlet-handler; do
  strip --strip-debug -o "$programs/$program" "$bin/$program"
done

rootfs launcher-rootfs "${launcher_packages[@]}"
rootfs handler-build-rootfs "${handler_packages[@]}"

# Replaces the image $1 (both tags) by the working container $2, and writes its OCI archive.
commit() {
  local image=$1 ctr=$2 archive
  "${buildah[@]}" rmi -f "$image:$version" "$image:latest" >/dev/null 2>&1 || true
  "${buildah[@]}" commit --quiet --rm "$ctr" "$image:$version" >/dev/null
  "${buildah[@]}" tag "$image:$version" "$image:latest"
  archive=$out/${image//\//-}-$version.oci.tar
  rm -f "$archive"
  "${buildah[@]}" push --quiet "$image:$version" "oci-archive:$archive:$image:$version" >&2
  log "$image:$version: $(($(stat -c %s "$archive") / 1000000)) MB compressed ($archive)"
}

# The OCI labels of the image $1, described by $2.
labels() {
  image_labels=(
    --label "org.opencontainers.image.title=$1"
    --label "org.opencontainers.image.description=$2"
    --label "org.opencontainers.image.version=$version"
  )
}

# The launcher: the Debian root filesystem, with the two programs added.
launcher_root=$cache/launcher-rootfs
# shellcheck disable=SC2016 # dpkg-query's format
qemu_version=$(chroot "$launcher_root" dpkg-query -W -f '${Version}' qemu-system-x86)
# shellcheck disable=SC2016
libvirt_version=$(chroot "$launcher_root" dpkg-query -W -f '${Version}' libvirt-daemon-driver-qemu)
"${buildah[@]}" rm vmlet-launcher-build >/dev/null 2>&1 || true
ctr=$("${buildah[@]}" from --name vmlet-launcher-build scratch)
mnt=$("${buildah[@]}" mount "$ctr")
cp -a "$launcher_root/." "$mnt/"
# The pod's run and cache directories are mounted here (/var/run is a link to /run).
mkdir -p "$mnt/run/vmlet" "$mnt/var/cache/vmlet/qemu"
# libvirt's QEMU driver refuses to start unless these exist, even though it runs QEMU as root; without
# libvirt-daemon-system, whose scripts would make them, nothing else does.
chroot "$mnt" groupadd --system kvm
chroot "$mnt" groupadd --system libvirt-qemu
chroot "$mnt" useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
  -g libvirt-qemu -G kvm libvirt-qemu
rm -f "$mnt"/etc/{passwd,group,shadow,gshadow}-
"${buildah[@]}" umount "$ctr" >/dev/null
"${buildah[@]}" copy --quiet --chmod 0755 "$ctr" "$programs/vmlet-launcher" "$programs/vmlet-driver" /usr/local/bin/ \
  >/dev/null
labels vmlet-launcher "vmlet's VM pod: vmlet-launcher and vmlet-driver with QEMU and libvirt's QEMU driver"
"${buildah[@]}" config \
  --os linux --arch amd64 \
  --entrypoint '["/usr/local/bin/vmlet-launcher", "run"]' \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env VMLET_CACHE_DIR=/var/cache/vmlet/qemu \
  --workingdir / \
  "${image_labels[@]}" \
  --label "dev.vmlet.qemu-version=$qemu_version" \
  --label "dev.vmlet.libvirt-version=$libvirt_version" \
  "$ctr"
commit vmlet/launcher "$ctr"

# The handler: its program, the libraries it links (as Debian's loader resolves them), the CA certificates, and a
# passwd and group naming root and nonroot (65532, the controller's user).
handler_build=$cache/handler-build-rootfs
handler_root=$cache/handler-rootfs.tmp
rm -rf "$handler_root"
mkdir -p "$handler_root"/{etc/ssl/certs,usr/local/bin,usr/lib,usr/lib64,proc,sys,dev,run,tmp}
chmod 1777 "$handler_root/tmp"
ln -s usr/lib "$handler_root/lib"
ln -s usr/lib64 "$handler_root/lib64"
install -m 0755 "$programs/vmlet-handler" "$handler_root/usr/local/bin/"
install -m 0755 "$programs/vmlet-handler" "$handler_build/tmp/vmlet-handler"
libraries=$(chroot "$handler_build" ldd /tmp/vmlet-handler)
rm "$handler_build/tmp/vmlet-handler"
if grep -q "not found" <<<"$libraries"; then
  echo "images/containers/build.sh: vmlet-handler needs libraries Debian 12 does not have:" >&2
  echo "$libraries" >&2
  exit 1
fi
# shellcheck disable=SC2013 # ldd's paths have no spaces
for library in $(grep -o '/[^ ]*' <<<"$libraries"); do
  mkdir -p "$handler_root$(dirname "$library")"
  cp -L "$handler_build$library" "$handler_root$library"
done
cp -L "$handler_build/etc/ssl/certs/ca-certificates.crt" "$handler_root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
  > "$handler_root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$handler_root/etc/group"
"${buildah[@]}" rm vmlet-handler-build >/dev/null 2>&1 || true
ctr=$("${buildah[@]}" from --name vmlet-handler-build scratch)
mnt=$("${buildah[@]}" mount "$ctr")
cp -a "$handler_root/." "$mnt/"
"${buildah[@]}" umount "$ctr" >/dev/null
rm -rf "$handler_root"
labels vmlet-handler "vmlet's handler: the controller and node roles (vmlet-handler controller|node)"
"${buildah[@]}" config \
  --os linux --arch amd64 \
  --entrypoint '["/usr/local/bin/vmlet-handler"]' \
  --env PATH=/usr/local/bin \
  --user 65532:65532 \
  --workingdir / \
  "${image_labels[@]}" \
  "$ctr"
commit vmlet/handler "$ctr"

echo "$out"
