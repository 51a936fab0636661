//! Which Raft group owns an auction: a stable hash of its id, modulo the group count.
//!
//! The hash is FNV-1a (fixed constants), never std's `DefaultHasher`, whose output may change
//! between Rust releases and would silently move auctions to other groups.

pub fn group_of(auction_id: &str, groups: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in auction_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(groups.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads() {
        // Pinned values: changing the hash would strand every stored auction in a wrong group.
        assert_eq!(group_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u32);
        assert_eq!(group_of("auction-1", 16), group_of("auction-1", 16));
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[group_of(&format!("{i:08x}-auction"), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }
}
