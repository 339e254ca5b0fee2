//! Big-endian field access at named offsets of fixed-size on-disk structures, and the
//! VHD one's-complement byte-sum checksum. Callers index fixed-size arrays with constant
//! offsets, so the slicing here cannot go out of bounds.

pub fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The VHD checksum (footer, dynamic header): the one's complement of the sum of all
/// bytes, the four checksum bytes at `checksum_at` counted as zero.
pub fn checksum(b: &[u8], checksum_at: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |acc, (_, &v)| acc.wrapping_add(v as u32));
    !sum
}

/// Sum of unsigned bytes, NOT'ed: the batmap checksum (tdbatmap version 1.2).
pub fn byte_sum_not(b: &[u8]) -> u32 {
    !b.iter().fold(0u32, |acc, &v| acc.wrapping_add(v as u32))
}

/// Sum of *signed* bytes, NOT'ed: the batmap checksum of tdbatmap version 1.1.
pub fn signed_byte_sum_not(b: &[u8]) -> u32 {
    !b.iter()
        .fold(0u32, |acc, &v| acc.wrapping_add(v as i8 as i32 as u32))
}

/// Round up to a multiple of 512; `None` on overflow.
pub fn round_up_sector(v: u64) -> Option<u64> {
    v.checked_add(511).map(|x| x & !511)
}

/// blktap `secs_round_up_no_zero`: sectors needed for `bytes`, at least one.
pub fn secs_round_up_no_zero(bytes: u64) -> u64 {
    bytes.div_ceil(512).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_skips_its_own_field() {
        let mut b = [0u8; 16];
        b[0] = 1;
        b[4] = 0xff; // inside the checksum field: ignored
        assert_eq!(checksum(&b, 4), !1u32);
    }

    #[test]
    fn signed_and_unsigned_sums_differ_for_high_bytes() {
        assert_eq!(byte_sum_not(&[0x80]), !0x80u32);
        assert_eq!(signed_byte_sum_not(&[0x80]), !(-128i32 as u32));
    }
}
