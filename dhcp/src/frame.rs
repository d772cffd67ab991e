//! IPv4 and UDP headers for replies sent on a packet socket.
//!
//! A client without an address cannot answer ARP, so a reply to it cannot go through the kernel's IP stack; it is
//! sent on an `AF_PACKET` datagram socket instead, where the kernel adds only the Ethernet header and everything
//! above it is built here.

use std::net::SocketAddrV4;

use crate::checksum::Checksum;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// Don't fragment. It also makes the datagram atomic, for which a zero identification is allowed (RFC 6864 §4.1).
const DONT_FRAGMENT: u16 = 0x4000;

/// The largest payload one IPv4 datagram carries over UDP.
pub const MAX_UDP_PAYLOAD: usize = u16::MAX as usize - IPV4_HEADER_LEN - UDP_HEADER_LEN;

/// A payload larger than [`MAX_UDP_PAYLOAD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a UDP payload of {0} bytes does not fit in an IPv4 datagram")]
pub struct PayloadTooLong(pub usize);

/// An IPv4 datagram (no options) carrying `payload` in UDP from `src` to `dst`, with both checksums filled in.
pub fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], ttl: u8) -> Result<Vec<u8>, PayloadTooLong> {
    if payload.len() > MAX_UDP_PAYLOAD {
        return Err(PayloadTooLong(payload.len()));
    }
    // Both fit in u16: checked against MAX_UDP_PAYLOAD above.
    let udp_len = (UDP_HEADER_LEN + payload.len()) as u16;
    let total_len = (IPV4_HEADER_LEN + usize::from(udp_len)) as u16;

    let mut packet = Vec::with_capacity(usize::from(total_len));
    packet.extend_from_slice(&[0x45, 0]); // version 4, 5-word header; no TOS
    packet.extend_from_slice(&total_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // identification
    packet.extend_from_slice(&DONT_FRAGMENT.to_be_bytes());
    packet.extend_from_slice(&[ttl, IPPROTO_UDP, 0, 0]); // checksum filled in below
    packet.extend_from_slice(&src.ip().octets());
    packet.extend_from_slice(&dst.ip().octets());
    let ip_checksum = Checksum::of(&[&packet]);
    packet[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    packet.extend_from_slice(&src.port().to_be_bytes());
    packet.extend_from_slice(&dst.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // checksum filled in below
    packet.extend_from_slice(payload);

    // The pseudo-header (RFC 768): addresses, protocol and UDP length.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = IPPROTO_UDP;
    pseudo[10..].copy_from_slice(&udp_len.to_be_bytes());
    let udp_checksum = match Checksum::of(&[&pseudo, &packet[IPV4_HEADER_LEN..]]) {
        // Zero means "no checksum" in UDP over IPv4, so a computed zero is sent as its other form.
        0 => 0xffff,
        value => value,
    };
    packet[IPV4_HEADER_LEN + 6..IPV4_HEADER_LEN + 8].copy_from_slice(&udp_checksum.to_be_bytes());
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    #[test]
    fn broadcast_reply_matches_a_packet_checked_independently() {
        // Reference bytes from a separate RFC 1071 implementation (Python's struct module).
        let expected: [u8; 33] = [
            0x45, 0x00, 0x00, 0x21, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x45, 0xc4, // IPv4, checksum 0x45c4
            0xa9, 0xfe, 0x4b, 0x0a, 0xff, 0xff, 0xff, 0xff, // 169.254.75.10 -> 255.255.255.255
            0x00, 0x43, 0x00, 0x44, 0x00, 0x0d, 0xb3, 0x71, // UDP 67 -> 68, length 13, checksum 0xb371
            b'v', b'm', b'l', b'e', b't',
        ];
        let packet = ipv4_udp(addr([169, 254, 75, 10], 67), addr([255; 4], 68), b"vmlet", 64).unwrap();
        assert_eq!(packet, expected);
    }

    #[test]
    fn header_checksum_matches_the_textbook_example() {
        // The worked example of the header checksum in Wikipedia's IPv4 article: a 115-byte UDP datagram, 0xb861.
        let packet = ipv4_udp(addr([192, 168, 0, 1], 67), addr([192, 168, 0, 199], 68), &[0; 87], 64).unwrap();
        assert_eq!(
            packet[..IPV4_HEADER_LEN],
            [
                0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0,
                0xa8, 0x00, 0xc7
            ]
        );
    }

    #[test]
    fn checksums_verify_to_zero() {
        let payload: Vec<u8> = (0..=255).cycle().take(548).collect();
        let (src, dst) = (addr([10, 244, 1, 1], 67), addr([10, 244, 1, 7], 68));
        let packet = ipv4_udp(src, dst, &payload, 1).unwrap();
        assert_eq!(packet.len(), 20 + 8 + 548);
        assert_eq!(u16::from_be_bytes([packet[2], packet[3]]), 576);
        assert_eq!(u16::from_be_bytes([packet[24], packet[25]]), 556);
        assert_eq!(packet[8], 1);
        assert_eq!(&packet[28..], payload.as_slice());
        assert_eq!(Checksum::of(&[&packet[..20]]), 0);
        let pseudo = [10, 244, 1, 1, 10, 244, 1, 7, 0, 17, 0x02, 0x2c];
        assert_eq!(Checksum::of(&[&pseudo, &packet[20..]]), 0);
    }

    #[test]
    fn zero_udp_checksum_is_sent_as_all_ones() {
        // This payload makes the computed checksum zero (found with the same reference implementation).
        let packet = ipv4_udp(addr([10, 0, 0, 1], 67), addr([10, 0, 0, 2], 68), &[0xeb, 0x50], 64).unwrap();
        assert_eq!(packet[26..28], [0xff, 0xff]);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let (src, dst) = (addr([10, 0, 0, 1], 67), addr([10, 0, 0, 2], 68));
        assert_eq!(
            ipv4_udp(src, dst, &vec![0; MAX_UDP_PAYLOAD], 64).map(|p| p.len()),
            Ok(65535)
        );
        assert_eq!(
            ipv4_udp(src, dst, &vec![0; MAX_UDP_PAYLOAD + 1], 64),
            Err(PayloadTooLong(MAX_UDP_PAYLOAD + 1))
        );
    }
}
