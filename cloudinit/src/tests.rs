use super::*;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaaa alice@example.test";
const KEY_B: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABbbb bob@example.test";

fn seed() -> Seed {
    Seed {
        instance_id: "vm1.default".into(),
        hostname: "vm1".into(),
        ..Seed::default()
    }
}

fn with_keys(user_data: Option<&str>) -> Seed {
    Seed {
        user_data: user_data.map(|u| u.as_bytes().to_vec()),
        ssh_keys: vec![KEY_A.into(), format!("{KEY_B}\n")],
        ..seed()
    }
}

/// The files as (path, text) pairs.
fn texts(seed: &Seed, flavor: Flavor) -> Vec<(&'static str, String)> {
    files(seed, flavor)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, String::from_utf8(f.contents).unwrap()))
        .collect()
}

fn user_data(seed: &Seed) -> String {
    let files = texts(seed, Flavor::NoCloud);
    files.into_iter().find(|(p, _)| *p == "user-data").unwrap().1
}

fn base64_parts(message: &str) -> Vec<String> {
    use base64::Engine;
    message
        .split("\n\n")
        .skip(2)
        .map(|body| {
            let b64: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
        })
        .collect()
}

const KEYS_PART: &str = "#cloud-config\nmerge_how: dict(recurse_array,no_replace)+list(append)\nssh_authorized_keys:\n\
     - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaaa alice@example.test\"\n\
     - \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABbbb bob@example.test\"\n";

#[test]
fn labels() {
    assert_eq!(Flavor::NoCloud.label(), "cidata");
    assert_eq!(Flavor::ConfigDrive.label(), "config-2");
}

#[test]
fn nocloud_files() {
    let seed = Seed {
        user_data: Some(b"#cloud-config\npackages: [vim]\n".to_vec()),
        network_data: Some(b"version: 2\nethernets: {}\n".to_vec()),
        ..seed()
    };
    assert_eq!(
        texts(&seed, Flavor::NoCloud),
        [
            (
                "meta-data",
                "instance-id: \"vm1.default\"\nlocal-hostname: \"vm1\"\n".to_string()
            ),
            ("user-data", "#cloud-config\npackages: [vim]\n".to_string()),
            ("network-config", "version: 2\nethernets: {}\n".to_string()),
        ]
    );
}

#[test]
fn nocloud_network_data_alone_still_has_user_data() {
    let seed = Seed {
        network_data: Some(b"version: 1\n".to_vec()),
        ..seed()
    };
    assert_eq!(
        texts(&seed, Flavor::NoCloud),
        [
            (
                "meta-data",
                "instance-id: \"vm1.default\"\nlocal-hostname: \"vm1\"\n".to_string()
            ),
            ("user-data", String::new()),
            ("network-config", "version: 1\n".to_string()),
        ]
    );
}

#[test]
fn nocloud_metadata_quotes_what_yaml_would_misread() {
    let seed = Seed {
        instance_id: "123".into(),
        hostname: "yes".into(),
        ..seed()
    };
    assert_eq!(
        texts(&seed, Flavor::NoCloud)[0].1,
        "instance-id: \"123\"\nlocal-hostname: \"yes\"\n"
    );
}

#[test]
fn config_drive_files() {
    let seed = Seed {
        user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
        network_data: Some(br#"{"links":[],"networks":[],"services":[]}"#.to_vec()),
        ..seed()
    };
    assert_eq!(
        texts(&seed, Flavor::ConfigDrive),
        [
            (
                "openstack/latest/meta_data.json",
                r#"{"uuid":"vm1.default","hostname":"vm1","name":"vm1"}"#.to_string()
            ),
            ("openstack/latest/user_data", "#!/bin/sh\necho hi\n".to_string()),
            (
                "openstack/latest/network_data.json",
                r#"{"links":[],"networks":[],"services":[]}"#.to_string()
            ),
        ]
    );
}

#[test]
fn config_drive_without_user_data_has_metadata_only() {
    assert_eq!(
        texts(&seed(), Flavor::ConfigDrive),
        [(
            "openstack/latest/meta_data.json",
            r#"{"uuid":"vm1.default","hostname":"vm1","name":"vm1"}"#.to_string()
        )]
    );
}

#[test]
fn config_drive_keys_in_metadata_leave_user_data_alone() {
    let seed = Seed {
        key_propagation: KeyPropagation::ConfigDrive,
        ..with_keys(Some("#cloud-config\n"))
    };
    assert_eq!(
        texts(&seed, Flavor::ConfigDrive),
        [
            (
                "openstack/latest/meta_data.json",
                format!(
                    r#"{{"uuid":"vm1.default","hostname":"vm1","name":"vm1","public_keys":{{"0":"{KEY_A}","1":"{KEY_B}"}}}}"#
                )
            ),
            ("openstack/latest/user_data", "#cloud-config\n".to_string()),
        ]
    );
}

#[test]
fn config_drive_propagation_needs_config_drive() {
    let seed = Seed {
        key_propagation: KeyPropagation::ConfigDrive,
        ..with_keys(None)
    };
    assert!(matches!(files(&seed, Flavor::NoCloud), Err(Error::KeysNeedConfigDrive)));
}

#[test]
fn nocloud_propagation_works_on_a_config_drive_too() {
    let files = texts(&with_keys(None), Flavor::ConfigDrive);
    assert_eq!(files[0].1, r#"{"uuid":"vm1.default","hostname":"vm1","name":"vm1"}"#);
    assert_eq!(
        files[1],
        (
            "openstack/latest/user_data",
            format!("#cloud-config\nssh_authorized_keys:\n- \"{KEY_A}\"\n- \"{KEY_B}\"\n")
        )
    );
}

#[test]
fn keys_without_user_data_make_a_cloud_config() {
    assert_eq!(
        user_data(&with_keys(None)),
        format!("#cloud-config\nssh_authorized_keys:\n- \"{KEY_A}\"\n- \"{KEY_B}\"\n")
    );
    assert_eq!(
        user_data(&with_keys(Some(""))),
        format!("#cloud-config\nssh_authorized_keys:\n- \"{KEY_A}\"\n- \"{KEY_B}\"\n")
    );
}

#[test]
fn keys_join_a_cloud_config_left_byte_for_byte() {
    // Values a YAML 1.2 round trip would change for cloud-init's YAML 1.1 reader.
    let original = "#cloud-config\n# a comment\nssh_pwauth: 'on'\nwrite_files:\n- path: /a\n  permissions: 0644\n";
    let message = user_data(&with_keys(Some(original)));
    assert!(message.starts_with("Content-Type: multipart/mixed;"), "{message}");
    assert_eq!(base64_parts(&message), [original, KEYS_PART]);
}

#[test]
fn keys_a_cloud_config_has_are_not_given_again() {
    let original =
        format!("#cloud-config\nssh_authorized_keys:\n- ssh-ed25519 AAAAexisting ops@example.test\n- {KEY_A}\n");
    let message = user_data(&with_keys(Some(&original)));
    let keys_part = format!(
        "#cloud-config\nmerge_how: dict(recurse_array,no_replace)+list(append)\nssh_authorized_keys:\n- \"{KEY_B}\"\n"
    );
    assert_eq!(base64_parts(&message), [original.clone(), keys_part]);

    let all = format!("{original}- {KEY_B}\n");
    assert_eq!(user_data(&with_keys(Some(&all))), all);
}

#[test]
fn keys_join_an_empty_cloud_config() {
    for original in ["#cloud-config\n", "#cloud-config\nssh_authorized_keys:\n"] {
        let message = user_data(&with_keys(Some(original)));
        assert_eq!(base64_parts(&message), [original, KEYS_PART]);
    }
}

#[test]
fn keys_are_given_once() {
    let seed = Seed {
        ssh_keys: vec![KEY_A.into(), format!("  {KEY_A}\n")],
        ..seed()
    };
    assert_eq!(
        user_data(&seed),
        format!("#cloud-config\nssh_authorized_keys:\n- \"{KEY_A}\"\n")
    );
}

#[test]
fn keys_join_a_shell_script_in_a_multipart_message() {
    let script = "#!/bin/sh\necho hi\n";
    let message = user_data(&with_keys(Some(script)));
    assert!(
        message.starts_with(
            "Content-Type: multipart/mixed; boundary=\"vmlet-seed-0\"\nMIME-Version: 1.0\n\n--vmlet-seed-0\n\
             Content-Type: text/x-not-multipart\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"user-data\"\n\n"
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "\n--vmlet-seed-0\nContent-Type: text/cloud-config\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"ssh-keys\"\n\n"
        ),
        "{message}"
    );
    assert!(message.ends_with("\n--vmlet-seed-0--\n"), "{message}");
    assert_eq!(base64_parts(&message), [script, KEYS_PART]);
}

#[test]
fn keys_join_an_include_list_and_a_cloud_config_archive_alike() {
    for original in [
        "#include\nhttp://example.test/a\n",
        "#cloud-config-archive\n- type: text/x-shellscript\n",
    ] {
        let message = user_data(&with_keys(Some(original)));
        assert_eq!(base64_parts(&message), [original, KEYS_PART]);
    }
}

#[test]
fn keys_join_a_multipart_message_nested_whole() {
    let original = "Content-Type: multipart/mixed; boundary=\"b\"\nMIME-Version: 1.0\n\n--b\n\
                    Content-Type: text/x-shellscript\n\n#!/bin/sh\necho vmlet-seed-0\n--b--\n";
    let message = user_data(&with_keys(Some(original)));
    let expected_start = format!(
        "Content-Type: multipart/mixed; boundary=\"vmlet-seed-1\"\nMIME-Version: 1.0\n\n--vmlet-seed-1\n{original}--vmlet-seed-1\nContent-Type: text/cloud-config\n"
    );
    assert!(message.starts_with(&expected_start), "{message}");
    assert!(message.ends_with("\n--vmlet-seed-1--\n"), "{message}");
}

#[test]
fn refusals() {
    let refusal = |seed: Seed| files(&seed, Flavor::NoCloud).unwrap_err().to_string();
    assert_eq!(
        refusal(Seed {
            instance_id: " ".into(),
            ..seed()
        }),
        "the instance id is empty"
    );
    assert_eq!(
        refusal(Seed {
            hostname: String::new(),
            ..seed()
        }),
        "the hostname is empty"
    );
    assert_eq!(
        refusal(Seed {
            ssh_keys: vec![KEY_A.into(), "\n".into()],
            ..seed()
        }),
        "ssh key 1 is empty or spans several lines"
    );
    assert_eq!(
        refusal(Seed {
            ssh_keys: vec![format!("{KEY_A}\n{KEY_B}")],
            ..seed()
        }),
        "ssh key 0 is empty or spans several lines"
    );
    assert_eq!(
        refusal(Seed {
            user_data: Some(vec![b'#'; MAX_DATA_BYTES + 1]),
            ..seed()
        }),
        "user data is 1048577 bytes, over the limit of 1048576"
    );
    assert_eq!(
        refusal(Seed {
            network_data: Some(vec![b' '; MAX_DATA_BYTES + 1]),
            ..seed()
        }),
        "network data is 1048577 bytes, over the limit of 1048576"
    );
    // Within the limit alone, over it once the keys are merged in.
    let mut script = b"#!/bin/sh\n".to_vec();
    script.resize(MAX_DATA_BYTES, b'#');
    assert_eq!(
        refusal(Seed {
            user_data: Some(script),
            ..with_keys(None)
        }),
        "user data with ssh keys is 1417190 bytes, over the limit of 1048576"
    );
    assert_eq!(
        refusal(with_keys(Some("#cloud-config\nusers: [default\n"))),
        "the cloud-config in user data is not valid YAML"
    );
    assert_eq!(
        refusal(with_keys(Some("#cloud-config\n- a\n"))),
        "the cloud-config in user data is not a mapping"
    );
    assert_eq!(
        refusal(with_keys(Some("#cloud-config\nssh_authorized_keys: ssh-rsa AAAA\n"))),
        "ssh_authorized_keys in the user data's cloud-config is not a list"
    );
    let gzip = Seed {
        user_data: Some(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
        ..with_keys(None)
    };
    assert_eq!(
        refusal(gzip),
        "user data is gzip-compressed, so ssh keys cannot be merged into it"
    );
}

#[test]
fn gzip_user_data_without_keys_passes_as_is() {
    let compressed = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let seed = Seed {
        user_data: Some(compressed.clone()),
        ..seed()
    };
    assert_eq!(files(&seed, Flavor::NoCloud).unwrap()[1].contents, compressed);
}
