//! The Internet checksum (RFC 1071), for the IPv4, UDP and ICMPv6 headers the servers build themselves.

/// A one's complement sum, accumulated over pieces that each have an even length but the last.
#[derive(Default)]
pub(crate) struct Checksum(u64);

impl Checksum {
    /// The checksum over `parts` in order: what goes in the checksum field, and zero when verifying.
    pub(crate) fn of(parts: &[&[u8]]) -> u16 {
        let mut sum = Checksum::default();
        for part in parts {
            sum.add(part);
        }
        sum.finish()
    }

    pub(crate) fn add(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(2);
        for word in &mut words {
            self.0 += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.0 += u64::from(*last) << 8;
        }
    }

    /// The one's complement of the folded sum.
    pub(crate) fn finish(&self) -> u16 {
        let mut sum = self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16) // the loop leaves at most 16 bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
        assert_eq!(
            Checksum::of(&[&[0x00, 0x01, 0xf2, 0x03], &[0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
        assert_eq!(Checksum::of(&[&[0x01]]), !0x0100);
    }
}
