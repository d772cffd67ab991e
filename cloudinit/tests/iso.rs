//! Each flavor's image, read back by other readers: isoinfo (the label; the Rock Ridge and Joliet trees), the
//! kernel when it has iso9660, and cloud-init 22.4's own NoCloud and ConfigDrive readers on what Linux shows.
//!
//! Needs root, genisoimage (isoinfo), Debian's python3 with python3-yaml, -configobj and -requests, and apt-get to
//! fetch the cloud-init package, whose source is unpacked into the test's scratch directory, never installed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vmlet_cloudinit::{Flavor, KeyPropagation, Seed, SeedFile, files, write_iso};
use vmlet_testkit::{ScratchDir, require_root, run};

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaaa alice@example.test";
const KEY_B: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABbbb bob@example.test";

fn seed(key_propagation: KeyPropagation, network_data: &str) -> Seed {
    Seed {
        instance_id: "vm1.default".into(),
        hostname: "vm1".into(),
        user_data: Some(b"#!/bin/sh\necho hello from user data\n".to_vec()),
        network_data: Some(network_data.as_bytes().to_vec()),
        ssh_keys: vec![KEY_A.into(), KEY_B.into()],
        key_propagation,
    }
}

/// Writes the image and checks every reader sees `files` under their names; returns a directory holding what Linux
/// shows (the Rock Ridge tree).
fn write_and_read(scratch: &ScratchDir, files: &[SeedFile], label: &str) -> PathBuf {
    let iso = scratch.join(format!("{label}.iso"));
    write_iso(files, label, &iso).unwrap();
    let iso_str = iso.to_str().unwrap();

    let info = run(Command::new("isoinfo").args(["-d", "-i", iso_str]));
    assert!(info.contains(&format!("Volume id: {label}\n")), "{info}");
    assert!(info.contains("Rock Ridge signatures version 1 found"), "{info}");
    assert!(info.contains("Joliet with UCS level 3 found"), "{info}");

    let mut expected: Vec<String> = files.iter().map(|f| format!("/{}", f.path)).collect();
    for f in files {
        let mut dir = Path::new(f.path).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            expected.push(format!("/{}", d.display()));
            dir = d.parent();
        }
    }
    expected.sort();
    expected.dedup();
    for view in ["-R", "-J"] {
        let listing = run(Command::new("isoinfo").args([view, "-f", "-i", iso_str]));
        let mut names: Vec<String> = listing.lines().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, expected, "isoinfo {view}");
        for f in files {
            let out = Command::new("isoinfo")
                .args([view, "-i", iso_str, "-x", &format!("/{}", f.path)])
                .output()
                .unwrap();
            assert!(out.status.success(), "isoinfo {view} -x {}", f.path);
            assert_eq!(out.stdout, f.contents, "isoinfo {view}: {}", f.path);
        }
    }

    let tree = scratch.join(format!("{label}-tree"));
    for f in files {
        let path = tree.join(f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let out = Command::new("isoinfo")
            .args(["-R", "-i", iso_str, "-x", &format!("/{}", f.path)])
            .output()
            .unwrap();
        std::fs::write(path, out.stdout).unwrap();
    }
    if kernel_reads_iso9660() {
        let mount = scratch.join(format!("{label}-mnt"));
        std::fs::create_dir(&mount).unwrap();
        run(Command::new("mount").args(["-o", "loop,ro", iso_str, mount.to_str().unwrap()]));
        let compared = std::panic::catch_unwind(|| {
            for f in files {
                assert_eq!(
                    std::fs::read(mount.join(f.path)).unwrap(),
                    f.contents,
                    "mounted: {}",
                    f.path
                );
            }
        });
        run(Command::new("umount").arg(&mount));
        compared.unwrap();
    } else {
        eprintln!("this kernel has no iso9660 filesystem: the image is read with isoinfo and cloud-init only");
    }
    tree
}

/// Whether `mount` can read the image here; some kernels (this project's build machine's) are built without it.
fn kernel_reads_iso9660() -> bool {
    let _ = Command::new("modprobe").arg("isofs").output();
    std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.trim_end().ends_with("iso9660"))
}

/// cloud-init's source, from Debian's package, unpacked once per test process.
fn cloud_init(scratch: &ScratchDir) -> PathBuf {
    let dir = scratch.join("cloud-init");
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("apt-get")
        .current_dir(&dir)
        .args(["download", "-qq", "cloud-init"]));
    let deb = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    run(Command::new("dpkg-deb").args(["-x", deb.to_str().unwrap(), dir.join("root").to_str().unwrap()]));
    dir.join("root/usr/lib/python3/dist-packages")
}

/// Runs `script` under Debian's python3 with cloud-init importable, and returns what it printed.
fn python(cloud_init: &Path, script: &str) -> String {
    run(Command::new("/usr/bin/python3")
        .env("PYTHONPATH", cloud_init)
        .args(["-c", script]))
}

/// What cloud-init makes of user data: the keys its cloud-config parts add up to, and the scripts it would run.
const USER_DATA_SCRIPT: &str = r#"
from cloudinit import user_data, util, mergers
msg = user_data.UserDataProcessor({}).process(ud)
cfg, scripts = {}, []
for part in msg.walk():
    if part.is_multipart():
        continue
    payload = util.fully_decoded_payload(part)
    if part.get_content_type() == "text/cloud-config":
        doc = util.load_yaml(payload)
        how = doc.pop("merge_how", None)
        merger = mergers.construct(mergers.string_extract_mergers(how) if how else mergers.default_mergers())
        cfg = merger.merge(cfg, doc)
    elif part.get_content_type() == "text/x-shellscript":
        scripts.append(payload)
print(json.dumps({"keys": cfg.get("ssh_authorized_keys"), "scripts": scripts}))
"#;

#[test]
fn nocloud_image_reads_as_cloud_init_expects() {
    require_root();
    let scratch = ScratchDir::new();
    let seed = seed(
        KeyPropagation::NoCloud,
        "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    );
    let files = files(&seed, Flavor::NoCloud).unwrap();
    let tree = write_and_read(&scratch, &files, "cidata");

    let script = format!(
        "import json\nfrom cloudinit import util\nfrom cloudinit.sources import DataSourceNoCloud as N\n\
         seeded = util.pathprefix2dict({tree:?}, required=['user-data', 'meta-data'], optional=['network-config'])\n\
         data = N._merge_new_seed({{'meta-data': {{}}, 'user-data': b'', 'network-config': None}}, seeded)\n\
         ud = data['user-data']\n{USER_DATA_SCRIPT}\
         print(json.dumps({{'meta': data['meta-data'], 'network': data['network-config']}}))\n",
        tree = tree.to_str().unwrap()
    );
    let out = python(&cloud_init(&scratch), &script);
    let mut lines = out.lines();
    let user: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let rest: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(user["keys"], serde_json::json!([KEY_A, KEY_B]), "{out}");
    assert_eq!(
        user["scripts"],
        serde_json::json!(["#!/bin/sh\necho hello from user data\n"]),
        "{out}"
    );
    assert_eq!(
        rest["meta"],
        serde_json::json!({"instance-id": "vm1.default", "local-hostname": "vm1"}),
        "{out}"
    );
    assert_eq!(
        rest["network"],
        serde_json::json!({"version": 2, "ethernets": {"eth0": {"dhcp4": true}}}),
        "{out}"
    );
}

#[test]
fn keys_reach_a_cloud_config_that_has_its_own() {
    require_root();
    let scratch = ScratchDir::new();
    let user_data =
        format!("#cloud-config\nssh_pwauth: 'on'\nssh_authorized_keys:\n- ssh-ed25519 AAAAown\n- {KEY_A}\n");
    let seed = Seed {
        user_data: Some(user_data.into_bytes()),
        network_data: None,
        ..seed(KeyPropagation::NoCloud, "")
    };
    let files = files(&seed, Flavor::NoCloud).unwrap();
    let tree = write_and_read(&scratch, &files, "cidata");

    let script = format!(
        "import json\nfrom cloudinit import util\nud = util.load_file({path:?}, decode=False)\n{USER_DATA_SCRIPT}",
        path = tree.join("user-data").to_str().unwrap()
    );
    let out = python(&cloud_init(&scratch), &script);
    let user: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        user["keys"],
        serde_json::json!(["ssh-ed25519 AAAAown", KEY_A, KEY_B]),
        "{out}"
    );
}

#[test]
fn config_drive_image_reads_as_cloud_init_expects() {
    require_root();
    let scratch = ScratchDir::new();
    let network = r#"{"links":[{"id":"eth0","type":"phy","ethernet_mac_address":"02:00:00:00:00:01"}],"networks":[{"id":"n0","link":"eth0","type":"ipv4_dhcp"}],"services":[]}"#;
    let seed = seed(KeyPropagation::ConfigDrive, network);
    let files = files(&seed, Flavor::ConfigDrive).unwrap();
    let tree = write_and_read(&scratch, &files, "config-2");

    let script = format!(
        "import json\nfrom cloudinit.sources import DataSourceConfigDrive as C, normalize_pubkey_data\n\
         r = C.read_config_drive({tree:?})\nmd = r['metadata']\n\
         print(json.dumps({{'id': md['instance-id'], 'host': md['local-hostname'], 'name': md['name'], \
         'keys': normalize_pubkey_data(md['public_keys']), 'user': r['userdata'].decode(), \
         'network': r['networkdata']}}))\n",
        tree = tree.to_str().unwrap()
    );
    let out = python(&cloud_init(&scratch), &script);
    let read: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(read["id"], "vm1.default", "{out}");
    assert_eq!(read["host"], "vm1", "{out}");
    assert_eq!(read["name"], "vm1", "{out}");
    assert_eq!(read["keys"], serde_json::json!([KEY_A, KEY_B]), "{out}");
    assert_eq!(read["user"], "#!/bin/sh\necho hello from user data\n", "{out}");
    assert_eq!(
        read["network"],
        serde_json::from_str::<serde_json::Value>(network).unwrap(),
        "{out}"
    );
}
