//! Which webhook URLs a submission may name: `http(s)` only, a host, the
//! allowlist, and no literal private address.

use std::net::{IpAddr, Ipv4Addr};

/// The longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

/// See [`Webhooks::check_url`](super::Webhooks::check_url).
pub(super) fn check(webhooks: &super::Webhooks, url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be a URL of at most {MAX_URL_LEN} characters"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "must be an absolute http or https URL".to_owned())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if cfg!(feature = "tls") => {}
        Some("https") => {
            return Err("is an https URL, but this server was built without TLS support".to_owned())
        }
        _ => return Err("must be an http or https URL".to_owned()),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "must name a host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials".to_owned());
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    if let Some(allowed) = &webhooks.allow_hosts {
        if !allowed.iter().any(|a| host_matches(a, &host)) {
            return Err(format!("names a host that is not allowed: {host}"));
        }
    }
    if webhooks.deny_private {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if is_private(ip) {
                return Err(format!(
                    "names a private or loopback address ({ip}), which this server refuses"
                ));
            }
        }
    }
    Ok(())
}

/// Whether an allowlist entry admits `host` (both lowercase).
fn host_matches(entry: &str, host: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => entry == host,
    }
}

/// Loopback, private, link-local, shared (CGNAT), multicast, broadcast or
/// unspecified: an address no public receiver has.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_private_v4(Ipv4Addr::new(a, b, c, d));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0 // "this network" 0.0.0.0/8
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::Webhooks;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn checks_urls() {
        let w = Webhooks::new().allow_hosts(["hooks.example.com", "*.example.org"]);
        assert_eq!(w.check_url("http://hooks.example.com/x"), Ok(()));
        assert_eq!(w.check_url("http://HOOKS.example.com./x"), Ok(()));
        assert_eq!(w.check_url("http://a.b.example.org:8080/x"), Ok(()));
        for (bad, why) in [
            ("ftp://hooks.example.com/", "must be an http or https URL"),
            ("hooks.example.com/x", "must be an"),
            ("/relative", "must be an"),
            (
                "http://user:pw@hooks.example.com/",
                "must not carry credentials",
            ),
            ("http://example.org/", "not allowed: example.org"),
            (
                "http://evil.com/?hooks.example.com",
                "not allowed: evil.com",
            ),
            ("http://xexample.org/", "not allowed"),
        ] {
            let e = w.check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let open = Webhooks::new();
        assert!(open
            .check_url("http://127.0.0.1:9/")
            .unwrap_err()
            .contains("private"));
        assert!(open
            .check_url("http://[::1]:9/")
            .unwrap_err()
            .contains("private"));
        assert!(open.check_url("http://10.0.0.1/").is_err());
        assert_eq!(
            open.check_url("http://localhost:9/"),
            Ok(()),
            "names are checked at delivery"
        );
        let lax = Webhooks::new().deny_private_addresses(false);
        assert_eq!(lax.check_url("http://127.0.0.1:9/"), Ok(()));
    }
}
