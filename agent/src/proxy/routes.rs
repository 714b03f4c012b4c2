//! Route classes and the path guard, from `[METHOD ]/path[*]` patterns.

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Pattern {
    method: Option<http::Method>,
    path: String,
    prefix: bool,
    /// The pattern as configured, without the method: the span's route template.
    template: String,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (method, path) = match s.split_once(' ') {
            Some((m, p)) => (
                Some(
                    http::Method::from_bytes(m.trim().as_bytes())
                        .map_err(|_| format!("bad method in {s:?}"))?,
                ),
                p.trim(),
            ),
            None => (None, s),
        };
        if !path.starts_with('/') {
            return Err(format!(
                "pattern {s:?} must start with / (after an optional method)"
            ));
        }
        let (path, prefix) = match path.strip_suffix('*') {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        if path.contains('*') {
            return Err(format!("pattern {s:?}: * is only allowed at the end"));
        }
        let template = if prefix {
            format!("{path}*")
        } else {
            path.clone()
        };
        Ok(Self {
            method,
            path,
            prefix,
            template,
        })
    }

    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && if self.prefix {
                path.starts_with(&self.path)
            } else {
                path == self.path
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteClass {
    Ask,
    Ingest,
    Admin,
    Other,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [Self::Ask, Self::Ingest, Self::Admin, Self::Other];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::Ingest => "ingest",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }
}

/// Compiled route table; rebuilt as a whole on config reload.
#[derive(Debug, Clone)]
pub struct RouteTable {
    ask: Vec<Pattern>,
    ingest: Vec<Pattern>,
    admin: Vec<Pattern>,
    blocked: Vec<Pattern>,
}

fn compile(list: &[String]) -> Vec<Pattern> {
    // Validated at config load; a pattern that fails here cannot happen, skip it anyway.
    list.iter().filter_map(|p| Pattern::parse(p).ok()).collect()
}

impl RouteTable {
    pub fn new(cfg: &crate::config::AgentConfig) -> Self {
        Self {
            ask: compile(&cfg.routes.ask),
            ingest: compile(&cfg.routes.ingest),
            admin: compile(&cfg.routes.admin),
            blocked: compile(&cfg.path_guard.blocked),
        }
    }

    pub fn is_blocked(&self, method: &http::Method, path: &str) -> bool {
        // Normalise so `//metrics` or `/internal/../x` tricks cannot slip past the guard.
        let normalized = normalize(path);
        self.blocked.iter().any(|p| p.matches(method, &normalized))
    }

    /// The configured pattern a request matched, for span names (never the raw path).
    pub fn template(&self, method: &http::Method, path: &str) -> Option<&str> {
        [&self.ask, &self.ingest, &self.admin]
            .into_iter()
            .flat_map(|list| list.iter())
            .find(|p| p.matches(method, path))
            .map(|p| p.template.as_str())
    }

    pub fn classify(&self, method: &http::Method, path: &str) -> RouteClass {
        let any = |list: &[Pattern]| list.iter().any(|p| p.matches(method, path));
        if any(&self.ask) {
            RouteClass::Ask
        } else if any(&self.ingest) {
            RouteClass::Ingest
        } else if any(&self.admin) {
            RouteClass::Admin
        } else {
            RouteClass::Other
        }
    }
}

/// Collapses repeated slashes and resolves `.`/`..` segments; percent-decodes nothing but
/// treats `%2e`/`%2f` as suspicious by decoding them for the comparison.
pub fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    // The common case has nothing to resolve: no copy.
    if path.starts_with('/') && !path.contains('%') && !path.contains("//") && !path.contains("/.")
    {
        return std::borrow::Cow::Borrowed(path);
    }
    let decoded = path
        .replace("%2e", ".")
        .replace("%2E", ".")
        .replace("%2f", "/")
        .replace("%2F", "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if decoded.ends_with('/') && s.len() > 1 {
        s.push('/');
    }
    std::borrow::Cow::Owned(s)
}

/// Which ingest source a path names (for `ingest_operations_total{source}`).
pub fn ingest_source(path: &str) -> &'static str {
    let tail = path.rsplit('/').next().unwrap_or("");
    if tail.contains("file") {
        "files"
    } else if tail.contains("url") {
        "urls"
    } else if tail.contains("text") {
        "text"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn patterns_and_classes() {
        let t = RouteTable::new(&crate::config::AgentConfig::default());
        assert_eq!(t.classify(&Method::POST, "/api/v1/ask"), RouteClass::Ask);
        assert_eq!(t.classify(&Method::GET, "/api/v1/ask"), RouteClass::Other);
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/ingest/files"),
            RouteClass::Ingest
        );
        assert_eq!(
            t.classify(&Method::POST, "/api/ingest_urls"),
            RouteClass::Ingest
        );
        assert_eq!(
            t.classify(&Method::GET, "/api/v1/admin/keys"),
            RouteClass::Admin
        );
        for p in [
            "/metrics",
            "//metrics",
            "/internal/v1/principal",
            "/api/../internal/x",
            "/%2e%2e/internal/x",
            "/x/%2F../metrics",
        ] {
            assert!(t.is_blocked(&Method::GET, p), "{p}");
        }
        assert!(!t.is_blocked(&Method::GET, "/metrics2"));
        assert!(!t.is_blocked(&Method::GET, "/api/v1/sources"));
        assert!(Pattern::parse("api").is_err());
        assert!(Pattern::parse("/a*b").is_err());
    }

    #[test]
    fn ingest_sources() {
        assert_eq!(ingest_source("/api/v1/ingest/files"), "files");
        assert_eq!(ingest_source("/api/ingest_urls"), "urls");
        assert_eq!(ingest_source("/api/v1/ingest/text"), "text");
    }
}
