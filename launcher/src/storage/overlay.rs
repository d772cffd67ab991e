//! A containerDisk's copy-on-write overlay: a qcow2 file in the pod that records the guest's writes, backed by the
//! image's disk, which is only ever read. Making one reads the backing file's header, never its data, so it takes
//! milliseconds whatever the image's size (KubeVirt's users wait for a full copy instead).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmlet_domain::DiskFormat;

/// qcow2's magic number, the first four bytes of every qcow2 file.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read the image's disk {}", .0.display())]
    Backing(PathBuf, #[source] std::io::Error),
    #[error("cannot create the overlay {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
    #[error("qemu-img could not create the overlay {}: {message}", .path.display())]
    QemuImg { path: PathBuf, message: String },
}

/// The disk format of `path`, from its first bytes: qcow2 or raw.
pub fn format_of(path: &Path) -> std::io::Result<DiskFormat> {
    let mut magic = [0; 4];
    let mut file = std::fs::File::open(path)?;
    let read = file.read(&mut magic)?;
    Ok(if read == 4 && magic == QCOW2_MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
}

/// Makes the overlay at `overlay` on `backing` unless it exists: a launcher restarted in the same pod keeps the
/// guest's writes.
pub fn ensure(overlay: &Path, backing: &Path) -> Result<(), OverlayError> {
    if overlay.exists() {
        return Ok(());
    }
    // The canonical path: the overlay records it, and it must not depend on a link the pod may change.
    let backing = backing
        .canonicalize()
        .map_err(|e| OverlayError::Backing(backing.to_owned(), e))?;
    let format = format_of(&backing).map_err(|e| OverlayError::Backing(backing.clone(), e))?;
    let format = match format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    if let Some(dir) = overlay.parent() {
        std::fs::create_dir_all(dir).map_err(|e| OverlayError::Create(overlay.to_owned(), e))?;
    }
    // Written beside and renamed, so that a launcher killed half-way leaves no overlay to be taken for a good one.
    let partial = overlay.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut options = String::from("backing_file=");
    // qemu-img's option syntax doubles a comma inside a value.
    options.push_str(&backing.to_string_lossy().replace(',', ",,"));
    options.push_str(",backing_fmt=");
    options.push_str(format);
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(&options)
        .arg(&partial)
        .output()
        .map_err(|e| OverlayError::Create(overlay.to_owned(), e))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(OverlayError::QemuImg {
            path: overlay.to_owned(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&partial, overlay).map_err(|e| OverlayError::Create(overlay.to_owned(), e))
}
