//! Connections from the pod's IPv6 loopback to a forwarded TCP port, relayed to the guest in user space.
//!
//! Under `masquerade`, nftables carries connections from 127.0.0.1 to the guest (DNAT in `output`, with
//! `route_localnet`). IPv6 has no `route_localnet`: the guest's answer, translated back to `::1`, arrives on the
//! bridge with a loopback destination, and the kernel drops it. So for each listed TCP port the launcher listens on
//! `[::1]:PORT` itself and relays each connection to the guest's address. With no port list (every port forwarded)
//! there is nothing to listen on, and `[::1]` stays the pod's.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// How long the guest may take to accept a relayed connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One relayed port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopbackRelay {
    pub listen: SocketAddr,
    pub guest: SocketAddr,
}

impl LoopbackRelay {
    /// Listens now, so that a port the pod cannot have is an error at start, and relays until `stop` completes.
    pub async fn bind(self) -> io::Result<BoundRelay> {
        let listener = TcpListener::bind(self.listen).await?;
        Ok(BoundRelay { relay: self, listener })
    }
}

pub struct BoundRelay {
    relay: LoopbackRelay,
    listener: TcpListener,
}

impl BoundRelay {
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let guest = self.relay.guest;
        let accept = async {
            loop {
                match self.listener.accept().await {
                    Ok((client, peer)) => {
                        tokio::spawn(async move {
                            if let Err(err) = relay(client, guest).await {
                                debug!(%peer, %guest, error = %err, "loopback relay ended");
                            }
                        });
                    }
                    Err(err) => {
                        warn!(listen = %self.relay.listen, error = %err, "loopback relay cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        tokio::select! {
            () = accept => {}
            () = stop => {}
        }
    }
}

async fn relay(mut client: TcpStream, guest: SocketAddr) -> io::Result<()> {
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(guest))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the guest did not accept"))??;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_refused_guest_closes_the_client() {
        let guest = TcpListener::bind("[::1]:0").await.unwrap();
        let guest_addr = guest.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = guest.accept().await.unwrap();
            let mut buf = [0; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase())).await.unwrap();
        });
        let relay = LoopbackRelay {
            listen: "[::1]:0".parse().unwrap(),
            guest: guest_addr,
        }
        .bind()
        .await
        .unwrap();
        let listen = relay.listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));

        let mut client = TcpStream::connect(listen).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "HELLO");

        // The guest no longer listens: the relayed connection is closed, not left hanging.
        let mut client = TcpStream::connect(listen).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

        stop.send(()).unwrap();
        running.await.unwrap();
    }
}
