//! A connection URL whose password never reaches a log line or a `Debug` dump.

use std::fmt;

use serde::Deserialize;
use url::Url;

/// A URL that may carry a password. `Debug` and `Display` print it with the password
/// replaced by `***`; [`SecretUrl::expose`] returns the real value for the driver.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// Returns the URL with its password, for handing to a database or broker driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the URL with the password masked, for logs and error messages.
    pub fn redacted(&self) -> String {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                // url 2 rejects a password only for URLs with no or an empty host, or the file
                // scheme, and a URL that parsed with a password is none of these.
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            Ok(_) => self.0.clone(),
            // An unparsable value may still contain a password, so show none of it.
            Err(_) => "<unparsable URL>".to_string(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_masked() {
        let url = SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f");

        assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!format!("{url:?}").contains(":guest@"));
        assert_eq!(url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    }

    #[test]
    fn url_without_password_is_unchanged() {
        let url = SecretUrl::new("sqlite://var/order.db?mode=rwc");

        assert_eq!(url.to_string(), "sqlite://var/order.db?mode=rwc");
    }

    #[test]
    fn unparsable_url_is_hidden() {
        let url = SecretUrl::new("postgres://user:pa ss@[bad");

        assert_eq!(url.to_string(), "<unparsable URL>");
    }
}
