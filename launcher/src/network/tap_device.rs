//! Persistent tap devices for QEMU to open later by name.
//!
//! The kernel refuses to create tun/tap devices over rtnetlink, so this goes through `/dev/net/tun` and its ioctls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use super::netlink;

/// A tap device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} does not fit in an interface name")]
    Name(String),
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    #[error("cannot create or attach to tap {name:?}")]
    Create {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot make tap {name:?} persistent")]
    Persist {
        name: String,
        #[source]
        source: nix::Error,
    },
}

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_owner, libc::TUNSETOWNER);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);

/// Creates the tap `name` in the calling thread's network namespace, owned by root, and leaves it behind when this
/// returns. Frames carry a virtio-net header (`IFF_VNET_HDR`) and no packet information, as QEMU expects; QEMU sets
/// those flags again when it attaches.
pub fn create_persistent_tap(name: &str) -> Result<(), TapError> {
    let tun = open_tap(name)?;
    let fd = tun.as_raw_fd();
    let persist = |source| TapError::Persist {
        name: name.to_owned(),
        source,
    };
    // SAFETY: `fd` is attached to the new tap; TUNSETOWNER takes the owner's uid as its integer argument.
    unsafe { tun_set_owner(fd, 0) }.map_err(persist)?;
    // SAFETY: as above; TUNSETPERSIST takes a boolean as its integer argument.
    unsafe { tun_set_persist(fd, 1) }.map_err(persist)?;
    Ok(())
}

/// `/dev/net/tun` attached to the tap `name` in the calling thread's network namespace, which is created if it does
/// not exist and disappears with the file unless it is persistent. Reading the file yields the frames the tap
/// sends, each after a virtio-net header; writing one makes the tap receive it.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    let request = tap_request(name)?;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::Open)?;
    // SAFETY: `tun` is an open `/dev/net/tun` for the duration of the call, and `request` is a valid `ifreq` that
    // TUNSETIFF only reads and writes within.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }.map_err(|source| TapError::Create {
        name: name.to_owned(),
        source,
    })?;
    Ok(tun)
}

/// The TUNSETIFF request for a tap named `name`.
fn tap_request(name: &str) -> Result<libc::ifreq, TapError> {
    if !netlink::is_valid_interface_name(name) {
        return Err(TapError::Name(name.to_owned()));
    }
    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers and byte arrays), for which all zero
    // bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_the_tap_and_asks_for_a_tap_with_vnet_header() {
        let request = tap_request("tap-eth0").unwrap();
        let name: Vec<u8> = request.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..9], b"tap-eth0\0");
        // SAFETY: `tap_request` wrote the flags member of the union.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        assert_eq!(i32::from(flags), libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    }

    #[test]
    fn names_that_are_no_interface_names_are_refused() {
        for name in ["", "sixteen-letters!", "a/b", "a b", "a:b", ".."] {
            assert!(matches!(tap_request(name), Err(TapError::Name(_))), "{name:?}");
        }
        assert!(tap_request("fifteen-letters").is_ok());
    }
}
