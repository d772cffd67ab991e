//! The guest's QEMU guest agent, asked over the domain's agent channel (`RUN_DIR/guest-agent.sock`, the host end
//! of the virtio-serial port `org.qemu.guest_agent.0`) what operating system the guest runs and how its network
//! looks. The wire protocol is in [`protocol`]; this is the socket and the polling.
//!
//! QEMU serves the channel to one client at a time, and libvirt connects to it as well once the guest's agent opens
//! its port, to sit in the socket's queue until the client before it leaves. So the launcher connects first (it
//! starts polling as the domain starts), keeps its one connection for as long as QEMU does, and never closes it on
//! a timeout: a late reply is skipped by the next sync instead. The socket accepts the connection whether or not an
//! agent listens in the guest; an absent agent shows only as no reply, and QEMU holds what is written until the
//! guest opens the port, so a sync that went unanswered is waited for again rather than written again.

pub mod protocol;
#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info};
use vmlet_control::{GuestAgentStatus, GuestExec, GuestExecResult, GuestInterface, GuestOsInfo};

use protocol::{Reply, ReplyStream};

/// Until the agent first answers: a guest boots, and its agent starts, a little after the domain.
const EARLY_POLL: Duration = Duration::from_secs(2);
/// Once it has, or when it has not in [`EARLY_PERIOD`].
const POLL: Duration = Duration::from_secs(10);
const EARLY_PERIOD: Duration = Duration::from_secs(300);
/// Polls without an answer after which what the agent said is dropped: the guest rebooted, or its agent stopped.
const FORGET_AFTER: u32 = 3;
/// How often a program the agent runs is asked after.
const EXEC_POLL: Duration = Duration::from_millis(100);

/// How long each step may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// The answer to a sync: an agent that listens answers at once.
    pub sync: Duration,
    /// Each command, which the agent answers from the guest's files and system calls.
    pub command: Duration,
    /// How long an unanswered sync is waited for before another is written.
    pub resync: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            sync: Duration::from_secs(2),
            command: Duration::from_secs(5),
            resync: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the guest agent channel")]
    Connect(#[source] std::io::Error),
    #[error("cannot talk to the guest agent")]
    Io(#[from] std::io::Error),
    #[error("the guest agent channel closed")]
    Closed,
    #[error("no answer from the guest agent to {0}")]
    NoReply(&'static str),
    #[error("the guest agent refused {command}: {class}: {desc}")]
    Refused {
        command: &'static str,
        class: String,
        desc: String,
    },
    #[error("the guest agent's answer to {0} was malformed")]
    Malformed(&'static str),
    #[error("the program did not end within {0:?}")]
    ExecTimeout(Duration),
    #[error("the launcher's guest agent client has stopped")]
    Stopped,
}

/// A request for the agent, from the control socket, with where its answer goes.
pub enum Request {
    Ping(oneshot::Sender<Result<(), AgentError>>),
    Exec(GuestExec, oneshot::Sender<Result<GuestExecResult, AgentError>>),
}

/// What one round of questions learned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub os: Option<GuestOsInfo>,
    pub host_name: Option<String>,
    pub interfaces: Vec<GuestInterface>,
}

/// A client of the guest agent on one channel.
pub struct Agent {
    path: PathBuf,
    timeouts: Timeouts,
    connection: Option<UnixStream>,
    stream: ReplyStream,
    /// Replies that were JSON but not what the command answers.
    unreadable: u64,
    /// The sync written last and not answered yet, and when it was written.
    pending_sync: Option<(u64, Instant)>,
}

impl Agent {
    pub fn new(path: PathBuf, timeouts: Timeouts) -> Agent {
        Agent {
            path,
            timeouts,
            connection: None,
            stream: ReplyStream::default(),
            unreadable: 0,
            pending_sync: None,
        }
    }

    /// Replies dropped because they could not be read.
    pub fn malformed(&self) -> u64 {
        self.stream.malformed + self.unreadable
    }

    /// Syncs with the agent, then asks for the guest's OS, interfaces and host name. The interfaces are required;
    /// the OS and host name are left out when the agent refuses them (an old agent, a Windows one without them).
    pub async fn query(&mut self) -> Result<Answer, AgentError> {
        self.sync().await?;
        let interfaces = protocol::interfaces(self.execute(protocol::INTERFACES).await?).map_err(|_| {
            self.unreadable += 1;
            AgentError::Malformed(protocol::INTERFACES)
        })?;
        let os = self.optional(protocol::OS_INFO, protocol::os_info).await?;
        let host_name = self.optional(protocol::HOST_NAME, protocol::host_name).await?;
        Ok(Answer {
            os,
            host_name,
            interfaces,
        })
    }

    /// Syncs with the agent and pings it.
    pub async fn ping(&mut self) -> Result<(), AgentError> {
        self.sync().await?;
        self.execute_with(protocol::PING, None).await.map(drop)
    }

    /// Runs `exec`'s program in the guest and waits for it to end, at most its timeout.
    pub async fn exec(&mut self, exec: &GuestExec) -> Result<GuestExecResult, AgentError> {
        let limit = Duration::from_secs(exec.timeout_secs.into());
        let deadline = Instant::now() + limit;
        self.sync().await?;
        let started = self
            .execute_with(protocol::EXEC, Some(protocol::exec_arguments(&exec.argv)))
            .await?;
        let pid = protocol::exec_pid(started).map_err(|_| AgentError::Malformed(protocol::EXEC))?;
        loop {
            let status = self
                .execute_with(protocol::EXEC_STATUS, Some(serde_json::json!({ "pid": pid })))
                .await?;
            match protocol::exec_status(status) {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => {}
                Err(protocol::Malformed) => return Err(AgentError::Malformed(protocol::EXEC_STATUS)),
            }
            if Instant::now() + EXEC_POLL > deadline {
                return Err(AgentError::ExecTimeout(limit));
            }
            tokio::time::sleep(EXEC_POLL).await;
        }
    }

    async fn optional<T>(
        &mut self,
        command: &'static str,
        read: fn(serde_json::Value) -> Result<T, protocol::Malformed>,
    ) -> Result<Option<T>, AgentError> {
        match self.execute(command).await {
            Ok(value) => Ok(read(value).inspect_err(|_| self.unreadable += 1).ok()),
            Err(AgentError::Refused { class, desc, .. }) => {
                debug!(command, class, desc, "the guest agent refused");
                Ok(None)
            }
            Err(AgentError::Malformed(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn sync(&mut self) -> Result<(), AgentError> {
        if self.connection.is_none() {
            let connect = UnixStream::connect(&self.path);
            let connection = tokio::time::timeout(self.timeouts.connect, connect)
                .await
                .map_err(|_| AgentError::Connect(std::io::ErrorKind::TimedOut.into()))?
                .map_err(AgentError::Connect)?;
            self.connection = Some(connection);
            self.stream.clear();
            self.pending_sync = None;
        }
        let id = match self.pending_sync {
            Some((id, written)) if written.elapsed() < self.timeouts.resync => id,
            _ => {
                // Masked to 53 bits: any JSON reader takes it as an exact integer.
                let id = RandomState::new().hash_one(SystemTime::now()) & ((1 << 53) - 1);
                self.write(&protocol::sync_request(id)).await?;
                self.pending_sync = Some((id, Instant::now()));
                id
            }
        };
        self.read(self.timeouts.sync, "guest-sync-delimited", |stream| {
            stream.take_sync(id).then_some(())
        })
        .await?;
        self.pending_sync = None;
        Ok(())
    }

    async fn execute(&mut self, command: &'static str) -> Result<serde_json::Value, AgentError> {
        self.execute_with(command, None).await
    }

    async fn execute_with(
        &mut self,
        command: &'static str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, AgentError> {
        self.write(&protocol::command_request(command, arguments)).await?;
        match self
            .read(self.timeouts.command, command, ReplyStream::take_reply)
            .await?
        {
            Ok(Reply::Return(value)) => Ok(value),
            Ok(Reply::Error { class, desc }) => Err(AgentError::Refused { command, class, desc }),
            Err(protocol::Malformed) => Err(AgentError::Malformed(command)),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        let connection = self.connection.as_mut().ok_or(AgentError::Closed)?;
        match tokio::time::timeout(self.timeouts.command, connection.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                self.connection = None;
                Err(err.into())
            }
            // A channel so full that QEMU takes nothing: the request is half written, which the next sync's
            // delimiter makes the agent drop.
            Err(_) => Err(AgentError::NoReply("a request")),
        }
    }

    async fn read<T>(
        &mut self,
        timeout: Duration,
        command: &'static str,
        mut take: impl FnMut(&mut ReplyStream) -> Option<T>,
    ) -> Result<T, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(taken) = take(&mut self.stream) {
                return Ok(taken);
            }
            let connection = self.connection.as_mut().ok_or(AgentError::Closed)?;
            let read = tokio::time::timeout_at(deadline, connection.read(&mut buf))
                .await
                .map_err(|_| AgentError::NoReply(command))?;
            match read {
                Ok(0) => {
                    self.connection = None;
                    return Err(AgentError::Closed);
                }
                Ok(n) => self.stream.push(&buf[..n]),
                Err(err) => {
                    self.connection = None;
                    return Err(err.into());
                }
            }
        }
    }
}

/// Asks the agent periodically and publishes what it said, until the launcher ends. Between polls it carries out
/// the control socket's requests, on the same connection: the channel has room for one client.
pub async fn poll(
    mut agent: Agent,
    status: watch::Sender<Option<Box<GuestAgentStatus>>>,
    mut requests: mpsc::Receiver<Request>,
) {
    let started = Instant::now();
    let mut answered_once = false;
    let mut unanswered = 0u32;
    let mut next_poll = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_poll) => {}
            Some(request) = requests.recv() => {
                match request {
                    Request::Ping(reply) => {
                        let _ = reply.send(agent.ping().await);
                    }
                    Request::Exec(exec, reply) => {
                        let _ = reply.send(agent.exec(&exec).await);
                    }
                }
                continue;
            }
        }
        match agent.query().await {
            Ok(answer) => {
                if !answered_once {
                    let os = answer
                        .os
                        .as_ref()
                        .and_then(|os| os.pretty_name.clone().or(os.name.clone()));
                    info!(os = os.as_deref().unwrap_or("unknown"), "guest agent answered");
                    answered_once = true;
                }
                unanswered = 0;
                status.send_replace(Some(Box::new(status_of(answer, agent.malformed(), SystemTime::now()))));
            }
            Err(err) => {
                debug!(error = %err, "guest agent poll");
                unanswered += 1;
                if unanswered == FORGET_AFTER && status.borrow().is_some() {
                    info!("guest agent stopped answering");
                    status.send_replace(None);
                }
            }
        }
        let early = !answered_once && started.elapsed() < EARLY_PERIOD;
        next_poll = Instant::now() + if early { EARLY_POLL } else { POLL };
    }
}

fn status_of(answer: Answer, malformed: u64, now: SystemTime) -> GuestAgentStatus {
    GuestAgentStatus {
        os: answer.os,
        host_name: answer.host_name,
        interfaces: answer.interfaces,
        answered_at: now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
        malformed_replies: malformed,
    }
}
