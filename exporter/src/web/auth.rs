//! HTTP basic authentication against `basic_auth_users` (bcrypt hashes), as exporter-toolkit
//! checks it:
//! - a successful check is cached, so that a scrape every 15 s does not cost a bcrypt (tens of
//!   milliseconds at cost 10) each time. The cache key is a SHA-256 of user, hash and password
//!   (not the password itself, unlike the toolkit's), so a changed hash in the file misses the
//!   cache; at most [`CACHE_SIZE`] entries. Failures are not cached: each costs a bcrypt.
//! - an unknown user is checked against a dummy hash of the same cost, so that the answer takes
//!   as long as for a known user with a wrong password (no user enumeration by timing).
//! - bcrypt runs on a blocking thread, one at a time: a flood of wrong passwords takes one core,
//!   never the runtime's threads.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};

/// Successful checks kept (the toolkit keeps 100 too).
pub const CACHE_SIZE: usize = 100;

/// The result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No users configured: no authentication.
    Open,
    /// A configured user with the right password.
    Allowed,
    /// Missing, malformed, unknown user or wrong password: 401.
    Denied,
}

/// The checker: its success cache outlives reloads of the file.
#[derive(Debug, Default)]
pub struct BasicAuth {
    cache: Mutex<HashSet<[u8; 32]>>,
    bcrypt_turn: tokio::sync::Mutex<()>,
}

fn cache_key(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The hash an unknown user's password is checked against (cost 10, htpasswd's default; made
/// once per process).
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        bcrypt::hash("kvmio-exporter: no such user", 10).unwrap_or_else(|_| {
            // Unreachable with a valid cost; a malformed hash makes verify fail, which is the
            // answer an unknown user gets anyway.
            String::new()
        })
    })
}

/// `user:password` from an `Authorization: Basic ...` header.
fn credentials(header: Option<&HeaderValue>) -> Option<(String, Vec<u8>)> {
    let value = header?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

impl BasicAuth {
    /// Checks the request's `Authorization` header against `users` (name -> bcrypt hash).
    pub async fn check(
        &self,
        users: &BTreeMap<String, String>,
        header: Option<&HeaderValue>,
    ) -> Verdict {
        if users.is_empty() {
            return Verdict::Open;
        }
        let Some((user, password)) = credentials(header) else {
            return Verdict::Denied;
        };
        let hash = users.get(&user).cloned();
        let key = hash.as_deref().map(|h| cache_key(&user, h, &password));
        if let Some(key) = &key {
            if self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(key)
            {
                return Verdict::Allowed;
            }
        }
        let ok = {
            let _turn = self.bcrypt_turn.lock().await;
            // (the dummy hash, made once, is made here too: a bcrypt, off the runtime)
            tokio::task::spawn_blocking(move || {
                let hash: &str = match &hash {
                    Some(h) => h,
                    None => dummy_hash(),
                };
                bcrypt::verify(&password, hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        };
        let (true, Some(key)) = (ok, key) else {
            return Verdict::Denied;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE {
            // Full (100 distinct successful logins): forget an arbitrary one.
            if let Some(old) = cache.iter().next().copied() {
                cache.remove(&old);
            }
        }
        cache.insert(key);
        Verdict::Allowed
    }

    /// How many successful checks are cached (for tests and the benchmark).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    #[tokio::test]
    async fn checks_and_caches_only_successes() {
        let users = BTreeMap::from([(
            "prometheus".to_owned(),
            bcrypt::hash("s3cret:with colon", 4).unwrap(),
        )]);
        let auth = BasicAuth::default();
        assert_eq!(auth.check(&BTreeMap::new(), None).await, Verdict::Open);
        assert_eq!(auth.check(&users, None).await, Verdict::Denied);
        for bad in [
            basic("prometheus", "wrong"),
            basic("nobody", "s3cret:with colon"),
            HeaderValue::from_static("Bearer abc"),
            HeaderValue::from_static("Basic !!notbase64"),
        ] {
            assert_eq!(
                auth.check(&users, Some(&bad)).await,
                Verdict::Denied,
                "{bad:?}"
            );
        }
        assert_eq!(auth.cached(), 0, "failures are not cached");
        let good = basic("prometheus", "s3cret:with colon");
        assert_eq!(auth.check(&users, Some(&good)).await, Verdict::Allowed);
        assert_eq!(auth.cached(), 1);
        assert_eq!(auth.check(&users, Some(&good)).await, Verdict::Allowed);
        assert_eq!(auth.cached(), 1);
        // A new hash for the user (password changed in the file) misses the cache.
        let changed = BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("new", 4).unwrap())]);
        assert_eq!(auth.check(&changed, Some(&good)).await, Verdict::Denied);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users: BTreeMap<_, _> = (0..CACHE_SIZE + 5)
            .map(|i| (format!("u{i}"), hash.clone()))
            .collect();
        let auth = BasicAuth::default();
        for user in users.keys() {
            let h = basic(user, "pw");
            assert_eq!(auth.check(&users, Some(&h)).await, Verdict::Allowed);
        }
        assert_eq!(auth.cached(), CACHE_SIZE);
    }
}
