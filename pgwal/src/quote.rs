//! Quoting for the two places a `restore_command` lives: the shell that PostgreSQL runs it with
//! (`sh -c`, src/backend/access/transam/xlogarchive.c) and `postgresql.auto.conf`, where it is
//! written as a configuration string (src/backend/utils/misc/guc-file.l).

/// A word for `sh -c`: unchanged when it holds only characters the shell takes literally,
/// else single-quoted (a `'` inside becomes `'\''`).
pub fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A value for postgresql.conf: single-quoted, `'` doubled and `\` escaped.
pub fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_and_shell_quoting() {
        assert_eq!(conf_string("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(shell_word("/usr/bin/wal-archive"), "/usr/bin/wal-archive");
        assert_eq!(shell_word("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_word(""), "''");
    }
}
