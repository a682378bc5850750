//! Which edges run a canary bundle: deterministic by edge id, so the same edges stay canaries
//! while the share grows, and the control plane, tests and tools agree.

/// 64-bit FNV-1a: stable across processes and releases (unlike `DefaultHasher`).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `edge_id` is in a canary of `percent` (0-100) of the fleet.
pub fn in_canary(edge_id: &str, percent: i32) -> bool {
    percent > 0 && (fnv1a(edge_id) % 100) < u64::try_from(percent).unwrap_or(0)
}
