//! Log sequence numbers (`XLogRecPtr`, `pg_lsn`).
//!
//! An LSN is a 64-bit byte position in the WAL stream. PostgreSQL shows it as two 32-bit halves
//! in uppercase hexadecimal without leading zeros, `X/Y` (`LSN_FORMAT_ARGS` in
//! `src/include/access/xlogdefs.h`), and parses it with `pg_lsn_in_internal`
//! (`src/backend/utils/adt/pg_lsn.c`): 1 to 8 hex digits, `/`, 1 to 8 hex digits, nothing else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL position (`XLogRecPtr`). Ordered like the WAL stream.
///
/// Displays and serializes as PostgreSQL's `X/Y` form, for example `0/16B3748`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Most hex digits allowed on each side of the `/` (`MAXPG_LSNCOMPONENT` in `pg_lsn.c`).
const MAX_COMPONENT_DIGITS: usize = 8;

/// Longest input echoed back in an error message; WAL names and LSNs come from the network.
const MAX_ECHOED_INPUT: usize = 64;

impl Lsn {
    /// `InvalidXLogRecPtr`: PostgreSQL never writes WAL at position 0, so 0 means "none".
    pub const INVALID: Lsn = Lsn(0);

    /// True unless this is [`Lsn::INVALID`] (`XLogRecPtrIsInvalid`).
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The high 32 bits, the `X` of `X/Y` (historically the "xlog id").
    pub const fn hi(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The low 32 bits, the `Y` of `X/Y`.
    pub const fn lo(self) -> u32 {
        self.0 as u32
    }

    /// `self + bytes`, or `None` past the end of the 64-bit WAL space.
    pub const fn checked_add(self, bytes: u64) -> Option<Lsn> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> Self {
        l.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.hi(), self.lo())
    }
}

/// Why a string is not an LSN. Parsing is deterministic: never retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LsnParseError {
    /// There is no `/` separating the two halves.
    #[error(
        "invalid LSN {input:?}: expected two hexadecimal numbers separated by '/', as in 0/16B3748"
    )]
    MissingSlash { input: String },
    /// The part before the `/` is empty, too long or not hexadecimal.
    #[error("invalid LSN {input:?}: the part before '/' must be 1 to 8 hexadecimal digits, as in 0/16B3748")]
    BadHigh { input: String },
    /// The part after the `/` is empty, too long or not hexadecimal.
    #[error("invalid LSN {input:?}: the part after '/' must be 1 to 8 hexadecimal digits, as in 0/16B3748")]
    BadLow { input: String },
}

impl LsnParseError {
    /// Always false: the same string always fails the same way.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// Shortens untrusted input before it is echoed in an error message.
pub(crate) fn echo(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHOED_INPUT) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

/// Parses one side of `X/Y`: 1 to 8 hex digits of either case, as `strspn` in `pg_lsn.c` allows.
fn parse_component(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > MAX_COMPONENT_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Cannot fail: at most 8 hex digits fit in a u32, and signs were excluded above.
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((hi, lo)) = s.split_once('/') else {
            return Err(LsnParseError::MissingSlash { input: echo(s) });
        };
        let hi = parse_component(hi).ok_or_else(|| LsnParseError::BadHigh { input: echo(s) })?;
        let lo = parse_component(lo).ok_or_else(|| LsnParseError::BadLow { input: echo(s) })?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LsnVisitor;

        impl serde::de::Visitor<'_> for LsnVisitor {
            type Value = Lsn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN in PostgreSQL's X/Y form, such as \"0/16B3748\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(LsnVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_like_postgresql() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_postgresql_forms() {
        for (s, v) in [
            ("0/16B3748", 0x16B3748),
            ("0/16b3748", 0x16B3748),
            ("00000000/016B3748", 0x16B3748),
            ("1/0", 0x1_0000_0000),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("A/b", 0xA_0000_000B),
        ] {
            assert_eq!(s.parse::<Lsn>(), Ok(Lsn(v)), "{s}");
        }
    }

    #[test]
    fn rejects_what_pg_lsn_in_rejects() {
        for s in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "16B3748",
            "0/0/0",
            "123456789/0",
            "0/123456789",
            " 0/0",
            "0/0 ",
            "+1/0",
            "0/-1",
            "0x1/0",
            "g/0",
            "0/é",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let e = "0/123456789".parse::<Lsn>().unwrap_err();
        assert_eq!(
            e,
            LsnParseError::BadLow {
                input: "0/123456789".into()
            }
        );
        assert!(e.to_string().contains("after '/'"));
        assert!(!e.is_retryable());
        let long = "x".repeat(1000);
        let e = long.parse::<Lsn>().unwrap_err();
        assert!(e.to_string().len() < 200, "untrusted input is shortened");
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&Lsn(0x16B3748)).unwrap();
        assert_eq!(json, "\"0/16B3748\"");
        let back: Lsn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Lsn(0x16B3748));
        assert!(serde_json::from_str::<Lsn>("\"nope\"").is_err());
        assert!(serde_json::from_str::<Lsn>("23819080").is_err());
    }

    #[test]
    fn halves_and_validity() {
        let l = Lsn(0x0000_0002_0000_0028);
        assert_eq!((l.hi(), l.lo()), (2, 0x28));
        assert!(l.is_valid());
        assert!(!Lsn::INVALID.is_valid());
        assert_eq!(Lsn::default(), Lsn::INVALID);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v in any::<u64>()) {
            let s = Lsn(v).to_string();
            prop_assert_eq!(s.parse::<Lsn>(), Ok(Lsn(v)));
            prop_assert_eq!(s.to_lowercase().parse::<Lsn>(), Ok(Lsn(v)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Lsn>();
        }
    }
}
