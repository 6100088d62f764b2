//! What the proxy changes in the headers it passes on: hop-by-hop headers (RFC 9110 §7.6.1,
//! and every header the `Connection` header names) stay on their hop, and a request gains
//! `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded` (RFC 7239). Pure functions over
//! `http::HeaderMap`: the HTTP itself is parsed and written by hyper.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Request headers, names and values, at most this many bytes in all (431 past it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The header that pins a request to a node by name.
pub const PIN_HEADER: &str = "x-nodecloud-node";

// Header names as values, not strings: a string is parsed into a name at every use, twice
// per request and header here.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Hop-by-hop headers by definition (the `Connection` header may name more).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// The bytes `headers` take as written (`name: value\r\n` each).
pub fn size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Whether the request asks for a protocol upgrade (a websocket): `Connection: upgrade` and
/// an `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Remove the hop-by-hop headers and those `Connection` names. With `upgrade`, the
/// `Upgrade` header and `Connection: upgrade` pass (the upgrade is the next hop's business).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let keep_upgrade = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(value) = keep_upgrade {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Add what the next hop should know of the client: its address appended to
/// `X-Forwarded-For` and as a `Forwarded` element, the scheme and host the client used
/// (`X-Forwarded-Proto`/`-Host`, kept when an earlier proxy set them).
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    use std::fmt::Write;
    // Four headers more: grow the map once rather than on each insert.
    headers.reserve(4);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let mut xff = String::with_capacity(64);
    if let Some(earlier) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        xff.push_str(earlier);
        xff.push_str(", ");
    }
    let _ = write!(xff, "{client}");
    // RFC 7239: an IPv6 address is quoted and bracketed; a host is quoted (it may hold ':').
    let mut forwarded = String::with_capacity(96);
    if let Some(earlier) = headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        forwarded.push_str(earlier);
        forwarded.push_str(", ");
    }
    let _ = match client {
        IpAddr::V4(ip) => write!(forwarded, "for={ip};proto=http"),
        IpAddr::V6(ip) => write!(forwarded, "for=\"[{ip}]\";proto=http"),
    };
    if let Some(h) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        let _ = write!(forwarded, ";host=\"{h}\"");
    }
    let forwarded_host = match host {
        Some(h) if !headers.contains_key(&X_FORWARDED_HOST) => HeaderValue::from_str(h).ok(),
        _ => None,
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(v) = forwarded_host {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        headers.insert(FORWARDED.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers_append_to_an_earlier_proxys() {
        let mut h = map(&[("host", "example.org"), ("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut h, "192.0.2.7".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.org");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"example.org\""
        );
        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, "::1".parse().unwrap());
        assert_eq!(v6["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn header_size_counts_names_values_and_separators() {
        assert_eq!(size(&map(&[("ab", "cd"), ("e", "")])), 8 + 5);
    }
}
