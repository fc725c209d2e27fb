//! Property tests of conninfo parsing: any settings printed in key=value form parse back to the
//! same settings; quoting survives any value; no input makes the parsers panic.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgrepl::conninfo::quote_value;
use pgrepl::{ChannelBindingMode, ConnInfo, SslMode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn sslmode() -> impl Strategy<Value = SslMode> {
    prop_oneof![
        Just(SslMode::Disable),
        Just(SslMode::Allow),
        Just(SslMode::Prefer),
        Just(SslMode::Require),
        Just(SslMode::VerifyCa),
        Just(SslMode::VerifyFull),
    ]
}

fn channel_binding() -> impl Strategy<Value = ChannelBindingMode> {
    prop_oneof![
        Just(ChannelBindingMode::Disable),
        Just(ChannelBindingMode::Prefer),
        Just(ChannelBindingMode::Require),
    ]
}

/// Any printable text, including blanks, quotes, backslashes and '='.
fn text() -> impl Strategy<Value = String> {
    "[\\PC]{1,24}"
}

prop_compose! {
    fn conninfo()(
        host in proptest::option::of("[^,\\p{Cc}]{1,24}"),
        hostaddr in proptest::option::of(any::<IpAddr>()),
        port in 1u16..,
        user in text(),
        dbname in proptest::option::of(text()),
        passfile in proptest::option::of(text()),
        sslmode in sslmode(),
        sslrootcert in proptest::option::of(text()),
        channel_binding in channel_binding(),
        application_name in proptest::option::of(text()),
        timeout in 2u64..3600,
    ) -> ConnInfo {
        let mut c = ConnInfo::new(user);
        c.host = host;
        c.hostaddr = hostaddr;
        c.port = port;
        c.dbname = dbname;
        c.passfile = passfile.map(PathBuf::from);
        c.sslmode = sslmode;
        c.sslrootcert = sslrootcert.map(PathBuf::from);
        c.channel_binding = channel_binding;
        c.application_name = application_name;
        c.connect_timeout = Duration::from_secs(timeout);
        c
    }
}

fn parse(s: &str) -> Result<ConnInfo, TestCaseError> {
    ConnInfo::parse(s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))
}

proptest! {
    #[test]
    fn key_value_round_trip(c in conninfo()) {
        let printed = c.to_string();
        prop_assert_eq!(parse(&printed)?, c);
    }

    #[test]
    fn password_is_never_printed(c in conninfo(), password in "[a-zA-Z0-9]{12,24}") {
        let c = c.with_password(Some(password.clone()));
        prop_assert!(!c.to_string().contains(&password));
        let debug = format!("{:?}", c);
        prop_assert!(!debug.contains(&password));
    }

    #[test]
    fn any_value_survives_quoting(
        value in any::<String>(),
        sep in "[ \t\n]{1,3}",
        blanks in "[ \t\n]{0,3}",
    ) {
        let s = format!(
            "user=u{sep}application_name{blanks}={blanks}{}{sep}dbname=d",
            quote_value(&value)
        );
        let c = parse(&s)?;
        prop_assert_eq!(c.application_name.as_deref(), (!value.is_empty()).then_some(value.as_str()));
        prop_assert_eq!(c.dbname.as_deref(), Some("d"));
    }

    #[test]
    fn uri_percent_encoding_round_trip(user in text(), password in text(), db in text()) {
        let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let uri = format!("postgresql://{}:{}@db1:5433/{}?sslmode=require", enc(&user), enc(&password), enc(&db));
        let c = parse(&uri)?;
        prop_assert_eq!(&c.user, &user);
        prop_assert_eq!(c.password.as_deref(), Some(password.as_str()));
        prop_assert_eq!(c.dbname.as_deref(), Some(db.as_str()));
        prop_assert_eq!(c.port, 5433);
    }

    #[test]
    fn parsers_never_panic(s in any::<String>()) {
        let _ = ConnInfo::parse(&s);
        let _ = ConnInfo::parse(&format!("postgresql://{s}"));
        let _ = pgrepl::pgpass::find_password(&s, Some("h"), "5432", "replication", "u");
    }
}
