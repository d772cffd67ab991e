//! Unpacking a layer tar into a directory without trusting it: nothing lands outside the directory, no device node
//! or fifo is made, no set-uid bit survives, and the whole image is bounded in size and entry count.
//!
//! Nothing here follows a symlink: every parent of an entry must be a real directory of the tree (a symlink written
//! by an earlier entry cannot redirect a later one), and an existing entry is removed before its replacement is
//! made. Symlinks themselves are stored as they are; they are never resolved here, and the disk is looked up with
//! the same rule (`crate::disk`).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Bounds on what one image may unpack to, across all of its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the sizes of regular files, as their tar headers declare them.
    pub max_bytes: u64,
    /// Entries of every kind, whiteouts included.
    pub max_entries: u64,
}

impl Default for Limits {
    /// Generous for a containerDisk (one disk file of a few GiB and a handful of directories), small enough that a
    /// hostile image cannot fill the node's disk or inode table.
    fn default() -> Limits {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 100_000,
        }
    }
}

/// What an image has used of its [`Limits`] so far.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    fn entry(&mut self) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_entries,
                what: "entries",
            });
        }
        Ok(())
    }

    fn bytes(&mut self, size: u64) -> Result<(), UnpackError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
                what: "bytes",
            });
        }
        Ok(())
    }
}

/// Why a layer could not be unpacked; the caller adds the image and the layer.
#[derive(Debug)]
pub(crate) enum UnpackError {
    Unsafe {
        path: PathBuf,
        why: &'static str,
    },
    TooLarge {
        limit: u64,
        what: &'static str,
    },
    /// Not a tar (or not gzip), or the stream under it failed.
    Malformed(io::Error),
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Whether `.wh.` entries are OCI whiteouts (true for image layers) or plain names (the files of a layout archive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Whiteouts {
    Apply,
    Ignore,
}

/// Unpacks one tar stream on top of `target`, which holds the layers below it.
pub(crate) fn unpack(
    reader: impl Read,
    target: &Path,
    budget: &mut Budget,
    whiteouts: Whiteouts,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    // Whiteouts hide what lower layers made, never what this layer made, whatever the order inside the tar.
    let mut made_here: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(UnpackError::Malformed)? {
        let mut entry = entry.map_err(UnpackError::Malformed)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let raw = entry.path().map_err(UnpackError::Malformed)?.into_owned();
        let unsafe_entry = |why| UnpackError::Unsafe { path: raw.clone(), why };
        let rel = relative(&raw).map_err(unsafe_entry)?;
        budget.entry()?;
        let Some(name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            // `./`, the root of the layer: the target itself.
            continue;
        };
        if whiteouts == Whiteouts::Apply && name.starts_with(WHITEOUT_PREFIX) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let Some(dir) = existing_dir(target, parent).map_err(&unsafe_entry)? else {
                continue;
            };
            if name == OPAQUE_WHITEOUT {
                clear_dir(&dir, parent, &made_here)?;
            } else {
                let victim = &name[WHITEOUT_PREFIX.len()..];
                if victim.is_empty() || victim == "." || victim == ".." || victim.contains('/') {
                    return Err(unsafe_entry("a whiteout that names no entry"));
                }
                if !made_here.contains(&parent.join(victim)) {
                    remove_any(&dir.join(victim))?;
                }
            }
            continue;
        }
        let dest = make_parents(target, &rel).map_err(|why| match why {
            Refusal::Unsafe(why) => unsafe_entry(why),
            Refusal::Io(action, path, source) => UnpackError::Io { action, path, source },
        })?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                budget.bytes(size)?;
                remove_any(&dest)?;
                let executable = entry.header().mode().map_err(UnpackError::Malformed)? & 0o111 != 0;
                write_file(&mut entry, &dest, size, executable)?;
            }
            EntryType::Directory => match fs::symlink_metadata(&dest) {
                Ok(meta) if meta.is_dir() => {}
                _ => {
                    remove_any(&dest)?;
                    fs::create_dir(&dest).map_err(io_error("create", &dest))?;
                }
            },
            EntryType::Symlink => {
                let link = entry.link_name().map_err(UnpackError::Malformed)?;
                let link = link.ok_or_else(|| unsafe_entry("a symlink without a target"))?;
                remove_any(&dest)?;
                std::os::unix::fs::symlink(&link, &dest).map_err(io_error("create a symlink at", &dest))?;
            }
            EntryType::Link => {
                let link = entry.link_name().map_err(UnpackError::Malformed)?;
                let link = link.ok_or_else(|| unsafe_entry("a hard link without a target"))?;
                let source = relative(&link)
                    .ok()
                    .and_then(|rel| existing_file(target, &rel))
                    .ok_or_else(|| unsafe_entry("a hard link to something that is not a file of the image"))?;
                if source != dest {
                    remove_any(&dest)?;
                    fs::hard_link(&source, &dest).map_err(io_error("link", &dest))?;
                }
            }
            EntryType::Char | EntryType::Block => return Err(unsafe_entry("a device node")),
            EntryType::Fifo => return Err(unsafe_entry("a fifo")),
            _ => return Err(unsafe_entry("an entry type other than file, directory or link")),
        }
        made_here.insert(rel);
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.to_owned();
    move |source| UnpackError::Io { action, path, source }
}

/// The entry's path as plain names below the target: no root, no `..` (a `.` is dropped).
pub(crate) fn relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
            Component::ParentDir => return Err("a path through '..'"),
        }
    }
    Ok(rel)
}

enum Refusal {
    Unsafe(&'static str),
    Io(&'static str, PathBuf, io::Error),
}

/// Makes the missing parents of `rel` as directories and returns where `rel` goes; refuses a parent that is a
/// symlink (it could point anywhere) or not a directory.
fn make_parents(target: &Path, rel: &Path) -> Result<PathBuf, Refusal> {
    let mut dir = target.to_owned();
    if let Some(parent) = rel.parent() {
        for name in parent.components() {
            dir.push(name);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => return Err(Refusal::Unsafe("a path through a symlink")),
                Ok(_) => return Err(Refusal::Unsafe("a path through something that is not a directory")),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(|source| Refusal::Io("create", dir.clone(), source))?;
                }
                Err(source) => return Err(Refusal::Io("inspect", dir, source)),
            }
        }
    }
    Ok(target.join(rel))
}

/// `target/rel` if every component of it is a real directory; `None` if one is missing.
fn existing_dir(target: &Path, rel: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut dir = target.to_owned();
    for name in rel.components() {
        dir.push(name);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => return Err("a path through a symlink"),
            Ok(_) => return Ok(None),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// `target/rel` if it is a regular file reached through real directories only.
pub(crate) fn existing_file(target: &Path, rel: &Path) -> Option<PathBuf> {
    let dir = existing_dir(target, rel.parent()?).ok()??;
    let path = dir.join(rel.file_name()?);
    fs::symlink_metadata(&path)
        .ok()
        .filter(|meta| meta.is_file())
        .map(|_| path)
}

/// Removes whatever is at `path` (a symlink itself, never what it points to); nothing there is fine.
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    result.map_err(io_error("remove", path))
}

/// An opaque whiteout: empties `dir` of what lower layers put there.
fn clear_dir(dir: &Path, rel: &Path, made_here: &HashSet<PathBuf>) -> Result<(), UnpackError> {
    for child in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let child = child.map_err(io_error("list", dir))?;
        if !made_here.contains(&rel.join(child.file_name())) {
            remove_any(&child.path())?;
        }
    }
    Ok(())
}

/// Writes a file, leaving holes where the content is zeros: raw disk images are mostly zeros, and the host need
/// not store them.
fn write_file(data: &mut impl Read, dest: &Path, size: u64, executable: bool) -> Result<(), UnpackError> {
    // Set-uid, set-gid and sticky bits are never carried over; `crate::store` makes the final modes read-only.
    let mode = if executable { 0o755 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io_error("create", dest))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(UnpackError::Malformed(err)),
        };
        if buf[..n].iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(n as i64))
                .map_err(io_error("write", dest))?;
        } else {
            file.write_all(&buf[..n]).map_err(io_error("write", dest))?;
        }
        written += n as u64;
    }
    if written != size {
        return Err(UnpackError::Malformed(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} ends after {written} of its {size} bytes", dest.display()),
        )));
    }
    // A file ending in zeros was only seeked over: give it its length.
    file.set_len(size).map_err(io_error("write", dest))?;
    Ok(())
}

/// Makes a finished tree read-only: files 0444 (0555 if executable), directories 0555. Symlinks have no mode of
/// their own.
pub(crate) fn make_read_only(root: &Path) -> io::Result<()> {
    set_tree_modes(root, |meta| {
        if meta.is_dir() || meta_mode(meta) & 0o111 != 0 {
            0o555
        } else {
            0o444
        }
    })
}

/// Gives the owner write access back to every directory, so the tree can be removed without root.
pub(crate) fn make_writable(root: &Path) -> io::Result<()> {
    set_tree_modes(root, |meta| if meta.is_dir() { 0o755 } else { meta_mode(meta) & 0o777 })
}

fn meta_mode(meta: &fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
}

fn set_tree_modes(path: &Path, mode: impl Fn(&fs::Metadata) -> u32 + Copy) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.is_dir() {
        // Writable while its children change, then its final mode.
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        for child in fs::read_dir(path)? {
            set_tree_modes(&child?.path(), mode)?;
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode(&meta)))
}

/// Removes a tree that may have been made read-only.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match make_writable(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        result => result?,
    }
    fs::remove_dir_all(path)
}

/// A directory removed with everything in it when dropped, unless it was kept: what a failed pull leaves behind.
pub(crate) struct TempTree {
    path: Option<PathBuf>,
}

impl TempTree {
    /// Removes whatever a crashed run left at `path` and makes it afresh.
    pub(crate) fn create(path: PathBuf) -> io::Result<TempTree> {
        remove_tree(&path)?;
        fs::create_dir_all(&path)?;
        Ok(TempTree { path: Some(path) })
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Hands the directory over: it is not removed on drop.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && let Err(err) = remove_tree(path)
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a temporary directory");
        }
    }
}

/// Opens a file for reading without following a symlink at its last component.
pub(crate) fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}
