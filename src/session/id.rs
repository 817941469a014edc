//! Session ids and the cookie that carries them.

use std::fmt;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};

use super::COOKIE;

/// 128 bits from the operating system's random source, written as 32 lowercase hex digits.
/// Unguessable, so holding one is what proves a session is yours. Kept as those digits: a
/// request writes its id several times (the store's keys, the cookie) and never computes
/// with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn random() -> Result<Self, getrandom::Error> {
        random_hex().map(Self)
    }

    /// Only the form [`SessionId`] writes: anything else is no id at all.
    pub fn parse(s: &str) -> Option<Self> {
        let digits: [u8; 32] = s.as_bytes().try_into().ok()?;
        digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only, by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Never the id itself: it is a credential, and logs are not for credentials.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// 128 bits from the operating system's random source, as 32 lowercase hex digits.
fn random_hex() -> Result<[u8; 32], getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    // uuid's encoder for the digits; the bits are all random (no version or variant set).
    let mut digits = [0u8; 32];
    uuid::Uuid::from_bytes(bytes)
        .simple()
        .encode_lower(&mut digits);
    Ok(digits)
}

/// The first well-formed session id among the request's cookies.
pub(super) fn from_cookies(headers: &HeaderMap) -> Option<SessionId> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| SessionId::parse(value))
}

/// `Set-Cookie` for `id`, valid for `ttl`: script-proof, sent on same-site navigation, and
/// over HTTPS only when `secure`.
pub(super) fn cookie(id: SessionId, ttl: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        ttl.as_secs()
    );
    // Hex digits, a number and fixed ASCII: always a valid header value.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A short random label for the request log, unrelated to the session's id.
pub(super) fn tag() -> Result<String, getrandom::Error> {
    Ok(random_hex()?
        .iter()
        .take(8)
        .map(|&digit| char::from(digit))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn an_id_reads_back_as_itself_and_nothing_else_parses() -> Result {
        let id = SessionId::random()?;
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_ne!(SessionId::random()?, id);
        for bad in [
            "",
            "garbage",
            "AAAAAAAAAAAAAAAAAAAAAA",
            &"0".repeat(31),
            &"0".repeat(33),
            &"A".repeat(32),
            "+0000000000000000000000000000000",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
        Ok(())
    }

    #[test]
    fn a_tag_is_eight_lowercase_hex_digits_drawn_afresh() -> Result {
        let first = tag()?;
        assert_eq!(first.len(), 8, "{first}");
        assert!(
            first
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{first}"
        );
        assert_ne!(tag()?, first);
        Ok(())
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_a_malformed_one_is_skipped() -> Result {
        let id = SessionId::random()?;
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=b; rwsplit_session=zz"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::try_from(format!("theme=dark;rwsplit_session={id}"))?,
        );
        assert_eq!(from_cookies(&headers), Some(id));
        assert_eq!(from_cookies(&HeaderMap::new()), None);
        Ok(())
    }

    #[test]
    fn the_cookie_is_http_only_same_site_and_secure_when_asked() -> Result {
        let id = SessionId::random()?;
        let plain = cookie(id, Duration::from_secs(90), false);
        let expected = format!("rwsplit_session={id}; Path=/; Max-Age=90; HttpOnly; SameSite=Lax");
        assert_eq!(plain.to_str()?, expected);
        let secure = cookie(id, Duration::from_secs(90), true);
        assert_eq!(secure.to_str()?, format!("{expected}; Secure"));
        Ok(())
    }
}
