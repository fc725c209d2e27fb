//! The password file (libpq chapter, "The Password File"; `passwordFromFile` in libpq's
//! `fe-connect.c`).
//!
//! Each line is `hostname:port:database:username:password`; the first four fields may be `*`;
//! `\` escapes `:` and `\`. The first matching line wins. `localhost` matches Unix-socket
//! connections to the default socket directory. A file that the group or others may access is
//! ignored, with a warning, exactly as libpq does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::conninfo::DEFAULT_SOCKET_DIRS;

/// The file to read: the conninfo's `passfile`, else `$PGPASSFILE`, else `~/.pgpass`.
pub fn passfile_path(passfile: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = passfile {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The password of the first line of `file` that matches, or `None` (no file, unreadable,
/// insecure permissions, no match).
pub fn lookup(
    file: &Path,
    host: Option<&str>,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        tracing::warn!(file = %file.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    // libpq: "password file has group or world access; permissions should be u=rw (0600) or less"
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignoring it"
        );
        return None;
    }
    let text = std::fs::read(file).ok()?;
    let text = String::from_utf8_lossy(&text);
    find_password(&text, host, port, dbname, user)
}

/// The matching rules on the file's content (pure, for tests).
pub fn find_password(
    content: &str,
    host: Option<&str>,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    if dbname.is_empty() || user.is_empty() {
        return None;
    }
    // "'localhost' matches pghost of '' or the default socket directory"
    let host = match host {
        None | Some("") => "localhost",
        Some(h) if h.starts_with('/') && DEFAULT_SOCKET_DIRS[0] == h => "localhost",
        Some(h) => h,
    };
    let port = if port.is_empty() { "5432" } else { port };
    for line in content.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = match_field(line, host)
            .and_then(|r| match_field(r, port))
            .and_then(|r| match_field(r, dbname))
            .and_then(|r| match_field(r, user))
        else {
            continue;
        };
        // The password runs to the next unescaped ':' or the end of the line.
        let mut password = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                ':' => break,
                '\\' => match chars.next() {
                    Some(n) => password.push(n),
                    None => password.push('\\'),
                },
                c => password.push(c),
            }
        }
        return Some(password);
    }
    None
}

/// `pwdfMatchesString`: if the field at the start of `line` is `*` or equals `token` (after
/// un-escaping), the rest of the line after its ':'.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = token.chars().peekable();
    let mut it = line.char_indices();
    while let Some((i, c)) = it.next() {
        let (c, escaped) = if c == '\\' {
            match it.next() {
                Some((_, n)) => (n, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped && want.peek().is_none() {
            return Some(&line[i + 1..]);
        }
        // As in libpq, an unescaped ':' may still match a ':' of the token (IPv6 hosts).
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_with_wildcards() {
        let file = "\
# comment
db1:5432:postgres:alice:first
*:*:replication:alice:repl-pass
*:*:*:*:fallback
";
        assert_eq!(
            find_password(file, Some("db1"), "5432", "postgres", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            find_password(file, Some("db2"), "6000", "replication", "alice").as_deref(),
            Some("repl-pass")
        );
        assert_eq!(
            find_password(file, Some("db1"), "5433", "postgres", "bob").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn escapes_and_localhost() {
        let file = "localhost:5432:replication:r\\:x:pa\\:ss\\\\word:extra\r\n";
        assert_eq!(
            find_password(file, None, "5432", "replication", "r:x").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            find_password(file, Some("/var/run/postgresql"), "", "replication", "r:x").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            find_password(file, Some("/tmp/other"), "5432", "replication", "r:x"),
            None
        );
        assert_eq!(find_password(file, None, "5432", "replication", "r"), None);
        // A field that is a prefix of the token does not match.
        assert_eq!(
            find_password("db:5432:d:u:p", Some("db1"), "5432", "d", "u"),
            None
        );
        // Too few fields never match.
        assert_eq!(
            find_password("db:5432:d:u", Some("db"), "5432", "d", "u"),
            None
        );
        // IPv6 hosts match with or without escaped colons.
        assert_eq!(
            find_password("::1:5432:d:u:p6", Some("::1"), "5432", "d", "u").as_deref(),
            Some("p6")
        );
        assert_eq!(
            find_password("\\:\\:1:5432:d:u:p6", Some("::1"), "5432", "d", "u").as_deref(),
            Some("p6")
        );
        // Empty password field.
        assert_eq!(
            find_password("db:5432:d:u:", Some("db"), "5432", "d", "u").as_deref(),
            Some("")
        );
    }

    #[test]
    fn file_permissions_like_libpq() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        assert_eq!(lookup(&path, Some("h"), "1", "d", "u"), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(
            lookup(&path, Some("h"), "1", "d", "u").as_deref(),
            Some("secret")
        );
        assert_eq!(
            lookup(&dir.path().join("missing"), Some("h"), "1", "d", "u"),
            None
        );
        Ok(())
    }
}
