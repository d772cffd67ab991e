//! Running netlink work inside another network namespace.
//!
//! A network namespace belongs to a thread, not to the process: `setns` moves only the calling thread. So the work
//! runs on an OS thread of its own that enters the namespace first, then builds a current-thread runtime and opens
//! its netlink socket there. No task can migrate to a thread in another namespace, and every socket, tap and child
//! process the work creates is created inside the namespace.

use std::future::Future;
use std::io;
use std::os::fd::BorrowedFd;
use std::thread;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

/// Why work could not be started inside a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot enter the network namespace")]
    Enter(#[source] nix::Error),
    #[error("cannot start an async runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot open a netlink socket")]
    Netlink(#[source] io::Error),
}

/// Runs `work` inside the network namespace `netns` (an open `/proc/PID/ns/net` or `/run/netns/NAME`) with a
/// rtnetlink handle opened there, and returns what it returns.
///
/// Blocks the calling thread until `work` is done; from async code, call it through `spawn_blocking`. A panic in
/// `work` is resumed on the calling thread.
pub fn in_netns<W, F, T>(netns: BorrowedFd<'_>, work: W) -> Result<T, NetnsError>
where
    W: FnOnce(Handle) -> F + Send,
    F: Future<Output = T>,
    T: Send,
{
    thread::scope(|scope| {
        let worker = scope.spawn(move || {
            // This thread ends with the scope, so it never has to find its way back to the original namespace.
            setns(netns, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(NetnsError::Runtime)?;
            runtime.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection().map_err(NetnsError::Netlink)?;
                tokio::spawn(connection);
                Ok(work(handle).await)
            })
        });
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
