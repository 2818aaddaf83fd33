//! The password file: one `user:hash` line per user, the hash an Argon2id
//! PHC string (salted, memory-hard); plain passwords are never stored.
//! `tern passwd` writes it, `tern broker` reads it (and again on SIGHUP).

use std::collections::BTreeMap;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Users and their password hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, String>,
}

impl PasswordFile {
    /// Reads a password file. Errors name the file and line.
    pub fn load(path: &Path) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a password file's text.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:hash", i + 1));
            };
            if PasswordHash::new(hash).is_err() {
                return Err(format!(
                    "line {}: the hash of {user:?} is not a PHC string (write it with tern passwd)",
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(PasswordFile { users })
    }

    /// Writes the file (user names in order).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut text =
            String::from("# tern password file: user:argon2id hash. Edit with `tern passwd`.\n");
        for (u, h) in &self.users {
            text.push_str(u);
            text.push(':');
            text.push_str(h);
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Adds or replaces a user; the password is hashed with a fresh salt.
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), String> {
        if user.is_empty() || user.contains(':') {
            return Err(format!("invalid user name {user:?}: empty or with ':'"));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password, &salt)
            .map_err(|e| format!("hashing failed: {e}"))?;
        self.users.insert(user.to_owned(), hash.to_string());
        Ok(())
    }

    /// Removes a user; false if there was none.
    pub fn delete(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// Whether `password` is `user`'s. Slow on purpose (Argon2id): call it
    /// off the broker's threads.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Same work for an unknown user, so timing does not tell.
            let _ = Argon2::default().verify_password(password, &dummy_hash());
            return false;
        };
        match PasswordHash::new(hash) {
            Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
            Err(_) => false,
        }
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.users.len()
    }
}

fn dummy_hash() -> PasswordHash<'static> {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                         3Vh0XYOYN5/xoCVV0w6v1nOk1XN3b4Ek6XHhdfYmfD4";
    PasswordHash::new(DUMMY).expect("a valid PHC string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_verify_delete_and_round_trip() {
        let mut f = PasswordFile::default();
        f.set("alice", b"secret").expect("hashes");
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"Secret"));
        assert!(!f.verify("bob", b"secret"));
        let dir = std::env::temp_dir().join(format!("tern-passwd-{}", std::process::id()));
        f.save(&dir).expect("saves");
        let text = std::fs::read_to_string(&dir).expect("reads");
        assert!(!text.contains("secret"), "never the plain password");
        let g = PasswordFile::load(&dir).expect("loads");
        assert_eq!(f, g);
        assert!(g.verify("alice", b"secret"));
        let _ = std::fs::remove_file(&dir);
        assert!(f.delete("alice"));
        assert!(!f.verify("alice", b"secret"));
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = PasswordFile::parse("# c\nalice:$argon2id$x\n").expect_err("refused");
        assert!(e.contains("line 2"), "{e}");
        let e = PasswordFile::parse("nocolon\n").expect_err("refused");
        assert!(e.contains("line 1"), "{e}");
    }
}
