//! The domain XML, parsed back and checked element by element.

use roxmltree::{Document, Node};

use super::*;

const MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);

fn kernel_spec() -> DomainSpec {
    DomainSpec {
        name: "default_vm1".to_owned(),
        uuid: Uuid::from_u128(0x5f2b_87a4_1d5e_4c3a_9a4e_3c1f_0b7e_2d11),
        vcpus: 2,
        memory_mib: 256,
        machine: DEFAULT_MACHINE.to_owned(),
        accel: Accel::Tcg,
        firmware: Firmware::Bios,
        boot: Boot::Kernel {
            kernel: "/var/lib/vmlet/guest/vmlinux".into(),
            initrd: Some("/var/lib/vmlet/guest/initramfs.cpio.gz".into()),
            cmdline: "console=ttyS0 panic=-1".to_owned(),
        },
        disks: Vec::new(),
        interfaces: vec![InterfaceSpec {
            tap: "tap0".to_owned(),
            mac: MAC,
            mtu: Some(1400),
            model: NicModel::Virtio,
        }],
        console: Some(ConsolePaths {
            socket: "/run/vmlet/console.sock".into(),
            log: "/run/vmlet/console.log".into(),
        }),
        platform: Platform::default(),
        vnc_socket: None,
        guest_agent_socket: None,
    }
}

/// The one element at `path` (child names separated by `/`) below the root.
fn one<'a>(doc: &'a Document<'a>, path: &str) -> Node<'a, 'a> {
    let found = all(doc, path);
    assert_eq!(found.len(), 1, "expected exactly one <{path}>, found {}", found.len());
    found[0]
}

/// Every element at `path` below the root.
fn all<'a>(doc: &'a Document<'a>, path: &str) -> Vec<Node<'a, 'a>> {
    let mut nodes = vec![doc.root_element()];
    for name in path.split('/') {
        nodes = nodes
            .iter()
            .flat_map(|node| node.children().filter(|c| c.has_tag_name(name)))
            .collect();
    }
    nodes
}

fn attr<'a>(node: Node<'a, 'a>, name: &str) -> &'a str {
    node.attribute(name)
        .unwrap_or_else(|| panic!("<{}> has no {name}", node.tag_name().name()))
}

fn text<'a>(doc: &'a Document<'a>, path: &str) -> &'a str {
    one(doc, path).text().unwrap_or_default()
}

#[test]
fn kernel_boot_under_tcg() {
    let xml = kernel_spec().to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    assert_eq!(domain.tag_name().name(), "domain");
    assert_eq!(attr(domain, "type"), "qemu");
    assert_eq!(text(&doc, "name"), "default_vm1");
    assert_eq!(text(&doc, "uuid"), "5f2b87a4-1d5e-4c3a-9a4e-3c1f0b7e2d11");
    assert_eq!(text(&doc, "memory"), "256");
    assert_eq!(attr(one(&doc, "memory"), "unit"), "MiB");
    assert_eq!(text(&doc, "vcpu"), "2");

    let os_type = one(&doc, "os/type");
    assert_eq!((attr(os_type, "arch"), attr(os_type, "machine")), ("x86_64", "q35"));
    assert_eq!(text(&doc, "os/kernel"), "/var/lib/vmlet/guest/vmlinux");
    assert_eq!(text(&doc, "os/initrd"), "/var/lib/vmlet/guest/initramfs.cpio.gz");
    assert_eq!(text(&doc, "os/cmdline"), "console=ttyS0 panic=-1");
    assert!(all(&doc, "os/boot").is_empty());

    let cpu = one(&doc, "cpu");
    assert_eq!(attr(cpu, "mode"), "custom");
    assert_eq!(text(&doc, "cpu/model"), "qemu64");
    one(&doc, "features/acpi");
    assert_eq!(attr(one(&doc, "clock"), "offset"), "utc");
    assert_eq!(text(&doc, "on_poweroff"), "destroy");
    assert_eq!(text(&doc, "on_reboot"), "restart");
    assert_eq!(text(&doc, "on_crash"), "destroy");
}

#[test]
fn kvm_passes_the_host_cpu_through() {
    let spec = DomainSpec {
        accel: Accel::Kvm,
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(doc.root_element(), "type"), "kvm");
    assert_eq!(attr(one(&doc, "cpu"), "mode"), "host-passthrough");
    assert!(all(&doc, "cpu/model").is_empty());
}

#[test]
fn disk_boot_boots_the_first_disk() {
    let spec = DomainSpec {
        boot: Boot::Disk,
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(one(&doc, "os/boot"), "dev"), "hd");
    assert!(all(&doc, "os/kernel").is_empty());
    assert!(all(&doc, "os/cmdline").is_empty());
}

#[test]
fn disks_get_names_and_buses_in_order() {
    let file = |path: &str, format| DiskSource::File {
        path: path.into(),
        format,
    };
    let spec = DomainSpec {
        disks: vec![
            disk(file("/var/lib/vmlet/root.qcow2", DiskFormat::Qcow2)),
            DiskSpec {
                media: DiskMedia::Cdrom,
                bus: DiskBus::Sata,
                ..disk(file("/var/lib/vmlet/cidata.iso", DiskFormat::Raw))
            },
            DiskSpec {
                readonly: true,
                ..disk(DiskSource::Block {
                    path: "/dev/vmlet/data".into(),
                })
            },
            DiskSpec {
                bus: DiskBus::Scsi,
                ..disk(file("/var/lib/vmlet/data.img", DiskFormat::Raw))
            },
        ],
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    let disks = all(&doc, "devices/disk");
    let summary: Vec<_> = disks
        .iter()
        .map(|disk| {
            let child = |name| disk.children().find(|c| c.has_tag_name(name));
            let source = child("source").unwrap();
            let target = child("target").unwrap();
            (
                attr(*disk, "type"),
                attr(*disk, "device"),
                attr(child("driver").unwrap(), "type"),
                source.attribute("file").or(source.attribute("dev")).unwrap(),
                attr(target, "dev"),
                attr(target, "bus"),
                child("readonly").is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "file",
                "disk",
                "qcow2",
                "/var/lib/vmlet/root.qcow2",
                "vda",
                "virtio",
                false
            ),
            ("file", "cdrom", "raw", "/var/lib/vmlet/cidata.iso", "sda", "sata", true),
            ("block", "disk", "raw", "/dev/vmlet/data", "vdb", "virtio", true),
            ("file", "disk", "raw", "/var/lib/vmlet/data.img", "sdb", "scsi", false),
        ]
    );
    let controller = all(&doc, "devices/controller")
        .into_iter()
        .find(|c| attr(*c, "type") == "scsi")
        .expect("a SCSI controller for the SCSI disk");
    assert_eq!(attr(controller, "model"), "virtio-scsi");
}

/// A virtio hard disk from `source`, with nothing else set.
fn disk(source: DiskSource) -> DiskSpec {
    DiskSpec {
        source,
        media: DiskMedia::Disk,
        bus: DiskBus::Virtio,
        readonly: false,
        boot_order: None,
        serial: None,
        cache: None,
    }
}

#[test]
fn boot_order_serial_and_cache_are_per_disk() {
    let file = |path: &str| DiskSource::File {
        path: path.into(),
        format: DiskFormat::Raw,
    };
    let spec = DomainSpec {
        boot: Boot::Disk,
        disks: vec![
            DiskSpec {
                serial: Some("data-1".into()),
                cache: Some(DiskCache::None),
                ..disk(file("/d/data.img"))
            },
            DiskSpec {
                boot_order: Some(1),
                cache: Some(DiskCache::Writeback),
                ..disk(file("/d/root.img"))
            },
        ],
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    // libvirt refuses <os><boot> beside per-device boot orders.
    assert!(all(&doc, "os/boot").is_empty());
    let disks = all(&doc, "devices/disk");
    fn child<'a>(disk: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
        disk.children().find(|c| c.has_tag_name(name))
    }
    assert!(child(disks[0], "boot").is_none());
    assert_eq!(child(disks[0], "serial").unwrap().text(), Some("data-1"));
    assert_eq!(attr(child(disks[0], "driver").unwrap(), "cache"), "none");
    assert_eq!(attr(child(disks[1], "boot").unwrap(), "order"), "1");
    assert_eq!(attr(child(disks[1], "driver").unwrap(), "cache"), "writeback");
}

#[test]
fn efi_firmware_with_and_without_secure_boot() {
    let efi = |secure_boot| DomainSpec {
        boot: Boot::Disk,
        firmware: Firmware::Efi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            vars: "/run/vmlet/efi-vars.fd".into(),
            secure_boot,
        },
        ..kernel_spec()
    };
    let xml = efi(false).to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    let loader = one(&doc, "os/loader");
    assert_eq!(loader.text(), Some("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    assert_eq!(
        (attr(loader, "readonly"), attr(loader, "secure"), attr(loader, "type")),
        ("yes", "no", "pflash")
    );
    let nvram = one(&doc, "os/nvram");
    assert_eq!(nvram.text(), Some("/run/vmlet/efi-vars.fd"));
    assert_eq!(attr(nvram, "template"), "/usr/share/OVMF/OVMF_VARS_4M.fd");
    assert!(all(&doc, "features/smm").is_empty());

    let xml = efi(true).to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(one(&doc, "os/loader"), "secure"), "yes");
    assert_eq!(attr(one(&doc, "features/smm"), "state"), "on");

    let bios = kernel_spec().to_xml().unwrap();
    assert!(all(&Document::parse(&bios).unwrap(), "os/loader").is_empty());
}

#[test]
fn a_cdrom_on_virtio_is_refused() {
    let spec = DomainSpec {
        disks: vec![DiskSpec {
            media: DiskMedia::Cdrom,
            ..disk(DiskSource::File {
                path: "/d/x.iso".into(),
                format: DiskFormat::Raw,
            })
        }],
        ..kernel_spec()
    };
    assert_eq!(spec.to_xml(), Err(DomainSpecError::VirtioCdrom));
}

#[test]
fn disk_names_count_like_libvirt() {
    let names: Vec<_> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
        .into_iter()
        .map(|index| libvirt_xml::disk_target_name("vd", index))
        .collect();
    assert_eq!(
        names,
        ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"]
    );
}

#[test]
fn interface_is_the_prepared_tap_with_the_pod_mac() {
    let xml = kernel_spec().to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    let interface = one(&doc, "devices/interface");
    assert_eq!(attr(interface, "type"), "ethernet");
    assert_eq!(attr(one(&doc, "devices/interface/mac"), "address"), "0a:58:0a:f4:01:07");
    let target = one(&doc, "devices/interface/target");
    assert_eq!((attr(target, "dev"), attr(target, "managed")), ("tap0", "no"));
    assert_eq!(attr(one(&doc, "devices/interface/model"), "type"), "virtio");
    assert_eq!(attr(one(&doc, "devices/interface/mtu"), "size"), "1400");

    let spec = DomainSpec {
        interfaces: vec![InterfaceSpec {
            mtu: None,
            ..kernel_spec().interfaces[0].clone()
        }],
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert!(all(&doc, "devices/interface/mtu").is_empty());
}

#[test]
fn the_nic_model_is_the_guests_choice() {
    let spec = DomainSpec {
        interfaces: vec![InterfaceSpec {
            model: NicModel::E1000e,
            ..kernel_spec().interfaces[0].clone()
        }],
        ..kernel_spec()
    };
    let doc_text = spec.to_xml().unwrap();
    let doc = Document::parse(&doc_text).unwrap();
    assert_eq!(attr(one(&doc, "devices/interface/model"), "type"), "e1000e");
}

fn windows_platform() -> Platform {
    Platform {
        topology: Some(CpuTopology {
            sockets: 1,
            cores: 2,
            threads: 1,
        }),
        cpu_model: Some("Skylake-Server".into()),
        features: Features {
            acpi: true,
            apic: false,
            smm: true,
            hyperv: vec![HypervFeature::Relaxed, HypervFeature::Spinlocks(8191)],
        },
        clock: Clock {
            offset: ClockOffset::Timezone("Europe/Paris".into()),
            timers: vec![Timer {
                name: "hpet".into(),
                present: Some(false),
                tick_policy: None,
                track: None,
            }],
        },
        smbios_serial: Some("SN-42".into()),
    }
}

#[test]
fn the_platform_under_kvm_has_the_model_hyperv_and_topology() {
    let spec = DomainSpec {
        accel: Accel::Kvm,
        platform: windows_platform(),
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(one(&doc, "cpu"), "mode"), "custom");
    assert_eq!(text(&doc, "cpu/model"), "Skylake-Server");
    let topology = one(&doc, "cpu/topology");
    assert_eq!(
        (
            attr(topology, "sockets"),
            attr(topology, "cores"),
            attr(topology, "threads")
        ),
        ("1", "2", "1")
    );
    one(&doc, "features/acpi");
    assert!(all(&doc, "features/apic").is_empty());
    assert_eq!(attr(one(&doc, "features/smm"), "state"), "on");
    assert_eq!(attr(one(&doc, "features/hyperv/relaxed"), "state"), "on");
    assert_eq!(attr(one(&doc, "features/hyperv/spinlocks"), "retries"), "8191");
    let clock = one(&doc, "clock");
    assert_eq!(
        (attr(clock, "offset"), attr(clock, "timezone")),
        ("timezone", "Europe/Paris")
    );
    assert_eq!(attr(one(&doc, "clock/timer"), "present"), "no");
    assert_eq!(text(&doc, "sysinfo/system/entry"), "SN-42");
    assert_eq!(attr(one(&doc, "os/smbios"), "mode"), "sysinfo");
}

#[test]
fn the_emulator_keeps_its_cpu_model_and_has_no_hyperv() {
    let spec = DomainSpec {
        platform: windows_platform(),
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(text(&doc, "cpu/model"), "qemu64");
    assert!(all(&doc, "features/hyperv").is_empty());
    one(&doc, "cpu/topology");
    let wrong = DomainSpec { vcpus: 3, ..spec };
    assert!(matches!(
        wrong.to_xml(),
        Err(DomainSpecError::Topology { topology: 2, vcpus: 3 })
    ));
}

#[test]
fn without_a_serial_console_or_graphics_neither_is_written() {
    let spec = DomainSpec {
        console: None,
        vnc_socket: None,
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert!(all(&doc, "devices/serial").is_empty());
    assert!(all(&doc, "devices/console").is_empty());
    assert!(all(&doc, "devices/graphics").is_empty());
}

#[test]
fn serial_console_binds_a_socket_and_logs() {
    let xml = kernel_spec().to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(one(&doc, "devices/serial"), "type"), "unix");
    let source = one(&doc, "devices/serial/source");
    assert_eq!(
        (attr(source, "mode"), attr(source, "path")),
        ("bind", "/run/vmlet/console.sock")
    );
    let log = one(&doc, "devices/serial/log");
    assert_eq!(
        (attr(log, "file"), attr(log, "append")),
        ("/run/vmlet/console.log", "on")
    );
    assert_eq!(
        attr(one(&doc, "devices/console/source"), "path"),
        "/run/vmlet/console.sock"
    );
    assert_eq!(attr(one(&doc, "devices/console/target"), "type"), "serial");
}

#[test]
fn only_the_devices_asked_for() {
    let xml = kernel_spec().to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    let usb = one(&doc, "devices/controller");
    assert_eq!((attr(usb, "type"), attr(usb, "model")), ("usb", "none"));
    assert_eq!(attr(one(&doc, "devices/memballoon"), "model"), "none");
    assert_eq!(attr(one(&doc, "devices/rng"), "model"), "virtio");
    for absent in ["graphics", "video", "channel", "sound", "disk", "input"] {
        assert!(
            all(&doc, &format!("devices/{absent}")).is_empty(),
            "unexpected <{absent}>"
        );
    }
}

#[test]
fn vnc_and_guest_agent_on_unix_sockets() {
    let spec = DomainSpec {
        vnc_socket: Some("/run/vmlet/vnc.sock".into()),
        guest_agent_socket: Some("/run/vmlet/guest-agent.sock".into()),
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(attr(one(&doc, "devices/graphics"), "type"), "vnc");
    let listen = one(&doc, "devices/graphics/listen");
    assert_eq!(
        (attr(listen, "type"), attr(listen, "socket")),
        ("socket", "/run/vmlet/vnc.sock")
    );
    one(&doc, "devices/video/model");
    assert_eq!(
        attr(one(&doc, "devices/channel/source"), "path"),
        "/run/vmlet/guest-agent.sock"
    );
    let target = one(&doc, "devices/channel/target");
    assert_eq!(
        (attr(target, "type"), attr(target, "name")),
        ("virtio", "org.qemu.guest_agent.0")
    );
}

#[test]
fn user_values_cannot_inject_markup() {
    let cmdline = "console=ttyS0 x='</cmdline></os><devices><disk/></devices>' && y=\"<\"";
    let spec = DomainSpec {
        boot: Boot::Kernel {
            kernel: "/guest/vmlinux<'&'>".into(),
            initrd: None,
            cmdline: cmdline.to_owned(),
        },
        ..kernel_spec()
    };
    let xml = spec.to_xml().unwrap();
    let doc = Document::parse(&xml).unwrap();
    assert_eq!(text(&doc, "os/cmdline"), cmdline);
    assert_eq!(text(&doc, "os/kernel"), "/guest/vmlinux<'&'>");
    assert!(all(&doc, "os/initrd").is_empty());
    assert!(all(&doc, "devices/disk").is_empty());
}

#[test]
fn invalid_specs_are_refused() {
    let with = |change: fn(&mut DomainSpec)| {
        let mut spec = kernel_spec();
        change(&mut spec);
        spec.to_xml().unwrap_err()
    };
    assert_eq!(
        with(|s| s.name = String::new()),
        DomainSpecError::InvalidName(String::new())
    );
    assert_eq!(
        with(|s| s.name = "a/b".to_owned()),
        DomainSpecError::InvalidName("a/b".to_owned())
    );
    assert_eq!(with(|s| s.vcpus = 0), DomainSpecError::NoVcpus);
    assert_eq!(with(|s| s.memory_mib = 0), DomainSpecError::NoMemory);
    assert_eq!(
        with(|s| s.interfaces[0].tap = "tap\u{7}".to_owned()),
        DomainSpecError::Xml(XmlError::ForbiddenChar('\u{7}'))
    );
}

#[test]
fn accel_parses_case_insensitively() {
    assert_eq!("kvm".parse(), Ok(Accel::Kvm));
    assert_eq!(" TCG\n".parse(), Ok(Accel::Tcg));
    assert_eq!("hvf".parse::<Accel>(), Err(UnknownAccel("hvf".to_owned())));
    assert_eq!(Accel::Tcg.to_string().parse(), Ok(Accel::Tcg));
}
