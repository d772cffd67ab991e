//! The floor of the measurement: a responder process that answers each request with a canned reply, so what is
//! measured against it is the client, the veth pair and the kernel's wakeups, and nothing a real server does.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::ops::Range;

use anyhow::Context;
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use socket2::{Domain, Protocol, Socket, Type};

/// Where the transaction ID lies in a DHCP message, and where the first option starts (after the magic cookie).
const XID: Range<usize> = 4..8;
const FIRST_OPTION: usize = 240;
const MESSAGE_TYPE: u8 = 53;
const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;

/// The responder's options, given by the benchmark that runs it.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    interface: String,
    #[arg(long)]
    server_id: Ipv4Addr,
    #[arg(long)]
    address: Ipv4Addr,
    #[arg(long, value_parser = parse_mac)]
    client_mac: [u8; 6],
}

/// Answers every DISCOVER with the same OFFER and every REQUEST with the same ACK, but for the transaction ID,
/// until killed.
pub fn serve(args: &Args) -> anyhow::Result<()> {
    let offer = canned(MessageType::Offer, args);
    let ack = canned(MessageType::Ack, args);
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("cannot open a socket")?;
    socket
        .bind_device(Some(args.interface.as_bytes()))
        .context("cannot bind to the interface")?;
    socket.set_broadcast(true).context("cannot allow broadcast")?;
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67).into())
        .context("cannot bind port 67")?;
    let socket = UdpSocket::from(socket);
    let mut buffer = [0; 1500];
    loop {
        let len = socket.recv(&mut buffer).context("cannot receive")?;
        let mut reply = match message_type(&buffer[..len]) {
            Some(DISCOVER) => offer.clone(),
            Some(REQUEST) => ack.clone(),
            _ => continue,
        };
        reply[XID].copy_from_slice(&buffer[XID]);
        socket
            .send_to(&reply, (Ipv4Addr::BROADCAST, 68))
            .context("cannot send")?;
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let octets: Vec<u8> = text
        .split(':')
        .filter_map(|octet| u8::from_str_radix(octet, 16).ok())
        .collect();
    octets.try_into().map_err(|_| format!("not a MAC address: {text:?}"))
}

/// The value of option 53, found by walking the options: the least a server must do to answer.
fn message_type(packet: &[u8]) -> Option<u8> {
    let mut options = packet.get(FIRST_OPTION..)?;
    loop {
        let (&code, rest) = options.split_first()?;
        match code {
            0 => options = rest,
            255 => return None,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let (value, rest) = rest.split_at_checked(usize::from(len))?;
                if code == MESSAGE_TYPE {
                    return value.first().copied();
                }
                options = rest;
            }
        }
    }
}

/// A reply with everything but the transaction ID filled in.
fn canned(kind: MessageType, args: &Args) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(0, unspecified, args.address, unspecified, unspecified, &args.client_mac);
    message
        .set_opcode(Opcode::BootReply)
        .set_flags(Flags::default().set_broadcast());
    message.opts_mut().insert(DhcpOption::MessageType(kind));
    message.opts_mut().insert(DhcpOption::ServerIdentifier(args.server_id));
    message.to_vec().expect("a canned reply encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_message_type_among_other_options() {
        let mut packet = vec![0; FIRST_OPTION];
        packet.extend([0, 50, 4, 10, 0, 0, 5, 53, 1, 3, 255]);
        assert_eq!(message_type(&packet), Some(REQUEST));
        assert_eq!(message_type(&packet[..FIRST_OPTION + 8]), None);
        assert_eq!(message_type(&[0; 10]), None);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:00:00:0a:FF"), Ok([2, 0, 0, 0, 0x0a, 0xff]));
        assert!(parse_mac("02:00:00:00:0a").is_err() && parse_mac("02:00:00:00:0a:ff:01").is_err());
    }
}
