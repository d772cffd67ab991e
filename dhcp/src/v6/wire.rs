//! Strict checking of a DHCPv6 client message's bytes before `dhcproto` decodes them.
//!
//! `dhcproto` 0.15's v6 decoder cannot take untrusted bytes: a status code, vendor class or vendor options option
//! shorter than its fixed part makes it subtract past zero (a panic in a debug build; in a release build the
//! decoder stops there), any option it cannot read ends the decoding quietly with the rest of the message lost,
//! and a preference or elapsed time option of the wrong length throws the following options out of step. A
//! message comes from a guest we do not trust, so it is walked here first, identity associations and their
//! addresses included: anything that overruns its container is rejected, each option the server reads must have a
//! length it can have (and appear once, where the protocol allows only one), and only those options are passed
//! on, in a form that decodes cleanly. Relay messages never get here: the server reads client messages only.

use dhcproto::v6::Message;
use dhcproto::{Decodable, Decoder};

/// Message type and transaction ID.
const HEADER_LEN: usize = 4;
/// Option code and length.
const OPTION_HEADER_LEN: usize = 4;
/// IAID, T1 and T2, at the start of an IA_NA or IA_PD.
const IA_HEADER_LEN: usize = 12;
/// Address, preferred and valid lifetimes, at the start of an IA Address option.
const IA_ADDRESS_LEN: usize = 24;

pub(crate) const CLIENT_ID: u16 = 1;
pub(crate) const SERVER_ID: u16 = 2;
pub(crate) const IA_NA: u16 = 3;
pub(crate) const IA_ADDRESS: u16 = 5;
pub(crate) const ORO: u16 = 6;
pub(crate) const RAPID_COMMIT: u16 = 14;
pub(crate) const DNS_SERVERS: u16 = 23;
pub(crate) const DOMAIN_LIST: u16 = 24;
pub(crate) const IA_PD: u16 = 25;

/// Identity associations of each kind, and addresses in each, beyond these are left out: no client needs more, and
/// they bound the reply, which answers each.
pub(crate) const MAX_IAS: usize = 4;
pub(crate) const MAX_IA_ADDRESSES: usize = 4;

/// A DUID is a 2-byte type and at most 128 bytes more (RFC 8415 §11.1); no type has an empty identifier.
const DUID_LEN: std::ops::RangeInclusive<usize> = 3..=130;

/// Why a message was dropped as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than the message type and transaction ID.
    #[error("truncated: {0} bytes, the header alone is 4")]
    Truncated(usize),
    /// An option whose length runs past the end of the message, or of the option that holds it.
    #[error("option {0} overruns its container")]
    OptionOverrun(u16),
    /// Bytes left after the last option, too few for an option header.
    #[error("{0} stray bytes after the last option")]
    StrayBytes(usize),
    /// An option the server reads, with a length it cannot have.
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u16, len: usize },
    #[error("option {0} appears more than once")]
    DuplicateOption(u16),
    #[error("does not decode")]
    Undecodable,
}

/// Checks `packet` and decodes the parts of it the server reads.
pub fn decode_request(packet: &[u8]) -> Result<Message, Malformed> {
    let sanitized = sanitize(packet)?;
    Message::decode(&mut Decoder::new(&sanitized)).map_err(|_| Malformed::Undecodable)
}

/// Returns the header followed by only the options the server reads, each checked, the identity associations
/// stripped of everything but their addresses' values.
fn sanitize(packet: &[u8]) -> Result<Vec<u8>, Malformed> {
    let (header, options) = packet
        .split_at_checked(HEADER_LEN)
        .ok_or(Malformed::Truncated(packet.len()))?;
    let mut out = header.to_vec();
    let mut seen = Vec::new();
    let (mut ia_nas, mut ia_pds) = (0, 0);
    for (code, data) in walk(options)? {
        let bad_length = || Malformed::BadOptionLength { code, len: data.len() };
        let valid = match code {
            CLIENT_ID | SERVER_ID => DUID_LEN.contains(&data.len()),
            ORO => data.len() % 2 == 0,
            RAPID_COMMIT => data.is_empty(),
            IA_NA | IA_PD => data.len() >= IA_HEADER_LEN,
            _ => continue,
        };
        if !valid {
            return Err(bad_length());
        }
        match code {
            IA_NA => {
                let addresses = ia_addresses(&data[IA_HEADER_LEN..])?;
                if ia_nas < MAX_IAS {
                    ia_nas += 1;
                    let len = IA_HEADER_LEN + addresses.len() * (OPTION_HEADER_LEN + IA_ADDRESS_LEN);
                    push_option_header(&mut out, IA_NA, len);
                    out.extend_from_slice(&data[..IA_HEADER_LEN]);
                    for address in addresses {
                        push_option_header(&mut out, IA_ADDRESS, IA_ADDRESS_LEN);
                        out.extend_from_slice(address);
                    }
                }
            }
            IA_PD => {
                // Only its IAID is read: the server delegates no prefixes and says so.
                walk(&data[IA_HEADER_LEN..])?;
                if ia_pds < MAX_IAS {
                    ia_pds += 1;
                    push_option_header(&mut out, IA_PD, IA_HEADER_LEN);
                    out.extend_from_slice(&data[..IA_HEADER_LEN]);
                }
            }
            _ => {
                if seen.contains(&code) {
                    return Err(Malformed::DuplicateOption(code));
                }
                seen.push(code);
                push_option_header(&mut out, code, data.len());
                out.extend_from_slice(data);
            }
        }
    }
    Ok(out)
}

/// The fixed part of each IA Address option among an IA_NA's options, up to [`MAX_IA_ADDRESSES`]; the options
/// inside each address are checked for framing and dropped.
fn ia_addresses(options: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut addresses = Vec::new();
    for (code, data) in walk(options)? {
        if code != IA_ADDRESS {
            continue;
        }
        let (fixed, inner) = data
            .split_at_checked(IA_ADDRESS_LEN)
            .ok_or(Malformed::BadOptionLength { code, len: data.len() })?;
        walk(inner)?;
        if addresses.len() < MAX_IA_ADDRESSES {
            addresses.push(fixed);
        }
    }
    Ok(addresses)
}

/// Splits `options` into (code, data) pairs, refusing any that overrun it.
fn walk(mut options: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut found = Vec::new();
    while !options.is_empty() {
        let Some((header, rest)) = options.split_at_checked(OPTION_HEADER_LEN) else {
            return Err(Malformed::StrayBytes(options.len()));
        };
        let code = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let (data, rest) = rest.split_at_checked(len).ok_or(Malformed::OptionOverrun(code))?;
        found.push((code, data));
        options = rest;
    }
    Ok(found)
}

/// Both values fit: every option written here is at most 12 + 4 × 28 bytes, or a copy of one that fit.
fn push_option_header(out: &mut Vec<u8>, code: u16, len: usize) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v6::{DhcpOption, MessageType, OptionCode};

    const SOLICIT: [u8; 4] = [1, 0xab, 0xcd, 0xef];
    const DUID: [u8; 10] = [0, 3, 0, 1, 2, 0, 0, 0, 0, 1];

    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut out = code.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn message(options: &[Vec<u8>]) -> Vec<u8> {
        let mut out = SOLICIT.to_vec();
        for o in options {
            out.extend_from_slice(o);
        }
        out
    }

    fn ia_address(last: u8, inner: &[u8]) -> Vec<u8> {
        let mut data = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last];
        data.extend_from_slice(&[0, 0, 0, 60, 0, 0, 0, 120]);
        data.extend_from_slice(inner);
        option(IA_ADDRESS, &data)
    }

    fn ia(code: u16, iaid: u8, inner: &[Vec<u8>]) -> Vec<u8> {
        let mut data = vec![0, 0, 0, iaid, 0, 0, 0, 0, 0, 0, 0, 0];
        for o in inner {
            data.extend_from_slice(o);
        }
        option(code, &data)
    }

    #[test]
    fn short_messages_are_truncated() {
        assert_eq!(decode_request(&[]), Err(Malformed::Truncated(0)));
        assert_eq!(decode_request(&SOLICIT[..3]), Err(Malformed::Truncated(3)));
        assert!(decode_request(&SOLICIT).is_ok());
    }

    #[test]
    fn overruns_at_every_level_are_rejected() {
        let mut overrun = option(CLIENT_ID, &DUID);
        overrun.truncate(overrun.len() - 1);
        assert_eq!(
            decode_request(&message(&[overrun])),
            Err(Malformed::OptionOverrun(CLIENT_ID))
        );
        assert_eq!(
            decode_request(&message(&[option(CLIENT_ID, &DUID), vec![0, 8, 0]])),
            Err(Malformed::StrayBytes(3))
        );
        // An unread option must still be framed right: everything after it depends on it.
        assert_eq!(
            decode_request(&message(&[vec![0, 99, 0, 9, 1]])),
            Err(Malformed::OptionOverrun(99))
        );
        let inside_ia = ia(IA_NA, 1, &[vec![0, IA_ADDRESS as u8, 0, 30, 0]]);
        assert_eq!(
            decode_request(&message(&[inside_ia])),
            Err(Malformed::OptionOverrun(IA_ADDRESS))
        );
        let inside_address = ia(IA_NA, 1, &[ia_address(7, &[0, 13, 0, 8, 0, 0])]);
        assert_eq!(
            decode_request(&message(&[inside_address])),
            Err(Malformed::OptionOverrun(13))
        );
        let inside_pd = ia(IA_PD, 1, &[vec![0, 26, 0, 1]]);
        assert_eq!(
            decode_request(&message(&[inside_pd])),
            Err(Malformed::OptionOverrun(26))
        );
    }

    #[test]
    fn read_options_with_impossible_lengths_are_rejected() {
        let cases = [
            (option(CLIENT_ID, &[0, 3]), CLIENT_ID, 2),
            (option(SERVER_ID, &[7; 131]), SERVER_ID, 131),
            (option(ORO, &[0, 23, 0]), ORO, 3),
            (option(RAPID_COMMIT, &[1]), RAPID_COMMIT, 1),
            (option(IA_NA, &[0; 11]), IA_NA, 11),
            (option(IA_PD, &[0; 4]), IA_PD, 4),
            (ia(IA_NA, 1, &[option(IA_ADDRESS, &[0; 23])]), IA_ADDRESS, 23),
        ];
        for (bad, code, len) in cases {
            assert_eq!(
                decode_request(&message(&[bad])),
                Err(Malformed::BadOptionLength { code, len }),
                "option {code}"
            );
        }
    }

    #[test]
    fn singletons_may_not_repeat_but_identity_associations_may() {
        let twice = message(&[option(CLIENT_ID, &DUID), option(CLIENT_ID, &DUID)]);
        assert_eq!(decode_request(&twice), Err(Malformed::DuplicateOption(CLIENT_ID)));
        let oro = message(&[option(ORO, &[0, 23]), option(ORO, &[0, 24])]);
        assert_eq!(decode_request(&oro), Err(Malformed::DuplicateOption(ORO)));
        let ias = message(&[ia(IA_NA, 1, &[]), ia(IA_NA, 2, &[])]);
        let decoded = decode_request(&ias).unwrap();
        assert_eq!(decoded.opts().get_all(OptionCode::IANA).map(<[_]>::len), Some(2));
    }

    #[test]
    fn options_dhcproto_would_misread_are_dropped() {
        // Raw, dhcproto panics on the status code of length 0 (it computes `0 - 2`) and reads a preference out of
        // the next option's first byte; an elapsed time of length 1 likewise.
        let m = message(&[
            option(13, &[]),
            option(7, &[]),
            option(8, &[1]),
            option(CLIENT_ID, &DUID),
            option(ORO, &[0, 23, 0, 24]),
        ]);
        let decoded = decode_request(&m).unwrap();
        assert_eq!(decoded.msg_type(), MessageType::Solicit);
        assert_eq!(decoded.xid(), [0xab, 0xcd, 0xef]);
        let codes: Vec<u16> = decoded.opts().iter().map(|o| u16::from(OptionCode::from(o))).collect();
        assert_eq!(codes, [CLIENT_ID, ORO]);
        assert_eq!(
            decoded.opts().get(OptionCode::ClientId),
            Some(&DhcpOption::ClientId(DUID.to_vec()))
        );
    }

    #[test]
    fn identity_associations_keep_only_their_addresses_and_are_bounded() {
        let status = option(13, &[0, 0, b'o', b'k']);
        let addresses: Vec<Vec<u8>> = (1..=6).map(|i| ia_address(i, &status)).collect();
        let mut inner = vec![status.clone()];
        inner.extend(addresses);
        let ias: Vec<Vec<u8>> = (1..=6).map(|iaid| ia(IA_NA, iaid, &inner)).collect();
        let decoded = decode_request(&message(&ias)).unwrap();
        let kept = decoded.opts().get_all(OptionCode::IANA).unwrap();
        assert_eq!(kept.len(), MAX_IAS);
        let DhcpOption::IANA(first) = &kept[0] else {
            panic!("not an IA_NA")
        };
        assert_eq!(first.id, 1);
        let last_octets: Vec<u8> = first
            .opts
            .iter()
            .map(|o| match o {
                DhcpOption::IAAddr(a) => {
                    assert!(a.opts.iter().next().is_none(), "options inside the address are dropped");
                    assert_eq!((a.preferred_life, a.valid_life), (60, 120));
                    a.addr.octets()[15]
                }
                other => panic!("{other:?} kept in an IA_NA"),
            })
            .collect();
        assert_eq!(last_octets, [1, 2, 3, 4]);

        let pds: Vec<Vec<u8>> = (1..=6)
            .map(|iaid| ia(IA_PD, iaid, std::slice::from_ref(&status)))
            .collect();
        let decoded = decode_request(&message(&pds)).unwrap();
        assert_eq!(decoded.opts().get_all(OptionCode::IAPD).map(<[_]>::len), Some(MAX_IAS));
    }
}
