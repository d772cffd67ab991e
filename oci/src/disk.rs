//! The disk of a containerDisk: the one regular file under `/disk/`, or a path the caller names.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::unpack;

/// Where KubeVirt's containerDisk format puts the disk.
pub const DISK_DIR: &str = "disk";

/// How to find the disk in an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DiskLookup {
    /// The one regular file under `/disk/` (at any depth); none or several is an error.
    #[default]
    Find,
    /// This path inside the image, such as `/disk/fedora.qcow2`.
    At(PathBuf),
    /// The image is not a containerDisk (a kernel and initrd, say): look for nothing.
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// qcow2 by its magic (`QFI\xfb`); anything else is taken as raw, as QEMU does for a raw image.
    pub fn detect(header: &[u8]) -> DiskFormat {
        if header.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

/// A disk image inside an unpacked image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub size: u64,
}

/// Looks for the disk under `rootfs`. Symlinks are never followed: a disk must be a regular file of the image.
pub(crate) fn find(reference: &str, rootfs: &Path, lookup: &DiskLookup) -> Result<Option<Disk>, Error> {
    let path = match lookup {
        DiskLookup::Skip => return Ok(None),
        DiskLookup::At(path) => unpack::relative(path.strip_prefix("/").unwrap_or(path))
            .ok()
            .and_then(|rel| unpack::existing_file(rootfs, &rel))
            .ok_or_else(|| Error::NoDisk {
                reference: reference.to_owned(),
                path: path.clone(),
            })?,
        DiskLookup::Find => {
            let mut files = Vec::new();
            regular_files(&rootfs.join(DISK_DIR), &mut files);
            files.sort();
            match files.len() {
                0 => {
                    return Err(Error::NoDisk {
                        reference: reference.to_owned(),
                        path: Path::new("/").join(DISK_DIR),
                    });
                }
                1 => files.remove(0),
                _ => {
                    let disks = files
                        .iter()
                        .map(|f| Path::new("/").join(f.strip_prefix(rootfs).unwrap_or(f)))
                        .collect();
                    return Err(Error::SeveralDisks {
                        reference: reference.to_owned(),
                        disks,
                    });
                }
            }
        }
    };
    let mut header = [0u8; 4];
    let mut file = unpack::open_no_follow(&path).map_err(Error::io(reference, "open", &path))?;
    let read = file.read(&mut header).map_err(Error::io(reference, "read", &path))?;
    let size = file.metadata().map_err(Error::io(reference, "inspect", &path))?.len();
    Ok(Some(Disk {
        format: DiskFormat::detect(&header[..read]),
        path,
        size,
    }))
}

fn regular_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            regular_files(&entry.path(), found);
        } else if kind.is_file() {
            found.push(entry.path());
        }
    }
}
