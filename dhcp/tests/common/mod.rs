//! Helpers shared by the core tests.

/// Calls `check` with `rounds` mutations of the seed packets: bytes overwritten, the packet cut short, bytes
/// inserted, up to eight at a time. A fixed xorshift generator keeps every run the same.
pub fn mutations(seeds: &[Vec<u8>], rounds: usize, mut check: impl FnMut(&[u8])) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..rounds {
        let mut packet = seeds[round % seeds.len()].clone();
        for _ in 0..=(next() % 8) {
            let i = (next() as usize) % packet.len();
            match next() % 3 {
                0 => packet[i] = next() as u8,
                1 => packet.truncate(i.max(1)),
                _ => packet.insert(i, next() as u8),
            }
        }
        check(&packet);
    }
}
