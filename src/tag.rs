//! Stable short tags for long keys (a lock file's name, a journal's spec hash, a metric's
//! label): FNV-1a, 64 bits. The same bytes give the same tag in every run and version, so a
//! lock, a journal or a series keeps its name. Not a security measure: nothing here resists a
//! chosen collision, and nothing may rely on a tag being secret or unique beyond chance.
//! Imports nothing of the crate.

/// FNV-1a, 64 bits, of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
