//! The peer of the launcher in the boot benchmarks: a guest under a bare `qemu-system-x86_64`, no vmlet, its tap in
//! a Linux bridge `br0` that holds the gateway's address, in a namespace of its own, with dnsmasq giving the guest
//! the pod's address over DHCP (the approach of `images/guest/boot-test.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use anyhow::anyhow;
use vmlet_testkit::{Child, GuestImage, NetNs, ScratchDir};

use crate::pod::{DNS, GATEWAY, MTU, NETMASK, POD_ADDRESS, POD_MAC, SEARCH, VM_NAME};

/// The test guest's memory, under the launcher and bare alike.
pub const TEST_GUEST_MIB: u32 = 256;

/// The bridge, its tap and dnsmasq, ready for a QEMU.
pub struct BareNetwork {
    // Dropped in this order: dnsmasq, then its namespace and directory.
    pub dnsmasq: Child,
    pub ns: NetNs,
    pub dir: ScratchDir,
}

impl BareNetwork {
    /// Makes the bridge and the tap, starts dnsmasq and waits until it listens.
    pub fn start() -> anyhow::Result<BareNetwork> {
        let (ns, dir) = (NetNs::new(), ScratchDir::new());
        let mtu = MTU.to_string();
        ns.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"]);
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.ip(&["link", "set", "tap0", "master", "br0", "mtu", &mtu, "up"]);
        ns.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"]);
        ns.ip(&["link", "set", "br0", "up"]);
        let mut dnsmasq = ns.exec("dnsmasq");
        dnsmasq.args([
            // As in the `dhcp` benchmark: in the foreground as in production, logging to stderr.
            "--keep-in-foreground".to_owned(),
            "--log-facility=-".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--port=0".to_owned(),
            "--no-ping".to_owned(),
            "--dhcp-authoritative".to_owned(),
            "--leasefile-ro".to_owned(),
            "--interface=br0".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--dhcp-range={POD_ADDRESS},static,{NETMASK}"),
            format!("--dhcp-host={POD_MAC},{POD_ADDRESS},{VM_NAME}"),
            format!("--dhcp-option=option:router,{GATEWAY}"),
            format!("--dhcp-option=option:dns-server,{DNS}"),
            format!("--dhcp-option=option:domain-search,{SEARCH}"),
            format!("--dhcp-option=option:mtu,{MTU}"),
        ]);
        let dnsmasq = Child::spawn("dnsmasq", &mut dnsmasq);
        crate::dhcp::wait_listening(&ns, &dnsmasq)?;

        Ok(BareNetwork { dnsmasq, ns, dir })
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// QEMU in the namespace, as the launcher's domain has it where it matters for a boot: q35, the accelerator,
    /// memory and vCPUs, the serial console into [`BareNetwork::console_log`], a virtio-net device with the pod's
    /// MAC on the tap. The caller adds what to boot.
    pub fn qemu(&self, accel: &str, memory_mib: u32, cpus: u32) -> Command {
        let mut qemu = self.ns.exec("qemu-system-x86_64");
        qemu.args(["-machine", "q35", "-accel", accel]);
        if accel == "kvm" {
            qemu.args(["-cpu", "host"]);
        }
        qemu.args([
            "-m",
            &memory_mib.to_string(),
            "-smp",
            &cpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            // Threads named by their job, as libvirt has them (`CPU 0/TCG`), for the CPU time of each.
            "-name",
            "bare,debug-threads=on",
        ])
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", self.console_log().display()))
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={POD_MAC}")]);
        qemu
    }
}

/// A guest running under a bare QEMU.
pub struct BareGuest {
    // Dropped in this order: QEMU, then its network.
    pub qemu: Child,
    /// When QEMU was spawned.
    pub spawned: SystemTime,
    pub net: BareNetwork,
}

impl BareGuest {
    /// The test guest, by direct kernel boot with the kernel command line `cmdline`.
    pub fn start(accel: &str, guest: &GuestImage, cmdline: &str) -> anyhow::Result<BareGuest> {
        let net = BareNetwork::start()?;
        let mut qemu = net.qemu(accel, TEST_GUEST_MIB, 1);
        qemu.arg("-kernel")
            .arg(guest.kernel())
            .arg("-initrd")
            .arg(guest.initrd())
            .args(["-append", cmdline]);
        Ok(BareGuest::spawn(net, &mut qemu))
    }

    /// Spawns `qemu`, a command made by [`BareNetwork::qemu`] on `net`.
    pub fn spawn(net: BareNetwork, qemu: &mut Command) -> BareGuest {
        let spawned = SystemTime::now();
        let qemu = Child::spawn("qemu-system-x86_64", qemu);
        BareGuest { qemu, spawned, net }
    }

    pub fn console_log(&self) -> PathBuf {
        self.net.console_log()
    }

    /// `err` with what QEMU and dnsmasq printed.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{err:#}\n--- qemu ---\n{}--- dnsmasq ---\n{}",
            self.qemu.output(),
            self.net.dnsmasq.output()
        )
    }
}
