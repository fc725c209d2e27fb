//! WAL names and LSNs, computed independently of the code under test (it is the oracle).

use anyhow::{bail, Context, Result};

/// The segment size the test clusters use (`initdb --wal-segsize=1`).
pub const SEG_SIZE: u64 = 1024 * 1024;

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Result<u64> {
    let text = text.trim();
    let (hi, lo) = text
        .split_once('/')
        .with_context(|| format!("{text:?} is not an LSN"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("{text:?} is not an LSN"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("{text:?} is not an LSN"))?;
    Ok((hi << 32) | lo)
}

/// Prints an LSN the way PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn segs_per_xlogid(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// The name of segment number `segno` on timeline `tli`.
pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per = segs_per_xlogid(seg_size);
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
}

/// The name of the segment that holds byte `lsn` on timeline `tli`.
pub fn segment_of_lsn(tli: u32, lsn: u64, seg_size: u64) -> String {
    segment_name(tli, lsn / seg_size, seg_size)
}

/// Whether `name` looks like a WAL segment name (24 uppercase hex digits).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Timeline and segment number of a segment name.
pub fn parse_segment(name: &str, seg_size: u64) -> Result<(u32, u64)> {
    if !is_segment_name(name) {
        bail!("{name:?} is not a WAL segment name");
    }
    let tli = u32::from_str_radix(&name[0..8], 16)?;
    let log = u64::from_str_radix(&name[8..16], 16)?;
    let seg = u64::from_str_radix(&name[16..24], 16)?;
    if seg >= segs_per_xlogid(seg_size) {
        bail!("{name:?} is not a valid segment name for {seg_size}-byte segments");
    }
    Ok((tli, log * segs_per_xlogid(seg_size) + seg))
}

/// The segment `delta` segments after `name` (negative: before), same timeline.
pub fn segment_offset(name: &str, delta: i64, seg_size: u64) -> Result<String> {
    let (tli, segno) = parse_segment(name, seg_size)?;
    let target = segno
        .checked_add_signed(delta)
        .with_context(|| format!("{name} {delta:+} is out of range"))?;
    Ok(segment_name(tli, target, seg_size))
}

/// Every segment name from `first` to `last` inclusive, on `first`'s timeline.
pub fn segment_range(first: &str, last: &str, seg_size: u64) -> Result<Vec<String>> {
    let (tli, from) = parse_segment(first, seg_size)?;
    let (last_tli, to) = parse_segment(last, seg_size)?;
    if tli != last_tli {
        bail!("{first} and {last} are on different timelines");
    }
    Ok((from..=to)
        .map(|n| segment_name(tli, n, seg_size))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lsns() -> Result<()> {
        assert_eq!(parse_lsn("16/B374D848")?, 0x16_B374_D848);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(
            segment_of_lsn(1, 0x3_0000_0000 + 5 * SEG_SIZE + 7, SEG_SIZE),
            "000000010000000300000005"
        );
        assert_eq!(
            segment_offset("0000000100000000000000FF", 1, SEG_SIZE)?,
            "000000010000000000000100"
        );
        assert_eq!(
            segment_offset("000000010000000000000FFF", 1, SEG_SIZE)?,
            "000000010000000100000000"
        );
        assert_eq!(
            segment_range(
                "000000020000000000000FFE",
                "000000020000000100000001",
                SEG_SIZE
            )?
            .len(),
            4
        );
        assert!(parse_segment("00000001000000000000000a", SEG_SIZE).is_err());
        Ok(())
    }
}
