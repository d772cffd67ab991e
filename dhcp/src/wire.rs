//! Strict checking of a request's bytes before `dhcproto` decodes them.
//!
//! `dhcproto`'s option decoder stops quietly at the first option it cannot read, and a few of its decoders assume
//! well-formed lengths. A request comes from a guest we do not trust, so it is walked here first: anything that
//! overruns the packet is rejected, and only the options the server reads are passed on, each with a length that
//! decodes cleanly.

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};

/// The fixed BOOTP header, up to and including the magic cookie.
const HEADER_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const PAD: u8 = 0;
const END: u8 = 255;

/// Whether an option the server reads may have this length.
type LengthCheck = fn(usize) -> bool;

/// Option codes the server reads, with the lengths it accepts.
const READ_OPTIONS: [(u8, LengthCheck); 5] = [
    (53, |len| len == 1), // message type
    (50, |len| len == 4), // requested IP address
    (54, |len| len == 4), // server identifier
    (55, |len| len >= 1), // parameter request list
    (57, |len| len == 2), // maximum message size
];

/// Why a packet was dropped as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than the fixed header and magic cookie.
    #[error("truncated: {0} bytes, the header alone is 240")]
    Truncated(usize),
    #[error("bad magic cookie")]
    BadMagicCookie,
    #[error("hardware address length {0} exceeds 16")]
    BadHardwareLength(u8),
    /// An option whose length runs past the end of the packet.
    #[error("option {0} overruns the packet")]
    OptionOverrun(u8),
    /// An option the server reads, with a length it cannot have.
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("no DHCP message type")]
    NoMessageType,
    #[error("header does not decode")]
    Undecodable,
}

/// Checks `packet` and decodes the parts of it the server reads.
pub fn decode_request(packet: &[u8]) -> Result<(Message, MessageType), Malformed> {
    let sanitized = sanitize(packet)?;
    let message = Message::decode(&mut Decoder::new(&sanitized)).map_err(|_| Malformed::Undecodable)?;
    let message_type = message.opts().msg_type().ok_or(Malformed::NoMessageType)?;
    Ok((message, message_type))
}

/// Returns the header followed by only the options in [`READ_OPTIONS`], each checked and with split options
/// (RFC 3396) joined.
fn sanitize(packet: &[u8]) -> Result<Vec<u8>, Malformed> {
    if packet.len() < HEADER_LEN {
        return Err(Malformed::Truncated(packet.len()));
    }
    if packet[236..HEADER_LEN] != MAGIC_COOKIE {
        return Err(Malformed::BadMagicCookie);
    }
    let hlen = packet[2];
    if hlen > 16 {
        return Err(Malformed::BadHardwareLength(hlen));
    }

    let mut kept: [Vec<u8>; READ_OPTIONS.len()] = Default::default();
    let mut seen = [false; READ_OPTIONS.len()];
    let mut rest = &packet[HEADER_LEN..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            PAD => rest = tail,
            END => break,
            _ => {
                let (&len, tail) = tail.split_first().ok_or(Malformed::OptionOverrun(code))?;
                let len = usize::from(len);
                if tail.len() < len {
                    return Err(Malformed::OptionOverrun(code));
                }
                let (data, tail) = tail.split_at(len);
                if let Some(i) = READ_OPTIONS.iter().position(|&(c, _)| c == code) {
                    kept[i].extend_from_slice(data);
                    seen[i] = true;
                }
                rest = tail;
            }
        }
    }

    let mut out = packet[..HEADER_LEN].to_vec();
    for (i, &(code, valid_len)) in READ_OPTIONS.iter().enumerate() {
        if !seen[i] {
            continue;
        }
        let data = &kept[i];
        if !valid_len(data.len()) {
            return Err(Malformed::BadOptionLength { code, len: data.len() });
        }
        for chunk in data.chunks(255) {
            out.push(code);
            out.push(chunk.len() as u8); // chunks(255) keeps this within u8
            out.extend_from_slice(chunk);
        }
    }
    out.push(END);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 1; // BOOTREQUEST
        p[1] = 1; // Ethernet
        p[2] = 6;
        p[236..240].copy_from_slice(&MAGIC_COOKIE);
        p
    }

    #[test]
    fn short_packets_are_truncated() {
        assert_eq!(sanitize(&[]), Err(Malformed::Truncated(0)));
        assert_eq!(sanitize(&header()[..239]), Err(Malformed::Truncated(239)));
    }

    #[test]
    fn bad_cookie_and_hardware_length_are_rejected() {
        let mut p = header();
        p[239] = 0;
        assert_eq!(sanitize(&p), Err(Malformed::BadMagicCookie));
        let mut p = header();
        p[2] = 17;
        assert_eq!(sanitize(&p), Err(Malformed::BadHardwareLength(17)));
    }

    #[test]
    fn overrunning_options_are_rejected() {
        let mut p = header();
        p.extend([53, 1, 1, 12, 10, b'a']);
        assert_eq!(sanitize(&p), Err(Malformed::OptionOverrun(12)));
        let mut p = header();
        p.extend([53, 1, 1, 12]);
        assert_eq!(sanitize(&p), Err(Malformed::OptionOverrun(12)));
    }

    #[test]
    fn read_options_with_wrong_lengths_are_rejected() {
        let mut p = header();
        p.extend([53, 2, 1, 1, 255]);
        assert_eq!(sanitize(&p), Err(Malformed::BadOptionLength { code: 53, len: 2 }));
        let mut p = header();
        p.extend([53, 1, 3, 50, 3, 10, 0, 0, 255]);
        assert_eq!(sanitize(&p), Err(Malformed::BadOptionLength { code: 50, len: 3 }));
    }

    #[test]
    fn unread_options_are_dropped_whatever_their_content() {
        // Option 81 (client FQDN) with length 0 would underflow dhcproto's decoder.
        let mut p = header();
        p.extend([81, 0, 151, 0, 53, 1, 1, 255]);
        let (_, message_type) = decode_request(&p).unwrap();
        assert_eq!(message_type, MessageType::Discover);
    }

    #[test]
    fn split_options_are_joined() {
        let mut p = header();
        p.extend([53, 1, 1, 55, 2, 1, 3, 55, 1, 6, 255]);
        let (message, _) = decode_request(&p).unwrap();
        let Some(dhcproto::v4::DhcpOption::ParameterRequestList(list)) =
            message.opts().get(dhcproto::v4::OptionCode::ParameterRequestList)
        else {
            panic!("no parameter request list");
        };
        let codes: Vec<u8> = list.iter().map(|&c| c.into()).collect();
        assert_eq!(codes, [1, 3, 6]);
    }

    #[test]
    fn missing_end_and_trailing_pad_are_tolerated() {
        let mut p = header();
        p.extend([53, 1, 1]);
        assert!(decode_request(&p).is_ok());
        let mut p = header();
        p.extend([0, 0, 53, 1, 1, 255, 0, 0, 0]);
        assert!(decode_request(&p).is_ok());
    }

    #[test]
    fn no_message_type_is_malformed() {
        let mut p = header();
        p.push(255);
        assert_eq!(decode_request(&p).err(), Some(Malformed::NoMessageType));
    }
}
