//! Who may connect, publish and subscribe.
//!
//! A policy answers synchronously when it can ([`Verdict::Allow`],
//! [`Verdict::Deny`]) or returns [`Verdict::Ask`]: the broker then emits a
//! request event carrying a token and waits, without blocking anything
//! else, for the embedding to answer it (after asking a file, a database or
//! an HTTP service). Built-in policies: [`AllowAll`], [`StaticPasswords`]
//! and [`Acl`].

use std::collections::BTreeMap;

use bytes::Bytes;
use tern_codec::{ReasonCode, TopicFilter, TopicName};

/// A policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse, with the reason code to send (5.0) or to map onto 3.1.1.
    Deny(ReasonCode),
    /// Ask the embedding through an event and wait for its answer.
    Ask,
}

/// What a CONNECT presents for authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The client identifier (assigned by the broker if the client sent
    /// none).
    pub client_id: String,
    /// The user name, if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<Bytes>,
    /// The Authentication Method of an enhanced authentication (5.0).
    pub method: Option<String>,
    /// The Authentication Data sent with CONNECT (5.0).
    pub data: Option<Bytes>,
}

/// The next step of an enhanced authentication (5.0 §4.12), as the
/// embedding answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send the client an AUTH (Continue authentication) with this
    /// Authentication Data and wait for its answer.
    Continue(Bytes),
    /// Accept, optionally with final Authentication Data for the client.
    Success(Option<Bytes>),
    /// Refuse with this reason code.
    Fail(ReasonCode),
}

/// The connected client a publish or subscribe comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client identifier.
    pub client_id: String,
    /// The user name it authenticated with, if any.
    pub username: Option<String>,
}

/// Decides whether a CONNECT is accepted.
pub trait Authenticator: Send {
    /// The verdict on `credentials`. `Deny` usually carries
    /// `BadUserNameOrPassword` (0x86) or `NotAuthorized` (0x87).
    fn authenticate(&mut self, credentials: &Credentials) -> Verdict;
}

/// Decides whether a client may publish to a topic or subscribe to a filter.
pub trait Authorizer: Send {
    /// The verdict on publishing to `topic`.
    fn publish(&mut self, client: &ClientInfo, topic: &TopicName) -> Verdict;
    /// The verdict on subscribing to `filter`.
    fn subscribe(&mut self, client: &ClientInfo, filter: &TopicFilter) -> Verdict;
}

/// Accepts everyone and everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&mut self, c: &Credentials) -> Verdict {
        match c.method {
            // Enhanced authentication needs an authenticator that knows the
            // method: [MQTT-4.12.0-1].
            Some(_) => Verdict::Deny(ReasonCode::BadAuthenticationMethod),
            None => Verdict::Allow,
        }
    }
}

impl Authorizer for AllowAll {
    fn publish(&mut self, _: &ClientInfo, _: &TopicName) -> Verdict {
        Verdict::Allow
    }
    fn subscribe(&mut self, _: &ClientInfo, _: &TopicFilter) -> Verdict {
        Verdict::Allow
    }
}

/// Sends every decision to the embedding as a request event.
#[derive(Debug, Clone, Copy, Default)]
pub struct AskEmbedding;

impl Authenticator for AskEmbedding {
    fn authenticate(&mut self, _: &Credentials) -> Verdict {
        Verdict::Ask
    }
}

impl Authorizer for AskEmbedding {
    fn publish(&mut self, _: &ClientInfo, _: &TopicName) -> Verdict {
        Verdict::Ask
    }
    fn subscribe(&mut self, _: &ClientInfo, _: &TopicFilter) -> Verdict {
        Verdict::Ask
    }
}

/// A fixed table of user names and passwords held in memory.
///
/// Clients without a user name are refused unless `allow_anonymous` is set.
/// (The `tern broker` password file stores salted hashes; this table is for
/// embeddings and tests.)
#[derive(Debug, Clone, Default)]
pub struct StaticPasswords {
    users: BTreeMap<String, Bytes>,
    /// Whether clients without a user name are accepted.
    pub allow_anonymous: bool,
}

impl StaticPasswords {
    /// An empty table that refuses anonymous clients.
    pub fn new() -> StaticPasswords {
        StaticPasswords::default()
    }

    /// Adds or replaces a user.
    pub fn user(mut self, name: &str, password: &[u8]) -> StaticPasswords {
        self.users
            .insert(name.to_owned(), Bytes::copy_from_slice(password));
        self
    }
}

impl Authenticator for StaticPasswords {
    fn authenticate(&mut self, c: &Credentials) -> Verdict {
        if c.method.is_some() {
            return Verdict::Deny(ReasonCode::BadAuthenticationMethod);
        }
        let Some(user) = &c.username else {
            return if self.allow_anonymous {
                Verdict::Allow
            } else {
                Verdict::Deny(ReasonCode::NotAuthorized)
            };
        };
        match (self.users.get(user), &c.password) {
            (Some(expected), Some(given)) if constant_time_eq(expected, given) => Verdict::Allow,
            _ => Verdict::Deny(ReasonCode::BadUserNameOrPassword),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an ACL rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribing only.
    Read,
    /// Publishing only.
    Write,
    /// Both.
    ReadWrite,
    /// Neither: the rule denies.
    Deny,
}

/// One ACL rule: who, which topics, what access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// The user name the rule applies to; `None` applies to every client.
    pub username: Option<String>,
    /// The topic pattern, a filter in which `%c` stands for the client id
    /// and `%u` for the user name.
    pub pattern: String,
    /// What it grants.
    pub access: Access,
}

/// A static list of rules, first match wins; no match denies.
///
/// A publish is checked by matching the topic against each rule's pattern.
/// A subscription is allowed when a rule's pattern covers the whole filter
/// (the filter is the pattern, or every topic the filter matches is matched
/// by the pattern, judged level by level).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    /// An empty list, which denies everything.
    pub fn new() -> Acl {
        Acl::default()
    }

    /// Appends a rule for everyone.
    pub fn allow_all_users(mut self, pattern: &str, access: Access) -> Acl {
        self.rules.push(AclRule {
            username: None,
            pattern: pattern.to_owned(),
            access,
        });
        self
    }

    /// Appends a rule for one user.
    pub fn allow_user(mut self, user: &str, pattern: &str, access: Access) -> Acl {
        self.rules.push(AclRule {
            username: Some(user.to_owned()),
            pattern: pattern.to_owned(),
            access,
        });
        self
    }

    fn check(&self, client: &ClientInfo, topic: &str, write: bool) -> Verdict {
        for rule in &self.rules {
            if let Some(u) = &rule.username {
                if client.username.as_deref() != Some(u.as_str()) {
                    continue;
                }
            }
            let pattern = substitute(&rule.pattern, client);
            if !covers(&pattern, topic) {
                continue;
            }
            let ok = match rule.access {
                Access::Read => !write,
                Access::Write => write,
                Access::ReadWrite => true,
                Access::Deny => false,
            };
            return if ok {
                Verdict::Allow
            } else {
                Verdict::Deny(ReasonCode::NotAuthorized)
            };
        }
        Verdict::Deny(ReasonCode::NotAuthorized)
    }
}

impl Authorizer for Acl {
    fn publish(&mut self, client: &ClientInfo, topic: &TopicName) -> Verdict {
        self.check(client, topic.as_str(), true)
    }
    fn subscribe(&mut self, client: &ClientInfo, filter: &TopicFilter) -> Verdict {
        self.check(client, filter.filter(), false)
    }
}

/// `%c` and `%u` replaced. A client id or user name containing a wildcard
/// or `/` must not widen the rule, so such values match nothing.
fn substitute(pattern: &str, client: &ClientInfo) -> String {
    let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
    let id = if unsafe_value(&client.client_id) {
        "\u{0}"
    } else {
        client.client_id.as_str()
    };
    let user = match client.username.as_deref() {
        Some(u) if !unsafe_value(u) => u,
        _ => "\u{0}",
    };
    pattern.replace("%c", id).replace("%u", user)
}

/// Whether every topic matched by `topic` (a name, or a filter) is matched by
/// `pattern`.
fn covers(pattern: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not reach `$` topics.
    if topic.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && !a.contains('\u{0}') => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, user: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: user.map(Into::into),
        }
    }

    #[test]
    fn acl_substitutes_client_id_and_user() {
        let mut acl = Acl::new()
            .allow_all_users("devices/%c/#", Access::ReadWrite)
            .allow_user("admin", "#", Access::Read);
        let c = client("d1", Some("bob"));
        let t = |s| TopicName::new(s).unwrap();
        let f = |s| TopicFilter::new(s).unwrap();
        assert_eq!(acl.publish(&c, &t("devices/d1/temp")), Verdict::Allow);
        assert_eq!(
            acl.publish(&c, &t("devices/d2/temp")),
            Verdict::Deny(ReasonCode::NotAuthorized)
        );
        assert_eq!(acl.subscribe(&c, &f("devices/d1/+")), Verdict::Allow);
        assert_eq!(
            acl.subscribe(&c, &f("devices/+/temp")),
            Verdict::Deny(ReasonCode::NotAuthorized)
        );
        let admin = client("x", Some("admin"));
        assert_eq!(acl.subscribe(&admin, &f("a/#")), Verdict::Allow);
        assert_eq!(
            acl.publish(&admin, &t("a/b")),
            Verdict::Deny(ReasonCode::NotAuthorized)
        );
        // A client id with a wildcard does not widen the rule.
        let sneaky = client("+", None);
        assert_eq!(
            acl.publish(&sneaky, &t("devices/d1/temp")),
            Verdict::Deny(ReasonCode::NotAuthorized)
        );
    }

    #[test]
    fn static_passwords() {
        let mut p = StaticPasswords::new().user("alice", b"secret");
        let creds = |u: Option<&str>, pw: Option<&[u8]>| Credentials {
            client_id: "c".into(),
            username: u.map(Into::into),
            password: pw.map(Bytes::copy_from_slice),
            method: None,
            data: None,
        };
        assert_eq!(
            p.authenticate(&creds(Some("alice"), Some(b"secret"))),
            Verdict::Allow
        );
        assert_eq!(
            p.authenticate(&creds(Some("alice"), Some(b"wrong"))),
            Verdict::Deny(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            p.authenticate(&creds(None, None)),
            Verdict::Deny(ReasonCode::NotAuthorized)
        );
        p.allow_anonymous = true;
        assert_eq!(p.authenticate(&creds(None, None)), Verdict::Allow);
    }
}
