//! The seed's ISO 9660 image, written by `hadris-iso` in process (measured against genisoimage in
//! docs/benchmarks.md).
//!
//! ISO 9660 itself only has upper-case 8.3 names (`META_DAT;1`), so the image carries the real names twice, as
//! KubeVirt's `genisoimage -joliet -rock` does: in Rock Ridge records, which Linux reads first, and in a Joliet tree
//! for readers without Rock Ridge.

use std::io::Cursor;
use std::path::Path;

use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{InputEntry, InputEntryKind, InputTree, IsoCreationError, IsoImageWriter};

use crate::{Error, SeedFile};

/// Writes `files` to a new ISO 9660 image at `path`, with volume label `label` (see [`crate::Flavor::label`]).
pub fn write_iso(files: &[SeedFile], label: &str, path: &Path) -> Result<(), Error> {
    let image = iso_image(files, label)?;
    std::fs::write(path, image).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn iso_image(files: &[SeedFile], label: &str) -> Result<Vec<u8>, Error> {
    let mut root = Vec::new();
    for file in files {
        insert(&mut root, file.path, &file.contents);
    }
    let options = IsoFormatOptions {
        // Stored as given, lower case and dash included: cloud-init matches the label exactly, as blkid reports it.
        volume_name: label.to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: None,
        sector_size: 2048,
        features: CreationFeatures::extensions(),
        path_separator: PathSeparator::ForwardSlash,
        strict_charset: false,
    };
    let tree = InputTree::new(PathSeparator::ForwardSlash, root);
    let image = IsoImageWriter::create(Cursor::new(Vec::new()), tree, options)
        .map_err(|IsoCreationError::Io(e)| Error::Iso(std::io::Error::other(e.to_string())))?;
    Ok(image.into_inner())
}

/// Puts a file at `path` (`/`-separated) into the tree, making the directories on the way.
fn insert(entries: &mut Vec<InputEntry>, path: &str, contents: &[u8]) {
    match path.split_once('/') {
        None => entries.push(InputEntry::file(path, contents)),
        Some((dir, rest)) => {
            let existing = entries
                .iter()
                .position(|e| *e.name == dir && matches!(e.kind, InputEntryKind::Directory(_)));
            let index = existing.unwrap_or_else(|| {
                entries.push(InputEntry::directory(dir, Vec::new()));
                entries.len() - 1
            });
            if let InputEntryKind::Directory(children) = &mut entries[index].kind {
                insert(children, rest, contents);
            }
        }
    }
}
