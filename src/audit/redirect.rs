//! Click targets: `/c` redirects only to an absolute http(s) URL whose host
//! an advertiser allows, or whose exact bytes carry a valid HMAC signature.
//! Never an open redirect: the target must be plain visible ASCII (no
//! whitespace, CR/LF, backslash or raw non-ASCII look-alikes), with no
//! userinfo and no percent-encoding in the authority, so that every browser
//! reads the same host we checked.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One allowed-host rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `shop.com`: that host only.
    Exact(String),
    /// `*.shop.com`: shop.com and any subdomain of it.
    Subdomains(String),
}

impl HostRule {
    /// Parses `host` or `*.host`.
    pub fn parse(rule: &str) -> Result<HostRule, String> {
        let (wild, host) = match rule.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, rule),
        };
        if !valid_host(host.as_bytes()) || !host.contains('.') && wild {
            return Err(format!(
                "`{rule}` is not a host name or `*.` followed by one"
            ));
        }
        let host = host.to_ascii_lowercase();
        Ok(if wild {
            HostRule::Subdomains(host)
        } else {
            HostRule::Exact(host)
        })
    }

    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostRule::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
            HostRule::Subdomains(h) => {
                let h = h.as_bytes();
                host.eq_ignore_ascii_case(h)
                    || host.len() > h.len() + 1
                        && host[host.len() - h.len()..].eq_ignore_ascii_case(h)
                        && host[host.len() - h.len() - 1] == b'.'
            }
        }
    }
}

/// An advertiser's redirect policy.
#[derive(Debug, Clone, Default)]
pub struct RedirectPolicy {
    rules: Vec<HostRule>,
    key: Option<Vec<u8>>,
}

impl RedirectPolicy {
    /// A policy from configured rules (already validated) and signing key.
    pub fn new(hosts: &[String], signing_key: &str) -> RedirectPolicy {
        RedirectPolicy {
            rules: hosts
                .iter()
                .filter_map(|h| HostRule::parse(h).ok())
                .collect(),
            key: (!signing_key.is_empty()).then(|| signing_key.as_bytes().to_vec()),
        }
    }

    /// Whether a client may be sent to `target`. `signature` is the hex
    /// HMAC-SHA256 of the target under the advertiser's key, or empty.
    pub fn allows(&self, target: &[u8], signature: &[u8]) -> bool {
        let Some(host) = target_host(target) else {
            return false;
        };
        if self.rules.iter().any(|r| r.matches(host)) {
            return true;
        }
        match (&self.key, signature.is_empty()) {
            (Some(key), false) => signature_valid(key, target, signature),
            _ => false,
        }
    }
}

/// The host of a safe absolute http(s) target, or `None` when the target is
/// not one.
pub fn target_host(target: &[u8]) -> Option<&[u8]> {
    if target.len() > 2048
        || !target
            .iter()
            .all(|&b| (0x21..0x7f).contains(&b) && b != b'\\')
    {
        return None;
    }
    let rest =
        strip_prefix_ci(target, b"https://").or_else(|| strip_prefix_ci(target, b"http://"))?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.iter().any(|&b| b == b'@' || b == b'%') {
        return None;
    }
    let (host, port) = match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    };
    if let Some(port) = port {
        let n = (!port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit))
            .then(|| port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))?;
        if n == 0 || n > 65535 {
            return None;
        }
    }
    valid_host(host).then_some(host)
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// Dot-separated labels of letters, digits and inner hyphens; no empty label,
/// no trailing dot.
fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                && label[0] != b'-'
                && label[label.len() - 1] != b'-'
        })
}

fn signature_valid(key: &[u8], target: &[u8], hex: &[u8]) -> bool {
    let mut raw = [0u8; 32];
    if hex.len() != 64 {
        return false;
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => raw[i] = (h * 16 + l) as u8,
            _ => return false,
        }
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(target);
    mac.verify_slice(&raw).is_ok()
}

/// The hex signature of `target` under `key`, as a link builder computes it.
pub fn sign(key: &[u8], target: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(target);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(&["shop.com".into(), "*.brand.example".into()], "k3y")
    }

    /// Targets after one round of percent-decoding, as `/c` sees them.
    #[test]
    fn tricky_targets() {
        let p = policy();
        let table: &[(&str, bool)] = &[
            ("https://shop.com/p/1", true),
            ("http://shop.com", true),
            ("HTTPS://SHOP.COM/x", true),
            ("https://shop.com:8443/x", true),
            ("https://shop.com?q=1", true),
            ("https://shop.com#frag", true),
            ("https://brand.example/", true),
            ("https://www.brand.example/a", true),
            ("https://a.b.brand.example/a", true),
            ("https://www.shop.com/", false),
            ("https://shop.com.evil.com/", false),
            ("https://evilshop.com/", false),
            ("https://evilbrand.example/", false),
            ("//shop.com/", false),
            ("//evil.com/", false),
            ("/relative", false),
            ("https:/shop.com", false),
            ("https:shop.com", false),
            ("https://shop.com@evil.com/", false),
            ("https://user:pw@shop.com/", false),
            ("https://evil.com\\@shop.com/", false),
            ("https://evil.com\\.shop.com", false),
            ("https:\\\\shop.com", false),
            ("https://evil.com%2eshop.com/", false),
            ("https://shop%2ecom/", false),
            ("https://shop.com%2f@evil.com", false),
            ("https://shop.com./", false),
            ("https://.shop.com/", false),
            ("https://sh\u{43e}p.com/", false),
            ("https://xn--shp-kqa.com/", false),
            ("https://shop.com:0/", false),
            ("https://shop.com:99999/", false),
            ("https://shop.com:/", false),
            ("https://shop.com:80x/", false),
            ("javascript:alert(1)", false),
            ("JaVaScRiPt://shop.com/%0aalert(1)", false),
            ("data:text/html,<script>alert(1)</script>", false),
            ("ftp://shop.com/", false),
            ("https://shop.com/\r\nSet-Cookie: a=b", false),
            ("https://shop.com/\nx", false),
            ("https://shop.com/a b", false),
            ("https://shop.com/\t", false),
            (" https://shop.com/", false),
            ("https://[::1]/", false),
            ("https://127.0.0.1/", false),
            ("https://-shop.com/", false),
            ("", false),
        ];
        assert!(table.len() >= 30);
        for &(target, want) in table {
            assert_eq!(p.allows(target.as_bytes(), b""), want, "{target:?}");
        }
    }

    #[test]
    fn signed_links_open_any_safe_target_and_nothing_else() {
        let p = policy();
        let target = b"https://partner.example/landing?x=1";
        let sig = sign(b"k3y", target);
        assert!(p.allows(target, sig.as_bytes()));
        assert!(p.allows(target, sig.to_uppercase().as_bytes()));
        assert!(!p.allows(b"https://partner.example/landing?x=2", sig.as_bytes()));
        assert!(!p.allows(target, sign(b"other", target).as_bytes()));
        assert!(!p.allows(target, &sig.as_bytes()[..63]));
        assert!(!p.allows(target, b""));
        let bad = b"javascript:alert(1)";
        assert!(!p.allows(bad, sign(b"k3y", bad).as_bytes()));
        let unkeyed = RedirectPolicy::new(&[], "");
        assert!(!unkeyed.allows(target, sig.as_bytes()));
    }

    #[test]
    fn rules_parse_or_explain() {
        assert_eq!(
            HostRule::parse("Shop.com").unwrap(),
            HostRule::Exact("shop.com".into())
        );
        assert_eq!(
            HostRule::parse("*.a.b").unwrap(),
            HostRule::Subdomains("a.b".into())
        );
        for bad in [
            "*",
            "*.com",
            "",
            "a..b",
            "http://a.com",
            "a.com/",
            "*.a_b.com",
        ] {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
    }
}
