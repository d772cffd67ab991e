//! Ethernet frames carrying IPv6 with UDP or ICMPv6, built whole and parsed strictly.
//!
//! Router advertisements must leave with the router's addresses, not the interface's, so the runner sends on a raw
//! `AF_PACKET` socket and everything from the Ethernet header up is built here. DHCPv6 replies take the same path,
//! so the interface needs no IPv6 configuration of its own. Frames received the same way are checked here before
//! anything reads them: lengths, version, and the upper-layer checksum that IPv6 makes mandatory.

use std::net::Ipv6Addr;

use crate::config::MacAddr;

use crate::checksum::Checksum;

pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const NEXT_HEADER_UDP: u8 = 17;
pub const NEXT_HEADER_ICMPV6: u8 = 58;
pub const ETHERNET_HEADER_LEN: usize = 14;
pub const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
const ICMPV6_HEADER_LEN: usize = 4;

/// One end of a frame: a hardware address and an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: MacAddr,
    pub ip: Ipv6Addr,
}

/// A parsed frame; `payload` borrows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub hop_limit: u8,
    pub payload: Payload<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Udp {
        src_port: u16,
        dst_port: u16,
        data: &'a [u8],
    },
    /// The whole ICMPv6 message, type and code first.
    Icmpv6(&'a [u8]),
}

/// Why a frame was not parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated frame of {0} bytes")]
    Truncated(usize),
    #[error("not an IPv6 packet")]
    NotIpv6,
    /// UDP or ICMPv6 behind extension headers, or another protocol: nothing a DHCPv6 client or a router
    /// solicitation sends.
    #[error("next header {0} is neither UDP nor ICMPv6")]
    OtherProtocol(u8),
    #[error("the UDP length disagrees with the IPv6 payload length")]
    BadUdpLength,
    #[error("bad checksum")]
    BadChecksum,
}

/// An upper-layer message longer than one IPv6 packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes do not fit in an IPv6 packet")]
pub struct PayloadTooLong(pub usize);

/// A frame carrying an ICMPv6 message of type `message_type`, code 0, with `body` after the checksum.
pub fn icmpv6(
    src: Endpoint,
    dst: Endpoint,
    hop_limit: u8,
    message_type: u8,
    body: &[u8],
) -> Result<Vec<u8>, PayloadTooLong> {
    let mut message = Vec::with_capacity(ICMPV6_HEADER_LEN + body.len());
    message.extend_from_slice(&[message_type, 0, 0, 0]);
    message.extend_from_slice(body);
    frame(src, dst, hop_limit, NEXT_HEADER_ICMPV6, &message, 2)
}

/// A frame carrying `data` in a UDP datagram from `src_port` to `dst_port`.
pub fn udp(
    src: Endpoint,
    src_port: u16,
    dst: Endpoint,
    dst_port: u16,
    hop_limit: u8,
    data: &[u8],
) -> Result<Vec<u8>, PayloadTooLong> {
    let len = u16::try_from(UDP_HEADER_LEN + data.len()).map_err(|_| PayloadTooLong(data.len()))?;
    let mut datagram = Vec::with_capacity(usize::from(len));
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(data);
    frame(src, dst, hop_limit, NEXT_HEADER_UDP, &datagram, 6)
}

/// Ethernet and IPv6 headers before `upper`, whose zeroed checksum field (at `checksum_at`) is filled in over the
/// pseudo-header.
fn frame(
    src: Endpoint,
    dst: Endpoint,
    hop_limit: u8,
    next_header: u8,
    upper: &[u8],
    checksum_at: usize,
) -> Result<Vec<u8>, PayloadTooLong> {
    let payload_len = u16::try_from(upper.len()).map_err(|_| PayloadTooLong(upper.len()))?;
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + upper.len());
    frame.extend_from_slice(&dst.mac.0);
    frame.extend_from_slice(&src.mac.0);
    frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class, no flow label
    frame.extend_from_slice(&payload_len.to_be_bytes());
    frame.extend_from_slice(&[next_header, hop_limit]);
    frame.extend_from_slice(&src.ip.octets());
    frame.extend_from_slice(&dst.ip.octets());
    let start = frame.len();
    frame.extend_from_slice(upper);
    let mut value = pseudo_header_sum(src.ip, dst.ip, next_header, &frame[start..]).finish();
    // UDP over IPv6 must carry a checksum, and zero means none: a computed zero goes out as its other form
    // (RFC 8200 §8.1). ICMPv6 has no such rule, and either form verifies.
    if value == 0 && next_header == NEXT_HEADER_UDP {
        value = 0xffff;
    }
    frame[start + checksum_at..start + checksum_at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(frame)
}

/// Parses an Ethernet frame carrying UDP or ICMPv6 directly in IPv6, checking every length and the checksum.
/// Bytes after the IPv6 payload (Ethernet padding) are ignored.
pub fn parse(frame: &[u8]) -> Result<Packet<'_>, FrameError> {
    let header_end = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let Some((headers, rest)) = frame.split_at_checked(header_end) else {
        return Err(FrameError::Truncated(frame.len()));
    };
    let field = |at: usize| u16::from_be_bytes([headers[at], headers[at + 1]]);
    if field(12) != ETHERTYPE_IPV6 || headers[ETHERNET_HEADER_LEN] >> 4 != 6 {
        return Err(FrameError::NotIpv6);
    }
    let ip = &headers[ETHERNET_HEADER_LEN..];
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let upper = rest.get(..payload_len).ok_or(FrameError::Truncated(frame.len()))?;
    let next_header = ip[6];
    let address = |at: usize| {
        let mut octets = [0; 16];
        octets.copy_from_slice(&ip[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let mac = |at: usize| {
        let mut octets = [0; 6];
        octets.copy_from_slice(&headers[at..at + 6]);
        MacAddr(octets)
    };
    let src = Endpoint {
        mac: mac(6),
        ip: address(8),
    };
    let dst = Endpoint {
        mac: mac(0),
        ip: address(24),
    };

    let payload = match next_header {
        NEXT_HEADER_UDP => {
            if upper.len() < UDP_HEADER_LEN {
                return Err(FrameError::Truncated(frame.len()));
            }
            let word = |at: usize| u16::from_be_bytes([upper[at], upper[at + 1]]);
            if usize::from(word(4)) != upper.len() {
                return Err(FrameError::BadUdpLength);
            }
            if word(6) == 0 {
                return Err(FrameError::BadChecksum);
            }
            Payload::Udp {
                src_port: word(0),
                dst_port: word(2),
                data: &upper[UDP_HEADER_LEN..],
            }
        }
        NEXT_HEADER_ICMPV6 => {
            if upper.len() < ICMPV6_HEADER_LEN {
                return Err(FrameError::Truncated(frame.len()));
            }
            Payload::Icmpv6(upper)
        }
        other => return Err(FrameError::OtherProtocol(other)),
    };
    if pseudo_header_sum(src.ip, dst.ip, next_header, upper).finish() != 0 {
        return Err(FrameError::BadChecksum);
    }
    Ok(Packet {
        src,
        dst,
        hop_limit: ip[7],
        payload,
    })
}

/// The sum over the IPv6 pseudo-header (RFC 8200 §8.1) and the upper-layer message.
fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, upper: &[u8]) -> Checksum {
    let mut sum = Checksum::default();
    sum.add(&src.octets());
    sum.add(&dst.octets());
    // The upper-layer length fits in 32 bits: it came from, or went into, a 16-bit field.
    sum.add(&(upper.len() as u32).to_be_bytes());
    sum.add(&[0, 0, 0, next_header]);
    sum.add(upper);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: Endpoint = Endpoint {
        mac: MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]),
        ip: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0001),
    };
    const ROUTER: Endpoint = Endpoint {
        mac: MacAddr([0xee; 6]),
        ip: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    };

    /// A checksum computed the plain way, word by word over one buffer holding the pseudo-header, as a cross-check
    /// on the incremental one.
    fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, upper: &[u8]) -> u16 {
        let mut buffer = Vec::new();
        buffer.extend_from_slice(&src.octets());
        buffer.extend_from_slice(&dst.octets());
        buffer.extend_from_slice(&(upper.len() as u32).to_be_bytes());
        buffer.extend_from_slice(&[0, 0, 0, next_header]);
        buffer.extend_from_slice(upper);
        if buffer.len() % 2 == 1 {
            buffer.push(0);
        }
        let mut sum: u32 = 0;
        for pair in buffer.chunks(2) {
            sum += u32::from(pair[0]) << 8 | u32::from(pair[1]);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn a_router_solicitation_from_linux_parses_and_rebuilds_byte_for_byte() {
        // Sent by Linux 6.1 as a veth came up; tcpdump reported "icmp6 sum ok" for it.
        let frame: [u8; 70] = [
            0x33, 0x33, 0x00, 0x00, 0x00, 0x02, 0x26, 0xc4, 0x11, 0xa6, 0x6e, 0x4d, 0x86, 0xdd, // Ethernet
            0x60, 0x00, 0x00, 0x00, 0x00, 0x10, 0x3a, 0xff, // IPv6: payload 16, ICMPv6, hop limit 255
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x24, 0xc4, 0x11, 0xff, 0xfe, 0xa6, 0x6e, 0x4d, // source
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination
            0x85, 0x00, 0x31, 0xbf, 0x00, 0x00, 0x00, 0x00, // type 133, code 0, checksum, reserved
            0x01, 0x01, 0x26, 0xc4, 0x11, 0xa6, 0x6e, 0x4d, // source link-layer address
        ];
        let packet = parse(&frame).unwrap();
        let src = Endpoint {
            mac: MacAddr([0x26, 0xc4, 0x11, 0xa6, 0x6e, 0x4d]),
            ip: "fe80::24c4:11ff:fea6:6e4d".parse().unwrap(),
        };
        let dst = Endpoint {
            mac: MacAddr([0x33, 0x33, 0, 0, 0, 2]),
            ip: "ff02::2".parse().unwrap(),
        };
        assert_eq!(
            packet,
            Packet {
                src,
                dst,
                hop_limit: 255,
                payload: Payload::Icmpv6(&frame[54..])
            }
        );
        assert_eq!(icmpv6(src, dst, 255, 133, &frame[58..]).unwrap(), frame);
    }

    #[test]
    fn built_frames_carry_the_reference_checksum_and_parse_back() {
        let data: Vec<u8> = (0..=255).cycle().take(301).collect();
        let frame = udp(ROUTER, 547, GUEST, 546, 1, &data).unwrap();
        assert_eq!(frame.len(), 14 + 40 + 8 + 301);
        assert_eq!(frame[12..14], [0x86, 0xdd]);
        assert_eq!(frame[18..20], 309u16.to_be_bytes(), "payload length");
        assert_eq!(frame[20..22], [NEXT_HEADER_UDP, 1]);
        let mut upper = frame[54..].to_vec();
        let sent = u16::from_be_bytes([upper[6], upper[7]]);
        upper[6..8].fill(0);
        assert_eq!(sent, reference_checksum(ROUTER.ip, GUEST.ip, NEXT_HEADER_UDP, &upper));
        assert_eq!(
            parse(&frame).unwrap(),
            Packet {
                src: ROUTER,
                dst: GUEST,
                hop_limit: 1,
                payload: Payload::Udp {
                    src_port: 547,
                    dst_port: 546,
                    data: &data
                }
            }
        );

        let body = [64, 0xc0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        let frame = icmpv6(ROUTER, GUEST, 255, 134, &body).unwrap();
        let sent = u16::from_be_bytes([frame[56], frame[57]]);
        let mut message = vec![134, 0, 0, 0];
        message.extend_from_slice(&body);
        assert_eq!(
            sent,
            reference_checksum(ROUTER.ip, GUEST.ip, NEXT_HEADER_ICMPV6, &message)
        );
        assert_eq!(parse(&frame).unwrap().payload, Payload::Icmpv6(&frame[54..]));
    }

    #[test]
    fn a_zero_udp_checksum_is_sent_as_all_ones() {
        // Make the sum come out at 0xffff by choosing the last data word.
        let mut data = vec![0x12, 0x34, 0, 0];
        let partial = reference_checksum(ROUTER.ip, GUEST.ip, NEXT_HEADER_UDP, &{
            let mut upper = vec![0x02, 0x23, 0x02, 0x22, 0, 12, 0, 0];
            upper.extend_from_slice(&data);
            upper
        });
        data[2..4].copy_from_slice(&partial.to_be_bytes());
        let frame = udp(ROUTER, 547, GUEST, 546, 64, &data).unwrap();
        assert_eq!(frame[60..62], [0xff, 0xff]);
        assert!(parse(&frame).is_ok(), "all ones verifies");
    }

    #[test]
    fn damaged_frames_are_refused() {
        let good = udp(ROUTER, 547, GUEST, 546, 64, b"dhcpv6").unwrap();
        assert_eq!(parse(&good[..53]), Err(FrameError::Truncated(53)));
        assert_eq!(
            parse(&good[..good.len() - 1]),
            Err(FrameError::Truncated(good.len() - 1))
        );
        let mut ipv4 = good.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse(&ipv4), Err(FrameError::NotIpv6));
        let mut version = good.clone();
        version[14] = 0x40;
        assert_eq!(parse(&version), Err(FrameError::NotIpv6));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&flipped), Err(FrameError::BadChecksum));
        let mut no_checksum = good.clone();
        no_checksum[60..62].fill(0);
        assert_eq!(parse(&no_checksum), Err(FrameError::BadChecksum));
        let mut udp_len = good.clone();
        udp_len[59] -= 1;
        assert_eq!(parse(&udp_len), Err(FrameError::BadUdpLength));
        let mut hop_by_hop = good.clone();
        hop_by_hop[20] = 0;
        assert_eq!(parse(&hop_by_hop), Err(FrameError::OtherProtocol(0)));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 8]);
        assert!(parse(&padded).is_ok(), "trailing padding is ignored");
    }

    #[test]
    fn oversized_messages_are_refused() {
        assert_eq!(
            udp(ROUTER, 547, GUEST, 546, 64, &vec![0; 65527]).map(|f| f.len()),
            Ok(54 + 65535)
        );
        assert_eq!(
            udp(ROUTER, 547, GUEST, 546, 64, &vec![0; 65528]),
            Err(PayloadTooLong(65528))
        );
        assert_eq!(
            icmpv6(ROUTER, GUEST, 255, 134, &vec![0; 65531]).map(|f| f.len()),
            Ok(54 + 65535)
        );
        assert_eq!(
            icmpv6(ROUTER, GUEST, 255, 134, &vec![0; 65532]),
            Err(PayloadTooLong(65536))
        );
    }
}
