//! Any string parsed as a WAL file name and as an LSN: never panics, and whatever parses
//! displays back as exactly the input (names) or parses back to the same value (LSNs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwal::{Lsn, SegmentSize, WalFileName};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = s.parse::<WalFileName>() {
        // Only PostgreSQL's canonical spelling is accepted, so display is the identity.
        assert_eq!(name.to_string(), s);
        assert_eq!(
            name.to_string().parse::<WalFileName>().ok(),
            Some(name.clone())
        );
        for size in SegmentSize::all() {
            if let Some(segno) = name.segno(size) {
                let again = WalFileName::segment(name.timeline(), segno, size);
                assert_eq!(again.segno(size), Some(segno));
            }
            let _ = name.start_lsn(size);
        }
    }
    if let Ok(lsn) = s.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>().ok(), Some(lsn));
    }
});
