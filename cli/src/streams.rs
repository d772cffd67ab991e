//! The interactive verbs' plumbing: the serial console in raw mode, the VNC and port-forward listeners, and stdio
//! bridges (ssh's ProxyCommand). Every connection is a fresh stream to the VM (`Target::open`), so a viewer that
//! reconnects, or a console whose VM restarted, simply opens another.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::{Endpoint, Error, Result, Stream, Target};

/// Ctrl-]: the escape that leaves the console, as telnet's and virsh's.
pub const ESCAPE: u8 = 0x1d;

/// The terminal in raw mode while this lives: every key goes to the guest as typed, and the guest's echo is the only
/// one. Nothing to do when stdin is not a terminal.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        match tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// Stdin as chunks, read on a thread of its own so that it outlives each connection of the console.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (send, receive) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if send.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receive
}

/// What a console connection ended with.
enum Ended {
    /// The person typed the escape, or closed stdin.
    Left,
    /// The VM's side closed: its launcher ended (a restart, a stop).
    Closed,
}

/// The serial console of `name`: raw mode, Ctrl-] leaves. When the VM's side closes (a restart makes a new
/// launcher), it waits for the VM and attaches again; nothing closes it for being idle.
pub async fn console(target: &Target, name: &str) -> Result<()> {
    let vm = target.vm(name).await?;
    let mut stream = target.open(&vm, Endpoint::Console).await?;
    let _raw = RawMode::enter();
    let mut stdin = stdin_chunks();
    let mut stdout = tokio::io::stdout();
    note(&format!("connected to the console of {name}; leave with Ctrl-]")).await;
    loop {
        match pump(&mut stream, &mut stdin, &mut stdout).await? {
            Ended::Left => {
                note("left the console").await;
                return Ok(());
            }
            Ended::Closed => {
                note("the console closed (the VM stopped or restarted); waiting for it, Ctrl-] leaves").await
            }
        }
        stream = loop {
            tokio::select! {
                chunk = stdin.recv() => {
                    if chunk.is_none_or(|c| c.contains(&ESCAPE)) {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let Ok(vm) = target.vm(name).await else { continue };
                    if let Ok(stream) = target.open(&vm, Endpoint::Console).await {
                        note("attached again").await;
                        break stream;
                    }
                }
            }
        };
    }
}

/// A line of vmlet's own on the terminal, which is in raw mode: hence the carriage returns.
async fn note(text: &str) {
    let mut stderr = tokio::io::stderr();
    let _ = stderr.write_all(format!("\r\n[vmlet: {text}]\r\n").as_bytes()).await;
    let _ = stderr.flush().await;
}

async fn pump(
    stream: &mut Stream,
    stdin: &mut mpsc::Receiver<Vec<u8>>,
    stdout: &mut (impl AsyncWrite + Unpin),
) -> Result<Ended> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            chunk = stdin.recv() => {
                let Some(chunk) = chunk else {
                    hand_over(stream, stdout).await;
                    return Ok(Ended::Left);
                };
                let (typed, left) = match chunk.iter().position(|b| *b == ESCAPE) {
                    Some(at) => (&chunk[..at], true),
                    None => (&chunk[..], false),
                };
                if stream.write_all(typed).await.and(stream.flush().await).is_err() {
                    return Ok(Ended::Closed);
                }
                if left {
                    hand_over(stream, stdout).await;
                    return Ok(Ended::Left);
                }
            }
            n = stream.read(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => return Ok(Ended::Closed),
                    Ok(n) => {
                        stdout.write_all(&buf[..n]).await?;
                        stdout.flush().await?;
                    }
                }
            }
        }
    }
}

/// How long leaving the console waits for the guest's side to take in what was typed before it.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(10);

/// Leaves the console without losing what was typed last. QEMU takes input from the socket only as fast as the
/// guest's UART drains (slowly under TCG), and drops whatever it has not read yet when the client hangs up: a
/// command typed just before Ctrl-] would be cut short. A half-close instead lets QEMU read up to the end of the
/// input and then close its side; the guest's echo meanwhile still reaches the terminal. Bounded, for a VM's side
/// that never closes.
async fn hand_over(stream: &mut Stream, stdout: &mut (impl AsyncWrite + Unpin)) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let drained = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).await.and(stdout.flush().await).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(HAND_OVER_WITHIN, drained).await;
}

/// Serves `endpoint` of `name` on `listener`: each connection a fresh stream to the VM, until the process ends.
pub async fn serve(target: Arc<Target>, name: String, endpoint: Endpoint, listener: TcpListener) -> Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        let target = target.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let opened = match target.vm(&name).await {
                Ok(vm) => target.open(&vm, endpoint).await,
                Err(error) => Err(error),
            };
            match opened {
                Ok(mut stream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                }
                Err(error) => eprintln!("vmlet: {}", crate::error::one_line(&error)),
            }
        });
    }
}

/// Joins stdin and stdout to `endpoint` of `name` until either side ends: ssh's ProxyCommand.
pub async fn stdio(target: &Target, name: &str, endpoint: Endpoint) -> Result<()> {
    let vm = target.vm(name).await?;
    let stream = target.open(&vm, endpoint).await?;
    let (mut read, mut write) = tokio::io::split(stream);
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        tokio::io::copy(&mut stdin, &mut write).await?;
        write.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut read, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::pin!(up, down);
    // The VM's side closing ends the bridge; stdin closing only half-closes it, and the answer still comes back.
    tokio::select! {
        r = &mut down => r.map_err(Error::Io),
        r = &mut up => {
            r?;
            down.await.map_err(Error::Io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's side that takes its input late, as QEMU does under TCG: it answers only once the whole input has
    /// come, which a console that hung up at the escape would never let it do.
    #[tokio::test]
    async fn leaving_hands_the_last_typed_line_over_before_hanging_up() {
        let (ours, mut guest) = tokio::net::UnixStream::pair().unwrap();
        let guest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut typed = Vec::new();
            guest.read_to_end(&mut typed).await.unwrap();
            guest.write_all(b"ran: ").await.unwrap();
            guest.write_all(&typed).await.unwrap();
            typed
        });
        let (keys, mut stdin) = mpsc::channel(4);
        keys.send(b"echo tick &\r".to_vec()).await.unwrap();
        keys.send(vec![b'x', ESCAPE, b'y']).await.unwrap();
        let mut stream: Stream = Box::new(ours);
        let mut terminal = Vec::new();
        let ended = pump(&mut stream, &mut stdin, &mut terminal).await.unwrap();
        assert!(matches!(ended, Ended::Left));
        drop(stream);
        assert_eq!(
            guest.await.unwrap(),
            b"echo tick &\rx",
            "what came before the escape, not after"
        );
        assert_eq!(terminal, b"ran: echo tick &\rx");
    }
}
