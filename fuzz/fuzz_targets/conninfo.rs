//! pgrepl's conninfo (key=value and URI) and .pgpass parsers on arbitrary text: never panic, and
//! accepted settings print (without the password) to a string that parses back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgrepl::ConnInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The parser defaults `user` to $USER; fix it so the result does not depend on the machine.
    for input in [text.to_string(), format!("user=fuzz {text}"), format!("postgresql://{text}")] {
        if let Ok(mut info) = ConnInfo::parse(&input) {
            let printed = info.to_string();
            // The printed form has no password: it parses back to the settings less the
            // password (a field may still contain the text "password=...": that is its value).
            info.password = None;
            let again = ConnInfo::parse(&printed).expect("printed conninfo parses");
            assert_eq!(again, info);
        }
    }
    let _ = pgrepl::pgpass::find_password(text, Some("db1"), "5432", "replication", "fuzz");
    let _ = pgrepl::pgpass::find_password(text, None, "5432", "postgres", "fuzz");
});
