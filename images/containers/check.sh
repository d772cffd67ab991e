#!/usr/bin/env bash
# Checks the images that build.sh made, opened from their OCI archives as a container runtime would see them:
#
#   images/containers/check.sh LAUNCHER_ARCHIVE HANDLER_ARCHIVE
#
# handler: its entrypoint, `vmlet-handler --version`, and `vmlet-handler crd` run as the controller's user (65532)
#   inside the image equal to deploy/crd.yaml, so the program and every library it loads are there.
# launcher: its entrypoint, every library of vmlet-driver, QEMU and libvirt's QEMU driver resolved inside the image,
#   nft, tc, and the user and groups libvirt wants. Then the image runs a VM as a pod would: its root filesystem
#   chrooted in a network namespace whose eth0 is a veth to a "node" namespace (10.244.1.7/24, gateway 10.244.1.1),
#   in a mount and PID namespace of its own (the image's entrypoint is PID 1), with the mounts the controller's Pod
#   gives it (the run and cache directories, /dev/net/tun, no /dev/kvm) and the VM in VMLET_VM_SPEC. The test guest
#   (images/guest) must get the pod's address over DHCP and ping the gateway; SIGTERM must then shut it down over ACPI
#   with exit code 0.
#
# Needs root, buildah, and what images/guest/build.sh needs. Every wait is bounded; everything made is removed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
launcher_archive=${1:?usage: check.sh LAUNCHER_ARCHIVE HANDLER_ARCHIVE}
handler_archive=${2:?usage: check.sh LAUNCHER_ARCHIVE HANDLER_ARCHIVE}
cache=${VMLET_CACHE_DIR:-$HOME/.cache/vmlet}/containers
buildah=(buildah --storage-driver vfs)
# Bounds: a guest's boot under TCG on a busy machine (the first one also waits for libvirt's capability probe), and
# its ACPI shutdown plus the launcher's teardown.
boot_secs=300
stop_secs=120

work=$(mktemp -d)
node=vmlet-image-node-$$
pod=vmlet-image-pod-$$
# The working containers the archives are opened as.
containers=(vmlet-image-check-handler vmlet-image-check-launcher)
pod_pid=""
cleanup() {
  if [ -n "$pod_pid" ]; then
    # unshare --kill-child: the pod's PID 1, and with it everything in its PID namespace, dies with unshare.
    kill -KILL "$pod_pid" 2>/dev/null || true
    wait "$pod_pid" 2>/dev/null || true
  fi
  ip netns del "$node" 2>/dev/null || true
  ip netns del "$pod" 2>/dev/null || true
  for ctr in "${containers[@]}"; do "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "images check: $*" >&2
  exit 1
}
ok() { echo "images check: ok: $*" >&2; }

# Opens the OCI archive $2 as the working container $1 (one of $containers) and prints its root filesystem's path.
open_image() {
  local name=$1 archive=$2
  "${buildah[@]}" rm "$name" >/dev/null 2>&1 || true
  "${buildah[@]}" from --quiet --name "$name" "oci-archive:$archive" >/dev/null
  "${buildah[@]}" mount "$name"
}

# The image's entrypoint (as words; vmlet's have no spaces).
entrypoint() { "${buildah[@]}" inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$1" | sed 's/ $//'; }

echo "== the handler image" >&2
root=$(open_image vmlet-image-check-handler "$handler_archive")
[ "$(entrypoint vmlet-image-check-handler)" = /usr/local/bin/vmlet-handler ] ||
  fail "the handler's entrypoint is $(entrypoint vmlet-image-check-handler)"
chroot --userspec=65532:65532 "$root" /usr/local/bin/vmlet-handler --version >&2
chroot --userspec=65532:65532 "$root" /usr/local/bin/vmlet-handler crd > "$work/crd.yaml"
diff -u "$repo/deploy/crd.yaml" "$work/crd.yaml" >&2 ||
  fail "vmlet-handler crd in the image differs from deploy/crd.yaml"
ok "vmlet-handler crd, run in the image as user 65532, equals deploy/crd.yaml"
[ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || fail "the handler image has no CA certificates"
ok "the handler image holds $(find "$root" -type f | wc -l) files, $(du -sm "$root" | cut -f1) MB"

echo "== the launcher image" >&2
root=$(open_image vmlet-image-check-launcher "$launcher_archive")
entry=$(entrypoint vmlet-image-check-launcher)
[ "$entry" = "/usr/local/bin/vmlet-launcher run" ] || fail "the launcher's entrypoint is $entry"
chroot "$root" /usr/local/bin/vmlet-launcher --version >&2
for program in /usr/local/bin/vmlet-driver /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img \
  /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so /usr/sbin/nft /usr/sbin/tc; do
  [ -e "$root$program" ] || fail "the launcher image has no $program"
  libraries=$(chroot "$root" ldd "$program")
  if grep -q "not found" <<<"$libraries"; then
    echo "$libraries" >&2
    fail "$program misses libraries in the launcher image"
  fi
done
for firmware in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd /usr/share/OVMF/OVMF_CODE_4M.secboot.fd \
  /usr/share/OVMF/OVMF_VARS_4M.ms.fd; do
  [ -e "$root$firmware" ] || fail "the launcher image has no $firmware (UEFI guests)"
done
ok "vmlet-driver, QEMU, libvirt's QEMU driver, nft and tc find all their libraries"
chroot "$root" qemu-system-x86_64 --version | head -n 1 >&2
chroot "$root" nft --version >&2
chroot "$root" getent passwd libvirt-qemu >/dev/null || fail "the launcher image has no libvirt-qemu user"
chroot "$root" getent group kvm libvirt-qemu >/dev/null || fail "the launcher image lacks the kvm or libvirt-qemu group"
ok "the libvirt-qemu user and the kvm and libvirt-qemu groups exist"
# The controller's holder mode copies it into containerDisk images, which have no libraries for it.
if chroot "$root" ldd /bin/busybox >/dev/null 2>&1; then fail "/bin/busybox in the launcher image is not static"; fi
chroot "$root" /bin/busybox sh -c 'exec /bin/busybox true' || fail "the launcher image's /bin/busybox does not run"
ok "a static busybox for containerDisk holders"

echo "== a VM pod from the launcher image" >&2
guest=$("$repo/images/guest/build.sh" 2>/dev/null | tail -n 1)
[ -f "$guest/vmlinux" ] || fail "no test guest (images/guest/build.sh)"
ip netns add "$node"
ip netns add "$pod"
ip -n "$node" link add veth-node mtu 1400 type veth peer name eth0 netns "$pod"
ip -n "$node" addr add 10.244.1.1/24 dev veth-node
ip -n "$node" link set veth-node up
ip -n "$pod" link set lo up
ip -n "$pod" link set eth0 address 02:42:0a:f4:01:07 mtu 1400 up
ip -n "$pod" addr add 10.244.1.7/24 dev eth0
ip -n "$pod" route add default via 10.244.1.1
printf 'nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n' > "$work/resolv.conf"
# The node's run directory of this pod, and QEMU's capability cache shared by the pods of this image on the node.
mkdir -p "$work/run" "$cache/qemu-caps"
# What the controller puts in VMLET_VM_SPEC: the VM, here the test guest with a scratch disk.
spec='{"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine",
  "metadata": {"name": "imagecheck", "namespace": "default", "uid": "8d4f7f0e-0b5a-4c1e-9d2a-6c3b7a1e5f20"},
  "spec": {"runStrategy": "Always", "template": {"spec": {
    "terminationGracePeriodSeconds": 60,
    "domain": {
      "memory": {"guest": "256Mi"},
      "firmware": {"kernelBoot": {"kernelArgs": "console=ttyS0 quiet panic=-1 vmlet.ping=10.244.1.1",
        "hostPath": {"kernelPath": "/var/lib/vmlet/guest/vmlinux",
          "initrdPath": "/var/lib/vmlet/guest/initramfs.cpio.gz"}}},
      "devices": {"interfaces": [{"name": "default", "bridge": {}}], "disks": [{"name": "scratch", "disk": {}}]}},
    "networks": [{"name": "default", "pod": {}}],
    "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "64Mi"}}]}}}}'
# The container's view, made as a runtime does: the pod's host name, /proc and /sys of the pod's namespaces, a /dev
# with the usual nodes, and the host paths the controller's Pod mounts; then the image's entrypoint as PID 1 with the
# image's PATH.
# shellcheck disable=SC2016 # expanded by the pod's shell
pod_setup='set -e
root=$1 run=$2 caps=$3 guest=$4 resolv=$5
shift 5
hostname vmlet-launcher-imagecheck
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty net/tun; do
  mkdir -p "$(dirname "$root/dev/$node")"
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o nosuid,nodev tmpfs "$root/dev/shm"
mount --bind "$run" "$root/run/vmlet"
mount --bind "$caps" "$root/var/cache/vmlet/qemu"
mkdir -p "$root/var/lib/vmlet/guest"
mount --bind "$guest" "$root/var/lib/vmlet/guest"
mount -o remount,bind,ro "$root/var/lib/vmlet/guest"
mount --bind "$resolv" "$root/etc/resolv.conf"
exec chroot "$root" "$@"'
image_path=$("${buildah[@]}" inspect --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' \
  vmlet-image-check-launcher | grep '^PATH=')
# shellcheck disable=SC2086 # the entrypoint's words
ip netns exec "$pod" unshare --mount --uts --pid --fork --kill-child --propagation private -- \
  sh -c "$pod_setup" pod-setup "$root" "$work/run" "$cache/qemu-caps" "$guest" "$work/resolv.conf" \
  /usr/bin/env -i "$image_path" VMLET_CACHE_DIR=/var/cache/vmlet/qemu "VMLET_VM_SPEC=$spec" NO_COLOR=1 $entry \
  2> "$work/launcher.log" &
pod_pid=$!
console=$work/run/console.log
started=$SECONDS
until grep -qa "VMLET-GUEST ready" "$console" 2>/dev/null; do
  if ! kill -0 "$pod_pid" 2>/dev/null; then
    cat "$work/launcher.log" >&2
    fail "the launcher exited before the guest was ready"
  fi
  if ((SECONDS - started > boot_secs)); then
    cat "$work/launcher.log" "$console" >&2
    fail "the guest was not ready within ${boot_secs} s"
  fi
  sleep 1
done
ok "the guest booted in the pod in $((SECONDS - started)) s"
grep -a "VMLET-GUEST lease " "$console" | grep -q " ip=10.244.1.7/24 " ||
  { cat "$console" >&2; fail "the guest did not get the pod's address 10.244.1.7/24"; }
grep -qa "VMLET-GUEST ping target=10.244.1.1 ok" "$console" ||
  { cat "$console" >&2; fail "the guest could not ping the pod's gateway"; }
grep -qa "VMLET-GUEST error" "$console" && { cat "$console" >&2; fail "the guest reported an error"; }
ok "the guest has the pod's address 10.244.1.7/24 and reaches the gateway 10.244.1.1"
grep -a "accelerator\|KVM is unusable" "$work/launcher.log" | head -n 1 >&2 || true

# SIGTERM to the pod's PID 1, as the kubelet stops a container.
launcher=$(pgrep -P "$pod_pid")
kill -TERM "$launcher"
started=$SECONDS
while kill -0 "$pod_pid" 2>/dev/null; do
  if ((SECONDS - started > stop_secs)); then
    cat "$work/launcher.log" >&2
    fail "the pod did not stop within ${stop_secs} s of SIGTERM"
  fi
  sleep 0.5
done
status=0
wait "$pod_pid" || status=$?
pod_pid=""
grep -qa "VMLET-GUEST poweroff reason=acpi" "$console" ||
  { cat "$console" >&2; fail "the guest did not power off over ACPI"; }
[ "$status" = 0 ] || { cat "$work/launcher.log" >&2; fail "the launcher exited with $status after SIGTERM"; }
ok "SIGTERM shut the guest down over ACPI and the launcher exited 0 within $((SECONDS - started)) s"
