use std::path::Path;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::protocol::{self, Malformed, Reply, ReplyStream};
use super::*;

/// What Debian 12's qemu-guest-agent 7.2 answers to `guest-get-osinfo`.
const OS_INFO: &str = r##"{"return": {"name": "Debian GNU/Linux", "kernel-release": "6.1.0-28-cloud-amd64", "version": "12 (bookworm)", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12", "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)", "machine": "x86_64", "id": "debian"}}"##;

/// ... and to `guest-network-get-interfaces`, on a guest with loopback, its NIC and a second one of its own.
const INTERFACES: &str = r#"{"return": [{"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}, {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}], "statistics": {"tx-packets": 8, "tx-errs": 0, "rx-bytes": 560, "rx-dropped": 0, "rx-packets": 8, "rx-errs": 0, "tx-bytes": 560, "tx-dropped": 0}, "hardware-address": "00:00:00:00:00:00"}, {"name": "enp1s0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.244.1.7", "prefix": 24}, {"ip-address-type": "ipv6", "ip-address": "fd00::7", "prefix": 128}, {"ip-address-type": "ipv6", "ip-address": "fe80::42:aff:fef4:107", "prefix": 64}], "statistics": {"tx-packets": 52, "tx-errs": 0, "rx-bytes": 10915, "rx-dropped": 0, "rx-packets": 71, "rx-errs": 0, "tx-bytes": 7624, "tx-dropped": 0}, "hardware-address": "02:42:0A:F4:01:07"}, {"name": "docker0", "hardware-address": "02:42:ac:11:00:01"}]}"#;

fn stream(bytes: &[u8]) -> ReplyStream {
    let mut stream = ReplyStream::default();
    stream.push(bytes);
    stream
}

#[test]
fn requests_are_json_lines_and_a_sync_starts_with_the_delimiter() {
    assert_eq!(
        protocol::sync_request(42),
        b"\xff{\"arguments\":{\"id\":42},\"execute\":\"guest-sync-delimited\"}\n"
    );
    assert_eq!(
        protocol::command_request("guest-get-osinfo", None),
        b"{\"execute\":\"guest-get-osinfo\"}\n"
    );
}

#[test]
fn a_sync_skips_leftovers_of_earlier_connections() {
    // An earlier client's command answer, a half line, an earlier sync's answer, then ours and a reply after it.
    let mut leftovers = stream(b"{\"return\": {\"host-name\": \"old\"}}\n{\"retu");
    leftovers.push(b"\xff{\"return\": 7}\n\xff{\"return\": 42}\n{\"return\": {}}\n");
    assert!(leftovers.take_sync(42));
    assert_eq!(leftovers.take_reply(), Some(Ok(Reply::Return(json!({})))));
    assert_eq!(leftovers.take_reply(), None);
    assert_eq!(leftovers.malformed, 0);
}

#[test]
fn a_sync_answer_split_across_reads_is_waited_for() {
    let mut stream = stream(b"garbage\xff{\"ret");
    assert!(!stream.take_sync(42));
    stream.push(b"urn\": 4");
    assert!(!stream.take_sync(42));
    stream.push(b"2}\n");
    assert!(stream.take_sync(42));
}

#[test]
fn a_line_cut_short_by_a_delimiter_is_dropped_and_the_answer_after_it_read() {
    let mut stream = stream(b"\xff{\"return\": 4\xff{\"return\": 42}\n");
    assert!(stream.take_sync(42));
}

#[test]
fn a_malformed_line_is_counted_and_returned_as_such() {
    let mut stream = stream(b"\xffnot json\n\xff{\"return\": 42}\n[1, 2]\n\n{\"return\": 1}\n{\"return\": 2");
    assert!(stream.take_sync(42));
    assert_eq!(stream.take_reply(), Some(Err(Malformed)));
    assert_eq!(stream.take_reply(), Some(Ok(Reply::Return(json!(1)))));
    assert_eq!(stream.take_reply(), None, "half a reply");
    stream.push(b"}\n");
    assert_eq!(stream.take_reply(), Some(Ok(Reply::Return(json!(2)))));
    assert_eq!(stream.malformed, 2);
}

#[test]
fn an_error_reply_says_its_class_and_description() {
    let line =
        br#"{"error": {"class": "CommandNotFound", "desc": "The command guest-get-host-name has not been found"}}"#;
    assert_eq!(
        protocol::parse_reply(line),
        Ok(Reply::Error {
            class: "CommandNotFound".into(),
            desc: "The command guest-get-host-name has not been found".into(),
        })
    );
    assert_eq!(protocol::parse_reply(br#"{"neither": 1}"#), Err(Malformed));
    assert_eq!(protocol::parse_reply(br#"{"error": "text"}"#), Err(Malformed));
}

#[test]
fn a_runaway_reply_is_dropped() {
    let mut stream = stream(&vec![b'x'; protocol::MAX_REPLY + 1]);
    assert_eq!(stream.malformed, 1);
    assert_eq!(stream.take_reply(), None);
}

fn returned(line: &str) -> serde_json::Value {
    match protocol::parse_reply(line.as_bytes()).unwrap() {
        Reply::Return(value) => value,
        other => panic!("{other:?}"),
    }
}

#[test]
fn os_info_reads_as_debian_12_says_it() {
    assert_eq!(
        protocol::os_info(returned(OS_INFO)).unwrap(),
        GuestOsInfo {
            name: Some("Debian GNU/Linux".into()),
            id: Some("debian".into()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            version: Some("12 (bookworm)".into()),
            version_id: Some("12".into()),
            kernel_release: Some("6.1.0-28-cloud-amd64".into()),
            kernel_version: Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)".into()),
            machine: Some("x86_64".into()),
        }
    );
    // Windows agents leave out what os-release would give; every member is optional.
    assert_eq!(protocol::os_info(json!({})).unwrap(), GuestOsInfo::default());
    assert_eq!(protocol::os_info(json!([])), Err(Malformed));
}

#[test]
fn interfaces_read_with_their_addresses_and_prefixes_and_without_loopback() {
    assert_eq!(
        protocol::interfaces(returned(INTERFACES)).unwrap(),
        [
            GuestInterface {
                name: "enp1s0".into(),
                mac: Some("02:42:0a:f4:01:07".into()),
                ip_addresses: vec![
                    "10.244.1.7/24".into(),
                    "fd00::7/128".into(),
                    "fe80::42:aff:fef4:107/64".into()
                ],
            },
            GuestInterface {
                name: "docker0".into(),
                mac: Some("02:42:ac:11:00:01".into()),
                ip_addresses: Vec::new(),
            },
        ]
    );
    assert_eq!(protocol::interfaces(json!([{"ip-addresses": []}])), Err(Malformed));
    assert_eq!(protocol::host_name(json!({"host-name": "web"})), Ok("web".into()));
}

/// A guest agent on a unix socket, as qemu-guest-agent answers: each request line (a leading delimiter dropped)
/// gets the reply `answer` gives, and first, the stale `leftovers`.
async fn fake_agent(
    socket: &Path,
    leftovers: &'static [u8],
    answer: fn(&serde_json::Value) -> Option<String>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let (connection, _) = listener.accept().await.unwrap();
        let (read, mut write) = connection.into_split();
        write.write_all(leftovers).await.unwrap();
        let mut lines = BufReader::new(read).split(b'\n');
        let mut commands = Vec::new();
        while let Ok(Some(line)) = lines.next_segment().await {
            let line: Vec<u8> = line.into_iter().filter(|&b| b != protocol::DELIMITER).collect();
            let request: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let command = request["execute"].as_str().unwrap().to_owned();
            let reply = if command == "guest-sync-delimited" {
                Some(format!("\u{ff}{{\"return\": {}}}", request["arguments"]["id"]))
            } else {
                answer(&request)
            };
            commands.push(command);
            if let Some(reply) = reply {
                // The delimiter is a byte, not a character: written as such.
                let bytes: Vec<u8> = if let Some(rest) = reply.strip_prefix('\u{ff}') {
                    [&[protocol::DELIMITER][..], rest.as_bytes(), b"\n"].concat()
                } else {
                    [reply.as_bytes(), b"\n"].concat()
                };
                // Cut in two, as a virtio-serial port may deliver it.
                let (first, second) = bytes.split_at(bytes.len() / 2);
                write.write_all(first).await.unwrap();
                write.flush().await.unwrap();
                tokio::task::yield_now().await;
                write.write_all(second).await.unwrap();
            }
        }
        commands
    })
}

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        sync: Duration::from_millis(200),
        command: Duration::from_millis(500),
        resync: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn the_client_asks_a_fake_agent_past_its_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guest-agent.sock");
    let agent = fake_agent(&socket, b"{\"return\": {}}\n\xff{\"return\": 1}\n", |request| {
        Some(match request["execute"].as_str().unwrap() {
            "guest-get-osinfo" => OS_INFO.to_owned(),
            "guest-network-get-interfaces" => INTERFACES.to_owned(),
            _ => r#"{"error": {"class": "CommandNotFound", "desc": "not here"}}"#.to_owned(),
        })
    })
    .await;
    let mut client = Agent::new(socket, quick());
    let answer = client.query().await.unwrap();
    assert_eq!(answer.os.unwrap().id.as_deref(), Some("debian"));
    assert_eq!(answer.host_name, None, "refused: left out");
    assert_eq!(answer.interfaces.len(), 2);
    // The same connection again.
    assert!(client.query().await.is_ok());
    drop(client);
    let commands = agent.await.unwrap();
    assert_eq!(commands.len(), 8, "{commands:?}");
    assert_eq!(commands[0], "guest-sync-delimited");
}

#[tokio::test]
async fn a_silent_agent_costs_a_bounded_wait_and_one_buffered_sync() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guest-agent.sock");
    // Accepts, as QEMU does with no agent in the guest, and reads nothing.
    let listener = UnixListener::bind(&socket).unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let mut client = Agent::new(socket, quick());
    let started = Instant::now();
    assert!(matches!(
        client.query().await,
        Err(AgentError::NoReply("guest-sync-delimited"))
    ));
    assert!(matches!(client.query().await, Err(AgentError::NoReply(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut connection = accepted.await.unwrap();
    // Both polls on one connection, and the second waited for the first's sync instead of writing another.
    let mut written = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_millis(100),
        tokio::io::AsyncReadExt::read(&mut connection, &mut written),
    )
    .await
    .unwrap()
    .unwrap();
    let written = &written[..n];
    assert_eq!(written.iter().filter(|&&b| b == protocol::DELIMITER).count(), 1);
    // The agent comes up and answers the sync that waited in the channel: the client takes it, and goes on.
    let id = serde_json::from_slice::<serde_json::Value>(&written[1..n - 1]).unwrap()["arguments"]["id"].clone();
    let answer = [&[protocol::DELIMITER][..], format!("{{\"return\": {id}}}\n").as_bytes()].concat();
    connection.write_all(&answer).await.unwrap();
    assert!(matches!(
        client.query().await,
        Err(AgentError::NoReply("guest-network-get-interfaces"))
    ));
}

#[tokio::test]
async fn a_malformed_answer_is_dropped_without_failing_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guest-agent.sock");
    let _agent = fake_agent(&socket, b"", |request| {
        Some(match request["execute"].as_str().unwrap() {
            "guest-get-osinfo" => "{\"return\": [\"not an object\"]}".to_owned(),
            "guest-network-get-interfaces" => INTERFACES.to_owned(),
            _ => "{\"return\": {\"host-name\": \"web\"}}".to_owned(),
        })
    })
    .await;
    let mut client = Agent::new(socket, quick());
    let answer = client.query().await.unwrap();
    assert_eq!((answer.os, answer.host_name.as_deref()), (None, Some("web")));
    assert_eq!(client.malformed(), 1);
}

#[tokio::test]
async fn a_missing_channel_fails_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Agent::new(dir.path().join("none.sock"), quick());
    assert!(matches!(client.query().await, Err(AgentError::Connect(_))));
}

#[test]
fn the_status_says_when_the_agent_answered() {
    let status = status_of(
        Answer {
            host_name: Some("web".into()),
            ..Answer::default()
        },
        3,
        SystemTime::UNIX_EPOCH + Duration::from_secs(100),
    );
    assert_eq!(
        (
            status.answered_at,
            status.malformed_replies,
            status.host_name.as_deref()
        ),
        (100, 3, Some("web"))
    );
}

#[test]
fn a_program_the_agent_ran_reads_with_its_status_and_output() {
    assert_eq!(protocol::exec_status(json!({"exited": false})), Ok(None));
    let ended = protocol::exec_status(json!({"exited": true, "exitcode": 3, "out-data": "b2sK"})).unwrap();
    assert_eq!(
        ended,
        Some(vmlet_control::GuestExecResult {
            exit_code: 3,
            stdout: "ok\n".into(),
            stderr: String::new(),
        })
    );
    let killed = protocol::exec_status(json!({"exited": true, "signal": 9}))
        .unwrap()
        .unwrap();
    assert_eq!(killed.exit_code, 137);
    assert_eq!(protocol::exec_status(json!({"exited": true})), Err(Malformed));
    assert_eq!(
        protocol::exec_arguments(&["cat".into(), "/tmp/x".into()]),
        json!({"path": "cat", "arg": ["/tmp/x"], "capture-output": true})
    );
}

#[tokio::test]
async fn a_program_runs_through_the_agent_until_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guest-agent.sock");
    let agent = fake_agent(&socket, b"", |request| {
        Some(match request["execute"].as_str().unwrap() {
            "guest-ping" => "{\"return\": {}}".to_owned(),
            "guest-exec" if request["arguments"]["path"] == "sleep" => "{\"return\": {\"pid\": 8}}".to_owned(),
            "guest-exec" => "{\"return\": {\"pid\": 7}}".to_owned(),
            // Pid 7 ends at once; pid 8 never does.
            "guest-exec-status" if request["arguments"]["pid"] == 7 => {
                "{\"return\": {\"exited\": true, \"exitcode\": 1, \"err-data\": \"bm8K\"}}".to_owned()
            }
            _ => "{\"return\": {\"exited\": false}}".to_owned(),
        })
    })
    .await;
    let mut client = Agent::new(socket, quick());
    client.ping().await.unwrap();
    let exec = |program: &str| GuestExec {
        argv: vec![program.into()],
        timeout_secs: 1,
    };
    let ran = client.exec(&exec("false")).await.unwrap();
    assert_eq!((ran.exit_code, ran.stderr.as_str()), (1, "no\n"));
    assert!(matches!(
        client.exec(&exec("sleep")).await,
        Err(AgentError::ExecTimeout(_))
    ));
    drop(client);
    let commands = agent.await.unwrap();
    assert_eq!(
        &commands[..5],
        [
            "guest-sync-delimited",
            "guest-ping",
            "guest-sync-delimited",
            "guest-exec",
            "guest-exec-status"
        ]
    );
}
