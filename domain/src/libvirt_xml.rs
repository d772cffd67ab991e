//! A [`DomainSpec`] in libvirt's domain XML (<https://libvirt.org/formatdomain.html>). What varies between VMs
//! comes from the spec; what vmlet always wants (no USB, no balloon, a virtio RNG, the clock, the lifecycle
//! actions) is written unconditionally, with the reason next to it.

use super::xml_writer::{XmlError, XmlWriter};
use super::{
    Accel, Boot, ClockOffset, DiskBus, DiskCache, DiskFormat, DiskMedia, DiskSource, DiskSpec, DomainSpec, Firmware,
    HypervFeature, InterfaceSpec, NicModel,
};

/// The CPU model under TCG: QEMU's baseline, which every x86-64 guest kernel runs on.
const TCG_CPU_MODEL: &str = "qemu64";

pub fn write(spec: &DomainSpec) -> Result<String, XmlError> {
    let mut w = XmlWriter::new();
    let hypervisor = match spec.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    w.open("domain", &[("type", hypervisor)]);
    w.text("name", &[], &spec.name);
    w.text("uuid", &[], &spec.uuid.to_string());
    w.text("memory", &[("unit", "MiB")], &spec.memory_mib.to_string());
    w.text("vcpu", &[("placement", "static")], &spec.vcpus.to_string());
    if let Some(serial) = &spec.platform.smbios_serial {
        w.open("sysinfo", &[("type", "smbios")]);
        w.open("system", &[]);
        w.text("entry", &[("name", "serial")], serial);
        w.close();
        w.close();
    }
    write_os(&mut w, spec);
    write_features(&mut w, spec);
    write_cpu(&mut w, spec);
    write_clock(&mut w, spec);
    // A guest that powers off or crashes ends the VM (the controller decides about restarts); a reboot stays
    // inside the same QEMU.
    w.text("on_poweroff", &[], "destroy");
    w.text("on_reboot", &[], "restart");
    w.text("on_crash", &[], "destroy");
    write_devices(&mut w, spec);
    w.close();
    w.finish()
}

fn write_os(w: &mut XmlWriter, spec: &DomainSpec) {
    w.open("os", &[]);
    w.text("type", &[("arch", "x86_64"), ("machine", &spec.machine)], "hvm");
    if let Firmware::Efi {
        code,
        vars_template,
        vars,
        secure_boot,
    } = &spec.firmware
    {
        let (code, vars_template, vars) = (w.path(code), w.path(vars_template), w.path(vars));
        let secure = if *secure_boot { "yes" } else { "no" };
        w.text(
            "loader",
            &[("readonly", "yes"), ("secure", secure), ("type", "pflash")],
            &code,
        );
        w.text("nvram", &[("template", &vars_template)], &vars);
    }
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let kernel = w.path(kernel);
            w.text("kernel", &[], &kernel);
            if let Some(initrd) = initrd {
                let initrd = w.path(initrd);
                w.text("initrd", &[], &initrd);
            }
            w.text("cmdline", &[], cmdline);
        }
        // Per-disk boot orders and <os><boot> exclude each other in libvirt.
        Boot::Disk if spec.disks.iter().any(|d| d.boot_order.is_some()) => {}
        Boot::Disk => w.empty("boot", &[("dev", "hd")]),
    }
    if spec.platform.smbios_serial.is_some() {
        w.empty("smbios", &[("mode", "sysinfo")]);
    }
    w.close();
}

fn write_features(w: &mut XmlWriter, spec: &DomainSpec) {
    let features = &spec.platform.features;
    w.open("features", &[]);
    if features.acpi {
        w.empty("acpi", &[]);
    }
    if features.apic {
        w.empty("apic", &[]);
    }
    if spec.accel == Accel::Kvm && !features.hyperv.is_empty() {
        w.open("hyperv", &[("mode", "custom")]);
        for &feature in &features.hyperv {
            match feature {
                HypervFeature::Spinlocks(retries) => {
                    w.empty(feature.name(), &[("state", "on"), ("retries", &retries.to_string())]);
                }
                _ => w.empty(feature.name(), &[("state", "on")]),
            }
        }
        w.close();
    }
    if features.smm || matches!(spec.firmware, Firmware::Efi { secure_boot: true, .. }) {
        w.empty("smm", &[("state", "on")]);
    }
    w.close();
}

fn write_clock(w: &mut XmlWriter, spec: &DomainSpec) {
    let clock = &spec.platform.clock;
    match &clock.offset {
        ClockOffset::Utc { adjustment: 0 } => w.open("clock", &[("offset", "utc")]),
        ClockOffset::Utc { adjustment } => w.open(
            "clock",
            &[
                ("offset", "variable"),
                ("basis", "utc"),
                ("adjustment", &adjustment.to_string()),
            ],
        ),
        ClockOffset::Timezone(zone) => w.open("clock", &[("offset", "timezone"), ("timezone", zone)]),
    }
    for timer in &clock.timers {
        let present = timer.present.map(|p| if p { "yes" } else { "no" });
        let attributes: Vec<(&str, &str)> = [
            Some(("name", timer.name.as_str())),
            present.map(|p| ("present", p)),
            timer.tick_policy.as_deref().map(|p| ("tickpolicy", p)),
            timer.track.as_deref().map(|t| ("track", t)),
        ]
        .into_iter()
        .flatten()
        .collect();
        w.empty("timer", &attributes);
    }
    w.close();
}

fn write_cpu(w: &mut XmlWriter, spec: &DomainSpec) {
    let model = spec.platform.cpu_model.as_deref();
    match (spec.accel, model) {
        (Accel::Kvm, None | Some("host-passthrough")) => {
            w.open("cpu", &[("mode", "host-passthrough"), ("check", "none")]);
        }
        (Accel::Kvm, Some("host-model")) => w.open("cpu", &[("mode", "host-model")]),
        (Accel::Kvm, Some(model)) => {
            w.open("cpu", &[("mode", "custom"), ("match", "exact")]);
            w.text("model", &[("fallback", "forbid")], model);
        }
        (Accel::Tcg, _) => {
            // check="none": an emulated CPU needs no comparison with the host's.
            w.open("cpu", &[("mode", "custom"), ("match", "exact"), ("check", "none")]);
            w.text("model", &[("fallback", "forbid")], TCG_CPU_MODEL);
        }
    }
    if let Some(t) = spec.platform.topology {
        w.empty(
            "topology",
            &[
                ("sockets", &t.sockets.to_string()),
                ("cores", &t.cores.to_string()),
                ("threads", &t.threads.to_string()),
            ],
        );
    }
    w.close();
}

fn write_devices(w: &mut XmlWriter, spec: &DomainSpec) {
    w.open("devices", &[]);
    // SATA and SCSI disks share the `sd` names, as in the guest.
    let (mut vd, mut sd) = (0, 0);
    for disk in &spec.disks {
        let (bus, target) = match disk.bus {
            DiskBus::Virtio => {
                vd += 1;
                ("virtio", disk_target_name("vd", vd - 1))
            }
            DiskBus::Sata | DiskBus::Scsi => {
                sd += 1;
                let bus = if disk.bus == DiskBus::Sata { "sata" } else { "scsi" };
                (bus, disk_target_name("sd", sd - 1))
            }
        };
        write_disk(w, disk, bus, &target);
    }
    if spec.disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        // libvirt's default SCSI controller is an emulated LSI card few guests still drive; virtio-scsi is what
        // KubeVirt uses.
        w.empty(
            "controller",
            &[("type", "scsi"), ("index", "0"), ("model", "virtio-scsi")],
        );
    }
    // Nothing vmlet attaches uses USB; without this libvirt adds a controller the guest then probes at boot.
    w.empty("controller", &[("type", "usb"), ("model", "none")]);
    for interface in &spec.interfaces {
        write_interface(w, interface);
    }
    write_console(w, spec);
    if let Some(socket) = &spec.guest_agent_socket {
        let socket = w.path(socket);
        w.open("channel", &[("type", "unix")]);
        w.empty("source", &[("mode", "bind"), ("path", &socket)]);
        w.empty("target", &[("type", "virtio"), ("name", "org.qemu.guest_agent.0")]);
        w.close();
    }
    if let Some(socket) = &spec.vnc_socket {
        let socket = w.path(socket);
        w.open("graphics", &[("type", "vnc")]);
        w.empty("listen", &[("type", "socket"), ("socket", &socket)]);
        w.close();
        w.open("video", &[]);
        w.empty("model", &[("type", "vga")]);
        w.close();
    }
    // The pod's memory limit is the VM's; a balloon would only add a device and a polling thread.
    w.empty("memballoon", &[("model", "none")]);
    // Guests can block early in boot waiting for entropy without one.
    w.open("rng", &[("model", "virtio")]);
    w.text("backend", &[("model", "random")], "/dev/urandom");
    w.close();
    w.close();
}

/// The guest-side name of the disk at `index` on a bus, counted the way libvirt does: `vda` … `vdz`, `vdaa` …
/// `vdaz`, `vdba` …
pub(super) fn disk_target_name(prefix: &str, index: usize) -> String {
    let mut suffix = Vec::new();
    // Bijective base 26: there is no zero digit, "z" is followed by "aa".
    let mut rest = index + 1;
    while rest > 0 {
        rest -= 1;
        suffix.push(char::from(b'a' + (rest % 26) as u8));
        rest /= 26;
    }
    let mut name = prefix.to_owned();
    name.extend(suffix.iter().rev());
    name
}

fn write_disk(w: &mut XmlWriter, disk: &DiskSpec, bus: &str, target: &str) {
    let (kind, format, source_attr, path) = match &disk.source {
        DiskSource::File { path, format } => ("file", *format, "file", path),
        DiskSource::Block { path } => ("block", DiskFormat::Raw, "dev", path),
    };
    let device = match disk.media {
        DiskMedia::Disk => "disk",
        DiskMedia::Cdrom => "cdrom",
    };
    let format = match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    let path = w.path(path);
    w.open("disk", &[("type", kind), ("device", device)]);
    match disk.cache {
        Some(cache) => {
            let cache = match cache {
                DiskCache::None => "none",
                DiskCache::Writethrough => "writethrough",
                DiskCache::Writeback => "writeback",
            };
            w.empty("driver", &[("name", "qemu"), ("type", format), ("cache", cache)]);
        }
        None => w.empty("driver", &[("name", "qemu"), ("type", format)]),
    }
    w.empty("source", &[(source_attr, &path)]);
    w.empty("target", &[("dev", target), ("bus", bus)]);
    if let Some(order) = disk.boot_order {
        w.empty("boot", &[("order", &order.to_string())]);
    }
    // libvirt makes every CD-ROM read-only anyway; saying so keeps the XML it reports back equal to ours.
    if disk.readonly || disk.media == DiskMedia::Cdrom {
        w.empty("readonly", &[]);
    }
    if let Some(serial) = &disk.serial {
        w.text("serial", &[], serial);
    }
    w.close();
}

fn write_interface(w: &mut XmlWriter, interface: &InterfaceSpec) {
    w.open("interface", &[("type", "ethernet")]);
    w.empty("mac", &[("address", &interface.mac.to_string())]);
    // managed="no": the launcher's network layer made the tap and owns it; libvirt only opens it.
    w.empty("target", &[("dev", &interface.tap), ("managed", "no")]);
    let model = match interface.model {
        NicModel::Virtio => "virtio",
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
    };
    w.empty("model", &[("type", model)]);
    if let Some(mtu) = interface.mtu {
        w.empty("mtu", &[("size", &mtu.to_string())]);
    }
    // No network boot, so no iPXE option ROM for the firmware to load and run at every start.
    w.empty("rom", &[("enabled", "no")]);
    w.close();
}

fn write_console(w: &mut XmlWriter, spec: &DomainSpec) {
    let Some(console) = &spec.console else {
        return;
    };
    let socket = w.path(&console.socket);
    let log = w.path(&console.log);
    w.open("serial", &[("type", "unix")]);
    w.empty("source", &[("mode", "bind"), ("path", &socket)]);
    w.empty("log", &[("file", &log), ("append", "on")]);
    w.empty("target", &[("port", "0")]);
    w.close();
    // The same character device as the serial port above, named as the console for libvirt's console APIs.
    w.open("console", &[("type", "unix")]);
    w.empty("source", &[("mode", "bind"), ("path", &socket)]);
    w.empty("target", &[("type", "serial"), ("port", "0")]);
    w.close();
}
