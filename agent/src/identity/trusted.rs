//! `trusted_headers`: identity asserted by a peer we trust (an auth gateway in front of
//! the agent). Only peers in the configured ranges are believed; the same headers from
//! anyone else count for nothing, and they are stripped before forwarding either way.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use minirag_contracts::ids::valid_request_id;
use minirag_contracts::net::Cidr;

use super::{Outcome, Principal, Usage};
use crate::config::TrustedHeadersConfig;

pub struct TrustedHeaders {
    sources: Vec<Cidr>,
    cfg: TrustedHeadersConfig,
}

impl TrustedHeaders {
    pub fn new(cfg: &TrustedHeadersConfig) -> Result<Self, String> {
        let sources = cfg
            .sources
            .iter()
            .map(|s| Cidr::parse(s).map_err(|e| format!("identity.trusted_headers.sources: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sources,
            cfg: cfg.clone(),
        })
    }

    pub fn resolve(&self, headers: &HeaderMap, peer: IpAddr) -> Outcome {
        if !self.sources.iter().any(|c| c.contains(peer)) {
            return Outcome::Unauthenticated;
        }
        // One value, in the id alphabet (the same rule as request ids): anything else is
        // not an identity we can label metrics or budgets with.
        let get = |name: &str| -> Option<String> {
            let mut all = headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => v
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|v| valid_request_id(v))
                    .map(str::to_owned),
                _ => None,
            }
        };
        let (Some(user_id), Some(workspace_id), Some(organization_id)) = (
            get(&self.cfg.user_id),
            get(&self.cfg.workspace_id),
            get(&self.cfg.organization_id),
        ) else {
            return Outcome::Unauthenticated;
        };
        Outcome::Principal(Arc::new(Principal {
            user_id,
            workspace_id,
            organization_id,
            plan: get(&self.cfg.plan).unwrap_or_else(|| self.cfg.default_plan.clone()),
            billing_status: get(&self.cfg.billing_status).unwrap_or_else(|| "active".into()),
            scopes: Vec::new(),
            // Storage usage is only known to rag-core; the edge skips that check.
            usage: Usage {
                chunk_total: 0,
                chunk_limit: 0,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> TrustedHeaders {
        TrustedHeaders::new(&TrustedHeadersConfig {
            sources: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_trusted_peers_with_clean_values() {
        let p = provider();
        let h = headers(&[
            ("x-minirag-user-id", "usr_1"),
            ("x-minirag-workspace-id", "ws_1"),
            ("x-minirag-organization-id", "org_1"),
        ]);
        match p.resolve(&h, "10.1.1.1".parse().unwrap()) {
            Outcome::Principal(pr) => {
                assert_eq!(pr.workspace_id, "ws_1");
                assert_eq!(pr.plan, "free");
            }
            _ => panic!("trusted peer"),
        }
        assert!(matches!(
            p.resolve(&h, "192.168.1.1".parse().unwrap()),
            Outcome::Unauthenticated
        ));
        let bad = headers(&[
            ("x-minirag-user-id", "usr_1"),
            ("x-minirag-workspace-id", "ws 1; drop"),
            ("x-minirag-organization-id", "org_1"),
        ]);
        assert!(matches!(
            p.resolve(&bad, "10.1.1.1".parse().unwrap()),
            Outcome::Unauthenticated
        ));
        let twice = headers(&[
            ("x-minirag-user-id", "usr_1"),
            ("x-minirag-workspace-id", "ws_1"),
            ("x-minirag-workspace-id", "ws_2"),
            ("x-minirag-organization-id", "org_1"),
        ]);
        assert!(matches!(
            p.resolve(&twice, "10.1.1.1".parse().unwrap()),
            Outcome::Unauthenticated
        ));
    }
}
