//! The `OTEL_*` environment, read once at start (DESIGN §4.3).
//!
//! Switches: `OTEL_SDK_DISABLED=true` always wins; otherwise `OTEL_ENABLED` decides, and
//! when it is unset tracing is on exactly when an OTLP endpoint is configured. Enabled
//! without an endpoint means the console exporter (local work). Endpoint, headers, timeout
//! and compression (generic and `_TRACES_` variants) are read when the exporter is built:
//! by `otlp_http::HttpTarget` for http/protobuf, by opentelemetry-otlp for grpc. The
//! sampler is the SDK's.

use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;

use crate::otlp_http::{HttpTarget, OtlpHttpExporter};
use crate::{AnyExporter, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterKind {
    Otlp,
    Console,
}

#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Spans waiting for export; beyond this new spans are dropped and counted.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    pub exporter: ExporterKind,
    pub service_name: String,
    /// OTEL_SERVICE_NAME or a service.name in OTEL_RESOURCE_ATTRIBUTES is set: the SDK's
    /// resource detectors apply it, we do not override it.
    pub service_name_from_env: bool,
    pub service_version: String,
    pub batch: BatchSettings,
}

/// Reads one variable: trimmed, empty = unset.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub(crate) fn clean(v: Option<String>) -> Option<String> {
    v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn flag(env: Lookup, name: &str) -> Result<Option<bool>, String> {
    match clean(env(name)).map(|v| v.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(Some(true)),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(Some(false)),
        Some(v) => Err(format!("{name}={v:?}: expected true or false")),
    }
}

fn number(env: Lookup, name: &str, default: u64) -> Result<u64, String> {
    match clean(env(name)) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name}={v:?}: expected a positive integer")),
    }
}

impl Settings {
    pub fn from_env(default_service_name: &str) -> Result<Self, String> {
        Self::from_lookup(default_service_name, &process_env)
    }

    /// The same rules over any variable source (tests pass a map).
    pub fn from_lookup(default_service_name: &str, env: Lookup) -> Result<Self, String> {
        let var = |name: &str| clean(env(name));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let disabled = flag(env, "OTEL_SDK_DISABLED")?.unwrap_or(false);
        let wanted = flag(env, "OTEL_ENABLED")?.unwrap_or(endpoint);
        let exporter = match var("OTEL_TRACES_EXPORTER").as_deref() {
            Some("otlp") => ExporterKind::Otlp,
            None if endpoint => ExporterKind::Otlp,
            None | Some("console") => ExporterKind::Console,
            Some("none") => return Ok(Self::off(default_service_name)),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: supported are otlp, console and none"
                ));
            }
        };
        let from_attrs = var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
        let batch = BatchSettings {
            max_queue_size: number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize,
            max_export_batch_size: number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize,
            schedule_delay: Duration::from_millis(number(env, "OTEL_BSP_SCHEDULE_DELAY", 1000)?),
            export_timeout: Duration::from_millis(number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000)?),
        };
        if exporter == ExporterKind::Otlp && wanted && !disabled {
            protocol(env)?;
        }
        Ok(Self {
            enabled: wanted && !disabled,
            exporter,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.into()),
            service_name_from_env: var("OTEL_SERVICE_NAME").is_some() || from_attrs,
            service_version: env!("CARGO_PKG_VERSION").into(),
            batch,
        })
    }

    fn off(default_service_name: &str) -> Self {
        Self {
            enabled: false,
            exporter: ExporterKind::Console,
            service_name: default_service_name.into(),
            service_name_from_env: false,
            service_version: env!("CARGO_PKG_VERSION").into(),
            batch: BatchSettings {
                max_queue_size: 2048,
                max_export_batch_size: 512,
                schedule_delay: Duration::from_secs(1),
                export_timeout: Duration::from_secs(30),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    HttpProtobuf,
    Grpc,
}

fn protocol(env: Lookup) -> Result<Protocol, String> {
    let (name, value) = match clean(env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")) {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => match clean(env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
            None => return Ok(Protocol::HttpProtobuf),
        },
    };
    match value.as_str() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "grpc" => Ok(Protocol::Grpc),
        other => Err(format!(
            "{name}={other:?}: supported are http/protobuf (default) and grpc"
        )),
    }
}

/// The OTLP exporter for the configured protocol: our own encoder and sender for
/// http/protobuf, opentelemetry-otlp's for grpc (endpoint, headers, timeout and
/// compression from the environment either way).
pub(crate) fn otlp_exporter(resource: &opentelemetry_sdk::Resource) -> Result<AnyExporter, Error> {
    match protocol(&process_env).map_err(Error::Settings)? {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()
            .map(|e| AnyExporter::OtlpGrpc(Box::new(e)))
            .map_err(|e| Error::Exporter(e.to_string())),
        Protocol::HttpProtobuf => {
            let target = HttpTarget::from_env().map_err(Error::Settings)?;
            OtlpHttpExporter::new(target, resource)
                .map(|e| AnyExporter::OtlpHttp(Box::new(e)))
                .map_err(|e| Error::Exporter(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup("svc", &move |k| map.get(k).cloned())
    }

    #[test]
    fn switches() {
        assert!(!settings(&[]).unwrap().enabled, "off by default");
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap();
        assert!(
            s.enabled && s.exporter == ExporterKind::Otlp,
            "an endpoint turns it on"
        );
        let s = settings(&[("OTEL_ENABLED", "true")]).unwrap();
        assert!(
            s.enabled && s.exporter == ExporterKind::Console,
            "no endpoint: console"
        );
        let s = settings(&[
            ("OTEL_ENABLED", "false"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ])
        .unwrap();
        assert!(!s.enabled);
        let s = settings(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap();
        assert!(
            !s.enabled,
            "OTEL_SDK_DISABLED wins and nothing else is validated"
        );
        assert!(
            !settings(&[("OTEL_TRACES_EXPORTER", "none"), ("OTEL_ENABLED", "true")])
                .unwrap()
                .enabled
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = settings(&[("OTEL_ENABLED", "maybe")]).unwrap_err();
        assert!(e.contains("OTEL_ENABLED"), "{e}");
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{e}");
        let e = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap_err();
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{e}");
        let e = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.contains("OTEL_TRACES_EXPORTER"), "{e}");
    }

    #[test]
    fn service_name_and_batch() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.service_name, "svc");
        assert!(!s.service_name_from_env);
        let s = settings(&[("OTEL_SERVICE_NAME", "edge")]).unwrap();
        assert_eq!(s.service_name, "edge");
        assert!(s.service_name_from_env);
        let s = settings(&[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=x")]).unwrap();
        assert!(
            s.service_name_from_env,
            "left to the SDK's resource detector"
        );
        let s = settings(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", " 250 "),
        ])
        .unwrap();
        assert_eq!(s.batch.max_queue_size, 64);
        assert_eq!(s.batch.schedule_delay, Duration::from_millis(250));
        assert_eq!(s.batch.max_export_batch_size, 512);
    }
}
