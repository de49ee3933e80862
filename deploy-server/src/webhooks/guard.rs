//! Where webhooks may go. A subscription's URL is an admin's, but deployd sends requests to it from inside the
//! network it runs in: a URL naming a cloud metadata service (169.254.169.254 and its relatives) would hand the
//! instance's credentials to whoever reads the delivery log. Such addresses are refused when a subscription is created
//! and again when a delivery connects, after DNS resolution, so a name that resolves there later is refused too.
//!
//! Refused by default: link-local (169.254.0.0/16, fe80::/10, where the metadata services live), the metadata
//! addresses outside that range (Alibaba's 100.100.100.200, Oracle's 192.0.0.192, AWS's fd00:ec2::254), unspecified,
//! broadcast and multicast addresses. Loopback and private ranges are allowed (receivers beside deployd); an operator
//! narrows or widens this with deny and allow CIDR lists (an allow entry wins).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The addresses webhooks may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Why a CIDR list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR block (e.g. 10.0.0.0/8, fd00::/8) or an address")]
pub struct CidrError(String);

/// Comma-separated CIDR blocks or addresses (the trusted proxies share this syntax).
pub(crate) fn parse_list(list: &str) -> Result<Vec<IpNet>, CidrError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| CidrError(s.to_owned()))
        })
        .collect()
}

/// Metadata services outside the link-local ranges.
const METADATA: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

impl AddressPolicy {
    /// The default policy with `allow` and `deny`, comma-separated CIDR blocks or addresses.
    ///
    /// # Errors
    /// [`CidrError`] naming the entry that is neither.
    pub fn new(allow: &str, deny: &str) -> Result<Self, CidrError> {
        Ok(Self { allow: parse_list(allow)?, deny: parse_list(deny)? })
    }

    /// Why `ip` may not be reached, or `None` when it may.
    #[must_use]
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address it is.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // An IPv6 address that carries an IPv4 address a translator or tunnel will reach (IPv4-compatible, SIIT,
        // NAT64, 6to4, Teredo) is judged as that IPv4 address too.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_v4(v6)
            && !self.allow.iter().any(|net| net.contains(&ip))
            && let Some(why) = self.refuses(IpAddr::V4(v4))
        {
            return Some(why);
        }
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return Some("the operator's deny list covers it");
        }
        if METADATA.contains(&ip) {
            return Some("it is a cloud metadata service");
        }
        match ip {
            IpAddr::V4(v4) if v4.is_link_local() => Some("it is link-local (where cloud metadata services answer)"),
            IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
                Some("it is not a unicast address")
            }
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
                Some("it is link-local (where cloud metadata services answer)")
            }
            IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("it is not a unicast address"),
            _ => None,
        }
    }
}

/// The IPv4 address an IPv6 address carries for a translator or a tunnel: IPv4-compatible (`::a.b.c.d`), SIIT
/// (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4 (`2002:AABB:CCDD::/48`) and Teredo (server in
/// bits 32..64, client obfuscated in the last 32).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let seg = v6.segments();
    let last = std::net::Ipv4Addr::from(u32::from(seg[6]) << 16 | u32::from(seg[7]));
    let compatible = seg[..6].iter().all(|&s| s == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let siit = seg[..4].iter().all(|&s| s == 0) && seg[4] == 0xffff && seg[5] == 0;
    let nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2] == 1 || seg[2..6].iter().all(|&s| s == 0));
    if compatible || siit || nat64 {
        return Some(last);
    }
    if seg[0] == 0x2002 {
        return Some(std::net::Ipv4Addr::from(u32::from(seg[1]) << 16 | u32::from(seg[2])));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: the client's address is the last 32 bits inverted; the server's is bits 32..64.
        return Some(std::net::Ipv4Addr::from(!(u32::from(seg[6]) << 16 | u32::from(seg[7]))));
    }
    None
}

/// Looks a host up; replaceable in tests.
pub(crate) type Lookup =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { tokio::net::lookup_host((host.as_str(), 0)).await.map(Iterator::collect) })
    })
}

/// The dispatcher's DNS resolver: the system's, with every address the policy refuses removed; a name left with no
/// address fails to connect, naming why.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    lookup: Lookup,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy, lookup: system_lookup() }
    }

    #[cfg(test)]
    pub(crate) fn with_lookup(policy: Arc<AddressPolicy>, lookup: Lookup) -> Self {
        Self { policy, lookup }
    }

    /// The addresses of `host` the policy allows.
    pub(crate) async fn allowed(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let found = (self.lookup)(host.to_owned()).await?;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| match self.policy.refuses(a.ip()) {
                Some(why) => {
                    refused = Some((a.ip(), why));
                    false
                }
                None => true,
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some((ip, why))) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{host} resolves to {ip}, which webhooks may not reach: {why}"),
            )),
            _ => Ok(allowed),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs =
                this.allowed(&host).await.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks a subscription's URL when it is created or sent to: an address literal is judged as it is, a name by every
/// address it resolves to now (one refused address refuses the URL).
///
/// # Errors
/// Why the URL may not be used.
pub(crate) async fn check_url(resolver: &GuardedResolver, url: &reqwest::Url) -> Result<(), String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => literal(&resolver.policy, IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => literal(&resolver.policy, IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let found = (resolver.lookup)(name.to_owned()).await.unwrap_or_default();
            for addr in found {
                if let Some(why) = resolver.policy.refuses(addr.ip()) {
                    return Err(format!("{name} resolves to {}, which webhooks may not reach: {why}", addr.ip()));
                }
            }
            Ok(())
        }
        None => Err("the URL needs a host".to_owned()),
    }
}

fn literal(policy: &AddressPolicy, ip: IpAddr) -> Result<(), String> {
    match policy.refuses(ip) {
        Some(why) => Err(format!("{ip} may not be reached by webhooks: {why}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_addresses_are_refused_by_default() {
        let p = AddressPolicy::default();
        for refused in [
            "169.254.169.254",
            "169.254.1.1",
            "100.100.100.200",
            "192.0.0.192",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::ffff:0:a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:5601:5601",
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(p.refuses(ip(refused)).is_some(), "{refused}");
        }
        for allowed in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "8.8.8.8", "::1", "2001:db8::1"] {
            assert_eq!(p.refuses(ip(allowed)), None, "{allowed}");
        }
    }

    #[test]
    fn operators_deny_and_allow_by_cidr() {
        let p = AddressPolicy::new("169.254.10.0/24", "10.0.0.0/8, 127.0.0.1").unwrap();
        assert!(p.refuses(ip("10.9.9.9")).is_some() && p.refuses(ip("127.0.0.1")).is_some());
        assert_eq!(p.refuses(ip("127.0.0.2")), None);
        assert_eq!(p.refuses(ip("169.254.10.7")), None, "an allow entry wins");
        assert!(p.refuses(ip("169.254.169.254")).is_some());
        assert!(AddressPolicy::new("not-a-cidr", "").is_err());
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to_at_connect_time() {
        let answers = Arc::new(std::sync::Mutex::new(vec![ip("93.184.216.34"), ip("169.254.169.254")]));
        let lookup: Lookup = {
            let answers = Arc::clone(&answers);
            Arc::new(move |_host| {
                let next = answers.lock().unwrap().remove(0);
                Box::pin(async move { Ok(vec![SocketAddr::new(next, 0)]) })
            })
        };
        let resolver = GuardedResolver::with_lookup(Arc::new(AddressPolicy::default()), lookup);
        assert_eq!(resolver.allowed("hooks.example.com").await.unwrap().len(), 1, "first a public address");
        let later = resolver.allowed("hooks.example.com").await.unwrap_err();
        assert_eq!(later.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(later.to_string().contains("169.254.169.254"), "{later}");
    }
}
