//! Connection URLs that carry passwords, in a type that will not print them.

use std::fmt;

/// A connection URL whose password never reaches `Debug`, `Display` or a log line.
///
/// Only [`SecretUrl::expose`] hands out the real text, so every place that needs the
/// password is a grep away.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The real URL, password included: pass it to a driver, never to a formatter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return url.clone();
        };
        match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::SecretUrl;

    #[test]
    fn hides_the_password_everywhere_it_prints() {
        let url = SecretUrl::new("postgres://app:hunter2@db:5432/app?sslmode=disable");
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert_eq!(shown, "postgres://app:***@db:5432/app?sslmode=disable");
        }
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for plain in [
            "redis://127.0.0.1:6379/",
            "postgres://app@db/app",
            "not a url",
        ] {
            assert_eq!(SecretUrl::new(plain).redacted(), plain);
        }
    }

    #[test]
    fn an_at_sign_in_the_path_is_not_userinfo() {
        let url = SecretUrl::new("redis://h:1/0?x=a:b@c");
        assert_eq!(url.redacted(), "redis://h:1/0?x=a:b@c");
    }
}
