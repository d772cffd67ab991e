#!/usr/bin/env bash
# Smoke test of the test guest: boots it under bare QEMU (q35) on a tap in a bridge, in a private network
# namespace where dnsmasq serves it a pod-like lease (a /32 address, gateway 169.254.1.1 reached through an on-link
# classless static route, MTU 1400), and checks the console: the lease line, a ping of the bridge address, the MTU,
# and an inbound TCP connection to the guest. Then it presses the ACPI power button (system_powerdown on QEMU's
# monitor) and checks that the guest reports it and powers off, QEMU exiting by itself. Prints timings from QEMU's
# start; with N > 1 boots N times in a row.
#
#   images/guest/boot-test.sh [N]
#
# Environment: VMLET_ACCEL (tcg, the default, or kvm), VMLET_BOOT_TIMEOUT (seconds per boot, default 90),
# VMLET_GUEST_DIR (a built guest; default: run build.sh), VMLET_KERNEL (vmlinux, the default, or vmlinuz),
# VMLET_APPEND (more kernel arguments), VMLET_IPV6=1 (also router advertisements and DHCPv6 from dnsmasq, and the
# guest's vmlet.ipv6=1), VMLET_POWERDOWN_TIMEOUT (seconds from the power-button press to QEMU's exit, default 30),
# VMLET_KEEP_LOGS=1 (keep the work dir and say where).
# Needs root (network namespaces, tap).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runs=${1:-1}
accel=${VMLET_ACCEL:-tcg}
boot_timeout=${VMLET_BOOT_TIMEOUT:-90}
console_timeout=30 # watchdog: no console output at all within this bound means a hung boot
powerdown_timeout=${VMLET_POWERDOWN_TIMEOUT:-30}

mac=52:54:00:12:34:56
guest_ip=10.244.1.7
gateway=169.254.1.1
mtu=1400
port=8080
ipv6=${VMLET_IPV6:-0}
prefix6=fd00:10::

die() {
  echo "boot-test: FAIL: $*" >&2
  exit 1
}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [number of boots]"
[[ $powerdown_timeout =~ ^[1-9][0-9]*$ ]] || die "VMLET_POWERDOWN_TIMEOUT must be a number of seconds"
((EUID == 0)) || die "needs root (network namespace, tap)"
for tool in ip dnsmasq qemu-system-x86_64 timeout socat; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup)"
done
case $accel in
  tcg) cpu=() ;;
  kvm) cpu=(-cpu host) ;;
  *) die "VMLET_ACCEL must be tcg or kvm, not $accel" ;;
esac

guest=${VMLET_GUEST_DIR:-$("$here/build.sh")}
kernel=${VMLET_KERNEL:-vmlinux}
for f in "$kernel" initramfs.cpio.gz; do
  [[ -f $guest/$f ]] || die "$guest/$f missing"
done

work=$(mktemp -d /tmp/vmlet-boot-test.XXXXXX)
ns=vmlet-boot-$$
pids=()

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  ip netns del "$ns" 2>/dev/null || true
}
on_exit() {
  cleanup
  if [[ ${VMLET_KEEP_LOGS:-0} == 1 ]]; then
    echo "boot-test: logs in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

now_us() { echo "${EPOCHREALTIME/./}"; }

# Copies the console to stdout, each line prefixed with the milliseconds since $1 (microseconds since the epoch).
stamp_lines() {
  local t0=$1 line t
  while IFS= read -r line || [[ -n $line ]]; do
    t=$(now_us)
    printf '%d %s\n' $(((t - t0) / 1000)) "${line//$'\r'/}"
  done
}

# ms_of PATTERN: the time stamp of the first console line matching PATTERN (grep -E), or nothing.
ms_of() {
  grep -m1 -E -- "$1" "$work/console.log" | cut -d' ' -f1 || true
}

show_console() {
  echo "--- console (ms since QEMU start) ---" >&2
  sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' "$work/console.log" >&2 || true
  echo "--- dnsmasq ---" >&2
  tail -n 20 "$work/dnsmasq.log" >&2 || true
  echo "--- qemu stderr ---" >&2
  cat "$work/qemu.err" >&2 || true
  if [[ -s $work/monitor.log ]]; then
    echo "--- qemu monitor ---" >&2
    sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$work/monitor.log" >&2 || true
  fi
}

fail() {
  show_console
  die "$*"
}

boot() { # RUN: one boot in a fresh namespace; prints a timing line
  local run=$1 t0 deadline qemu_pid line first init lease ready t_press rc off i
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add br0 type bridge
  ip -n "$ns" tuntap add dev tap0 mode tap
  ip -n "$ns" link set tap0 master br0
  ip -n "$ns" link set br0 mtu "$mtu"
  ip -n "$ns" link set tap0 mtu "$mtu"
  ip -n "$ns" addr add "$gateway/32" dev br0
  ip -n "$ns" link set tap0 up
  ip -n "$ns" link set br0 up
  ip -n "$ns" route add "$guest_ip/32" dev br0
  local v6=() append="vmlet.ping=$gateway vmlet.listen=$port"
  if [[ $ipv6 == 1 ]]; then
    ip -n "$ns" addr add "${prefix6}1/64" dev br0 nodad
    # shellcheck disable=SC2054 # the commas belong to dnsmasq's arguments
    v6=(--enable-ra --dhcp-range="$prefix6,static,64" --dhcp-host="$mac,[${prefix6}7]"
      --dhcp-option=option6:dns-server,"[${prefix6}53]" --dhcp-option=option6:domain-search,ns.svc.cluster.local)
    append="vmlet.ping=$gateway,${prefix6}1 vmlet.listen=$port vmlet.ipv6=1"
  fi

  : >"$work/dnsmasq.log"
  rm -f "$work/leases" # each boot starts from a fresh server
  ip netns exec "$ns" timeout "$boot_timeout" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --no-ping \
    --no-resolv --no-hosts --pid-file= --user=root --group=root --interface=br0 --bind-interfaces \
    --dhcp-authoritative --dhcp-leasefile="$work/leases" --log-dhcp --log-facility="$work/dnsmasq.log" \
    --dhcp-range="$guest_ip,static,255.255.255.255" --shared-network="br0,$guest_ip" \
    --dhcp-host="$mac,$guest_ip,vm1" \
    --dhcp-option=option:netmask,255.255.255.255 \
    --dhcp-option=option:router,"$gateway" \
    --dhcp-option=option:classless-static-route,"$gateway/32,0.0.0.0,0.0.0.0/0,$gateway" \
    --dhcp-option=option:dns-server,10.96.0.10 \
    --dhcp-option=option:domain-search,ns.svc.cluster.local \
    --dhcp-option=option:mtu,"$mtu" "${v6[@]}" \
    2>"$work/dnsmasq.err" &
  pids+=($!)

  rm -f "$work/console.fifo" "$work/monitor.sock" "$work/monitor.log"
  mkfifo "$work/console.fifo"
  t0=$(now_us)
  : >"$work/console.log"
  stamp_lines "$t0" <"$work/console.fifo" >"$work/console.log" &
  pids+=($!)
  ip netns exec "$ns" timeout --kill-after=5 "$boot_timeout" qemu-system-x86_64 \
    -machine q35 -accel "$accel" "${cpu[@]}" -m 256 -smp 1 -nodefaults -no-user-config -no-reboot \
    -display none -serial stdio -monitor unix:"$work/monitor.sock",server=on,wait=off \
    -kernel "$guest/$kernel" -initrd "$guest/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 $append ${VMLET_APPEND:-}" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac="$mac" \
    </dev/null >"$work/console.fifo" 2>"$work/qemu.err" &
  qemu_pid=$!
  pids+=("$qemu_pid")

  deadline=$((t0 + boot_timeout * 1000000))
  while ! grep -q 'VMLET-GUEST ready' "$work/console.log"; do
    kill -0 "$qemu_pid" 2>/dev/null || fail "boot $run: QEMU exited before the guest was ready"
    if [[ ! -s $work/console.log ]] && (($(now_us) - t0 > console_timeout * 1000000)); then
      fail "boot $run: no console output within ${console_timeout}s (hung boot)"
    fi
    (($(now_us) < deadline)) || fail "boot $run: guest not ready within ${boot_timeout}s"
    sleep 0.05
  done

  local lease_line="VMLET-GUEST lease ip=$guest_ip/32 router=$gateway dns=10.96.0.10 search=ns.svc.cluster.local"
  lease_line+=" mtu=$mtu hostname=vm1 routes=$gateway/32-0.0.0.0,0.0.0.0/0-$gateway "
  local want=(
    "$lease_line"
    "VMLET-GUEST route default via $gateway dev eth0"
    "VMLET-GUEST route $gateway dev eth0 scope link"
    "VMLET-GUEST link mtu=$mtu mac=$mac"
    "VMLET-GUEST ping target=$gateway ok"
    "VMLET-GUEST listen port=$port"
  )
  if [[ $ipv6 == 1 ]]; then
    want+=(
      "VMLET-GUEST lease6 ip=${prefix6}7 "
      " dns=${prefix6}53 search=ns.svc.cluster.local "
      "VMLET-GUEST route6 default via fe80::"
      "VMLET-GUEST ping target=${prefix6}1 ok"
    )
  fi
  for line in "${want[@]}"; do
    grep -qF -- "$line" "$work/console.log" || fail "boot $run: console lacks \"$line\""
  done
  if grep -q 'VMLET-GUEST error' "$work/console.log"; then
    fail "boot $run: the guest reported an error"
  fi

  # Inbound: a TCP connection from the namespace to the guest's listener.
  line=$(ip netns exec "$ns" timeout 10 bash -c \
    "exec 3<>/dev/tcp/$guest_ip/$port && IFS= read -r line <&3 && echo \"\$line\"" 2>&1) || true
  [[ $line == "VMLET-GUEST hello hostname=vm1" ]] || fail "boot $run: inbound TCP to $guest_ip:$port got \"$line\""

  # The ACPI power button, as libvirt's virDomainShutdown presses it: the guest must report it and power off, and
  # QEMU (-no-reboot) then exits by itself, with status 0.
  t_press=$(now_us)
  printf 'system_powerdown\n' | timeout 10 socat -t 1 - UNIX-CONNECT:"$work/monitor.sock" >"$work/monitor.log" 2>&1 ||
    fail "boot $run: cannot send system_powerdown to QEMU's monitor"
  deadline=$((t_press + powerdown_timeout * 1000000))
  while kill -0 "$qemu_pid" 2>/dev/null; do
    (($(now_us) < deadline)) || fail "boot $run: QEMU still running ${powerdown_timeout}s after the power-button press"
    sleep 0.05
  done
  off=$((($(now_us) - t_press) / 1000))
  rc=0
  wait "$qemu_pid" || rc=$?
  ((rc == 0)) || fail "boot $run: QEMU exited with status $rc after the power-button press"
  # The console reader ends with QEMU (end of file on the fifo); give it a moment to write the last lines.
  for ((i = 0; i < 40; i++)); do
    grep -q 'VMLET-GUEST poweroff' "$work/console.log" && break
    sleep 0.05
  done
  grep -qx '[0-9]* VMLET-GUEST poweroff reason=acpi' "$work/console.log" ||
    fail "boot $run: console lacks \"VMLET-GUEST poweroff reason=acpi\""
  if grep -q 'VMLET-GUEST error' "$work/console.log"; then
    fail "boot $run: the guest reported an error"
  fi

  first=$(head -n1 "$work/console.log" | cut -d' ' -f1)
  init=$(ms_of 'VMLET-GUEST init ')
  lease=$(ms_of 'VMLET-GUEST lease ')
  ready=$(ms_of 'VMLET-GUEST ready')
  printf 'boot %d ok (%s, %s): first console byte %d ms, init %d ms, lease %d ms, ready %d ms,' \
    "$run" "$accel" "$kernel" "$first" "$init" "$lease" "$ready"
  printf ' power button to QEMU exit %d ms\n' "$off"
  echo "$first $init $lease $ready $off" >>"$work/times"
  cleanup
}

for ((i = 1; i <= runs; i++)); do
  boot "$i"
done
if ((runs > 1)); then
  awk '
    { for (i = 1; i <= 5; i++) {
        s[i] += $i
        if (NR == 1 || $i > mx[i]) mx[i] = $i
        if (NR == 1 || $i < mn[i]) mn[i] = $i
    } }
    END {
      split("first-byte init lease ready poweroff", n, " ")
      for (i = 1; i <= 5; i++) printf "%-10s min %5d  avg %5d  max %5d ms\n", n[i], mn[i], s[i] / NR, mx[i]
    }' "$work/times"
fi
echo "boot-test: ok ($runs boot(s))"
