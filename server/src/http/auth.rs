//! Who may do what (DESIGN §7.7). Tokens are configured as SHA-256 hashes of their secrets; a
//! request presents the secret as `Authorization: Bearer SECRET`, which is hashed and looked up.
//! With no tokens configured every request is allowed, which the configuration only permits on a
//! loopback listener (see [`crate::config`]). Secrets are never logged: only token names are.

use crate::config::{Role, TokenConfig};

/// The kinds of operation a role can be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Store WAL.
    Push,
    /// Read WAL files back (restore_command).
    Fetch,
    /// Listings and status.
    Read,
    /// Everything else (backups, deletion, retention).
    Admin,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Push => "push",
            Operation::Fetch => "fetch",
            Operation::Read => "read",
            Operation::Admin => "admin",
        }
    }
}

fn role_allows(role: Role, op: Operation) -> bool {
    match role {
        Role::Admin => true,
        Role::Archiver => matches!(op, Operation::Push | Operation::Fetch),
        Role::Reader => matches!(op, Operation::Fetch | Operation::Read),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// 401
    Unauthenticated(String),
    /// 403
    Forbidden(String),
}

struct Token {
    name: String,
    secret_sha256: [u8; 32],
    role: Role,
    clusters: Option<Vec<String>>,
}

pub struct Authorizer {
    tokens: Vec<Token>,
}

impl Authorizer {
    pub fn new(tokens: &[TokenConfig]) -> Authorizer {
        Authorizer {
            tokens: tokens
                .iter()
                .filter_map(|t| {
                    let secret_sha256 = hex::decode(&t.secret_sha256).ok()?.try_into().ok()?;
                    Some(Token {
                        name: t.name.clone(),
                        secret_sha256,
                        role: t.role,
                        clusters: t.clusters.clone(),
                    })
                })
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token of an `Authorization` header value, whatever its role and clusters (for
    /// `/metrics` with `metrics_require_token`). Returns its name, or `None` in open mode.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<String>, AuthError> {
        if self.is_open() {
            return Ok(None);
        }
        Ok(Some(self.token(authorization)?.name.clone()))
    }

    fn token(&self, authorization: Option<&str>) -> Result<&Token, AuthError> {
        let secret = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "this server requires a token: pass --token, set WAL_ARCHIVE_TOKEN, or put \
                     token = \"...\" in the client config file"
                        .into(),
                )
            })?;
        let hash = {
            let mut h = pgwal::checksum::Sha256::new();
            h.update(secret.as_bytes());
            h.finish()
        };
        self.tokens
            .iter()
            .find(|t| constant_time_eq(&t.secret_sha256, &hash))
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "the token is not known to this server: check the secret, and that its \
                     sha256 is listed in the server's [[tokens]]"
                        .into(),
                )
            })
    }

    /// Which of `clusters` the request may read (listings and status): all of them in open
    /// mode, else those of the token's list. 401 without a known token, 403 for a role that may
    /// not read.
    pub fn readable(
        &self,
        authorization: Option<&str>,
        clusters: &[String],
    ) -> Result<Vec<String>, AuthError> {
        if self.is_open() {
            return Ok(clusters.to_vec());
        }
        let t = self.token(authorization)?;
        if !role_allows(t.role, Operation::Read) {
            return Err(AuthError::Forbidden(format!(
                "token {:?} has role {:?}, which may not read",
                t.name, t.role
            )));
        }
        Ok(clusters
            .iter()
            .filter(|c| t.clusters.as_ref().is_none_or(|l| l.contains(c)))
            .cloned()
            .collect())
    }

    /// Checks an `Authorization` header value for `op` on `cluster`. Returns the token's name
    /// (for logs) or `None` in open mode.
    pub fn check(
        &self,
        authorization: Option<&str>,
        cluster: &str,
        op: Operation,
    ) -> Result<Option<String>, AuthError> {
        if self.is_open() {
            return Ok(None);
        }
        let Token {
            name,
            role,
            clusters,
            ..
        } = self.token(authorization)?;
        if let Some(list) = clusters {
            if !list.iter().any(|c| c == cluster) {
                return Err(AuthError::Forbidden(format!(
                    "token {name:?} is not allowed on cluster {cluster:?}"
                )));
            }
        }
        if !role_allows(*role, op) {
            return Err(AuthError::Forbidden(format!(
                "token {name:?} has role {role:?}, which may not {}",
                op.as_str()
            )));
        }
        Ok(Some(name.clone()))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role, clusters: Option<Vec<&str>>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            secret_sha256: pgwal::checksum::sha256_hex(secret.as_bytes()),
            role,
            clusters: clusters.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn roles_and_clusters() {
        let a = Authorizer::new(&[
            token("arch", "s1", Role::Archiver, Some(vec!["main"])),
            token("read", "s2", Role::Reader, None),
            token("adm", "s3", Role::Admin, None),
        ]);
        assert!(matches!(
            a.check(None, "main", Operation::Push),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(Some("Bearer nope"), "main", Operation::Push),
            Err(AuthError::Unauthenticated(_))
        ));
        assert_eq!(
            a.check(Some("Bearer s1"), "main", Operation::Push),
            Ok(Some("arch".into()))
        );
        assert!(matches!(
            a.check(Some("Bearer s1"), "other", Operation::Push),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("Bearer s1"), "main", Operation::Read),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("Bearer s2"), "main", Operation::Push),
            Err(AuthError::Forbidden(_))
        ));
        assert!(a.check(Some("Bearer s2"), "any", Operation::Fetch).is_ok());
        assert!(a.check(Some("Bearer s3"), "any", Operation::Admin).is_ok());
    }

    #[test]
    fn readable_clusters() {
        let a = Authorizer::new(&[
            token("arch", "s1", Role::Archiver, None),
            token("read", "s2", Role::Reader, Some(vec!["main"])),
        ]);
        let all = vec!["main".to_string(), "other".to_string()];
        assert!(matches!(
            a.readable(None, &all),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.readable(Some("Bearer s1"), &all),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(a.readable(Some("Bearer s2"), &all), Ok(vec!["main".into()]));
        assert_eq!(Authorizer::new(&[]).readable(None, &all), Ok(all));
    }

    #[test]
    fn open_mode() {
        let a = Authorizer::new(&[]);
        assert_eq!(a.check(None, "main", Operation::Admin), Ok(None));
    }
}
