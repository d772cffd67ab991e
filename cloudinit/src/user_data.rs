//! SSH keys merged into user data, whatever kind it is, the way cloud-init 22.4 tells the kinds apart
//! (`user_data.convert_string` and `handlers.type_from_starts_with`).

use base64::Engine;
use serde_yaml::Value;

use crate::Error;

const AUTHORIZED_KEYS: &str = "ssh_authorized_keys";

/// How cloud-init takes a user data blob.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    CloudConfig,
    /// A MIME message, whose parts cloud-init walks.
    Mime,
    Gzip,
    /// A shell script, an include list, a boothook, a cloud-config archive, a Jinja template, or text cloud-init
    /// ignores: a part of its own whose type cloud-init finds from its first line.
    Other,
}

fn kind(data: &[u8]) -> Kind {
    if data.starts_with(&[0x1f, 0x8b]) {
        return Kind::Gzip;
    }
    // cloud-init parses as MIME whatever names a MIME-Version header early on.
    let head = &data[..data.len().min(4096)];
    if head.to_ascii_lowercase().windows(13).any(|w| w == b"mime-version:") {
        return Kind::Mime;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return Kind::Other;
    };
    // The longest matching prefix wins, so the archive and JSONP variants are not cloud-config.
    let start = text.trim_start().to_lowercase();
    if start.starts_with("#cloud-config")
        && !start.starts_with("#cloud-config-archive")
        && !start.starts_with("#cloud-config-jsonp")
    {
        Kind::CloudConfig
    } else {
        Kind::Other
    }
}

/// `user_data` that gives the default user `keys` as well, which are trimmed, unique and not empty.
///
/// A cloud-config is only read, never written back: serde_yaml writes YAML 1.2, and cloud-init reads it as YAML 1.1,
/// where a plain `yes` or `on` is a boolean and `0644` an octal number, so a round trip changes values (`'on'` comes
/// back as `on`). Keys it lacks reach it in a cloud-config part of their own, which cloud-init merges into it.
pub(crate) fn with_keys(user_data: Option<&[u8]>, keys: &[String]) -> Result<Vec<u8>, Error> {
    let Some(data) = user_data.filter(|d| !d.is_empty()) else {
        return Ok(keys_cloud_config(keys, false).into_bytes());
    };
    match kind(data) {
        Kind::CloudConfig => {
            let present = authorized_keys(data)?;
            let missing: Vec<String> = keys.iter().filter(|k| !present.contains(k)).cloned().collect();
            if missing.is_empty() {
                return Ok(data.to_vec());
            }
            Ok(multipart(Part::Other(data), &missing))
        }
        Kind::Gzip => Err(Error::CompressedUserData),
        Kind::Mime => Ok(multipart(Part::Mime(data), keys)),
        Kind::Other => Ok(multipart(Part::Other(data), keys)),
    }
}

/// The keys a cloud-config already gives, once it is known to be one cloud-init can take.
fn authorized_keys(data: &[u8]) -> Result<Vec<String>, Error> {
    let map = match serde_yaml::from_slice(data).map_err(Error::CloudConfigYaml)? {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(map) => map,
        _ => return Err(Error::CloudConfigNotMapping),
    };
    match map.get(AUTHORIZED_KEYS) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(list)) => Ok(list
            .iter()
            .filter_map(|k| k.as_str())
            .map(|k| k.trim().to_string())
            .collect()),
        Some(_) => Err(Error::AuthorizedKeysNotList),
    }
}

/// A cloud-config of `keys` alone. Each key is double-quoted (JSON's escapes are YAML's), so that no key can read
/// as anything but a string. `append` asks cloud-init to add the keys to those of earlier parts: it merges parts
/// with `dict(no_replace)+list(replace)` unless a part says otherwise, which would drop them.
fn keys_cloud_config(keys: &[String], append: bool) -> String {
    let mut doc = String::from("#cloud-config\n");
    if append {
        doc.push_str("merge_how: dict(recurse_array,no_replace)+list(append)\n");
    }
    doc.push_str(&format!("{AUTHORIZED_KEYS}:\n"));
    for key in keys {
        doc.push_str(&format!("- {}\n", serde_json::Value::from(key.as_str())));
    }
    doc
}

enum Part<'a> {
    Mime(&'a [u8]),
    Other(&'a [u8]),
}

/// A multipart/mixed message of the user's data and a cloud-config part with the keys, which cloud-init appends to
/// any the user's parts give.
fn multipart(user: Part, keys: &[String]) -> Vec<u8> {
    let user_bytes = match user {
        Part::Mime(d) | Part::Other(d) => d,
    };
    let boundary = boundary(user_bytes);
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n").into_bytes();

    out.extend_from_slice(format!("--{boundary}\n").as_bytes());
    match user {
        // A message nested whole: its own headers are the part's, so cloud-init walks into its parts as before.
        Part::Mime(data) => {
            out.extend_from_slice(data);
            if !data.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        // This type makes cloud-init find the real one from the first line, as for user data not in MIME.
        Part::Other(data) => out.extend_from_slice(&encoded_part("text/x-not-multipart", "user-data", data)),
    }

    let keys_doc = keys_cloud_config(keys, true);
    out.extend_from_slice(format!("--{boundary}\n").as_bytes());
    out.extend_from_slice(&encoded_part("text/cloud-config", "ssh-keys", keys_doc.as_bytes()));
    out.extend_from_slice(format!("--{boundary}--\n").as_bytes());
    out
}

/// A part in base64, so that no byte of it can end the message or be changed on the way.
fn encoded_part(content_type: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut part = format!(
        "Content-Type: {content_type}\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\
         Content-Disposition: attachment; filename=\"{filename}\"\n\n"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    for line in encoded.as_bytes().chunks(76) {
        part.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        part.push('\n');
    }
    part.into_bytes()
}

/// A boundary the user's data does not contain, so that it cannot end a part early.
fn boundary(data: &[u8]) -> String {
    (0..)
        .map(|n| format!("vmlet-seed-{n}"))
        .find(|b| !data.windows(b.len()).any(|w| w == b.as_bytes()))
        .expect("some boundary is absent from finite data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_as_cloud_init_tells_them() {
        assert_eq!(kind(b"#cloud-config\npackages: [vim]\n"), Kind::CloudConfig);
        assert_eq!(kind(b"  \n#Cloud-Config\n"), Kind::CloudConfig);
        assert_eq!(
            kind(b"#cloud-config-archive\n- type: text/x-shellscript\n"),
            Kind::Other
        );
        assert_eq!(kind(b"#cloud-config-jsonp\n[]\n"), Kind::Other);
        assert_eq!(kind(b"#!/bin/sh\necho hi\n"), Kind::Other);
        assert_eq!(kind(b"#include\nhttp://example.test/a\n"), Kind::Other);
        assert_eq!(kind(b"## template: jinja\n#cloud-config\n"), Kind::Other);
        assert_eq!(
            kind(b"Content-Type: multipart/mixed; boundary=b\nMIME-Version: 1.0\n\n--b--\n"),
            Kind::Mime
        );
        assert_eq!(kind(&[0x1f, 0x8b, 8, 0]), Kind::Gzip);
        assert_eq!(kind(&[0xff, 0xfe, 0]), Kind::Other);
    }

    #[test]
    fn boundary_avoids_the_data() {
        assert_eq!(boundary(b"#!/bin/sh\n"), "vmlet-seed-0");
        assert_eq!(boundary(b"echo vmlet-seed-0 vmlet-seed-1\n"), "vmlet-seed-2");
    }
}
