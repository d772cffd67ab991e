//! A spec's disk as the domain's: bus, media and the options KubeVirt's disks carry.

use vmlet_api::Disk;
use vmlet_domain::{DiskBus, DiskCache, DiskMedia, DiskSource, DiskSpec};

/// The domain's disk for the spec's `disk`, whose data is `source`. Validation has checked every value.
pub fn spec(disk: &Disk, source: DiskSource) -> DiskSpec {
    let (media, target) = match &disk.cdrom {
        Some(cdrom) => (DiskMedia::Cdrom, Some(cdrom)),
        None => (DiskMedia::Disk, disk.disk.as_ref()),
    };
    let bus = match target.and_then(|t| t.bus.as_deref()) {
        Some("sata") => DiskBus::Sata,
        Some("scsi") => DiskBus::Scsi,
        Some(_) => DiskBus::Virtio,
        // virtio cannot carry a CD-ROM, and q35 has no IDE.
        None if media == DiskMedia::Cdrom => DiskBus::Sata,
        None => DiskBus::Virtio,
    };
    let cache = match disk.cache.as_deref() {
        Some("none") => Some(DiskCache::None),
        Some("writethrough") => Some(DiskCache::Writethrough),
        Some("writeback") => Some(DiskCache::Writeback),
        _ => None,
    };
    DiskSpec {
        readonly: target.and_then(|t| t.readonly).unwrap_or(media == DiskMedia::Cdrom),
        source,
        media,
        bus,
        boot_order: disk.boot_order,
        serial: disk.serial.clone(),
        cache,
    }
}
