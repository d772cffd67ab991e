//! An Ethernet hardware address: one small type that the DHCP servers, the launcher and the domain spec share, so
//! that none of them links the others for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address that does not read as six hexadecimal octets.
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hexadecimal octets like 02:00:00:00:00:01")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(MacAddr(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let mac: MacAddr = "02:AB:00:00:0c:01".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0xab, 0, 0, 0x0c, 1]));
        assert_eq!(mac.to_string(), "02:ab:00:00:0c:01");
        assert_eq!("02-ab-00-00-0c-01".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "02:ab:00:00:0c",
            "02:ab:00:00:0c:01:02",
            "02:ab:00:00:0c:1",
            "zz:ab:00:00:0c:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_is_written_as_its_octets_in_json() {
        let mac = MacAddr([2, 0x42, 0x0a, 0xf4, 1, 7]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "[2,66,10,244,1,7]");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }
}
