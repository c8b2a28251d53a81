//! The `telemetry:` section and its merge with the standard OpenTelemetry variables: a key the
//! section sets wins; a key it leaves out comes from `OTEL_EXPORTER_OTLP_TRACES_*` /
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_PROPAGATORS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*`, then from the defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// `telemetry:` as written in the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `false` turns tracing off even when `OTEL_*` variables name a collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The collector's base URL (`http://127.0.0.1:4318`; `/v1/traces` is added for
    /// http/protobuf, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Headers sent with every export (an API key, a tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Time one export may take (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// `parentbased_traceidratio` (default), `parentbased_always_on`, `parentbased_always_off`,
    /// `traceidratio`, `always_on`, `always_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The ratio of the ratio samplers (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<f64>,
    /// Header formats read and written: `tracecontext`, `baggage`, `b3` (single header),
    /// `b3multi` (default `[tracecontext, baggage]`). A request is read with the first format
    /// that yields a valid context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagators: Option<Vec<Propagator>>,
    /// `service.name` (default `stoa-gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment.name: prod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<BTreeMap<String, String>>,
    /// Finished spans waiting for export before new ones are dropped (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Spans per export (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// The longest a finished span waits before it is exported (default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_every: Option<HumanDuration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagator {
    Tracecontext,
    Baggage,
    B3,
    B3multi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Everything a tracer is built from, resolved. Its JSON form is the key under which the
/// tracer is kept across reloads.
#[derive(Clone, Debug, Serialize)]
pub struct TelemetrySettings {
    /// Where spans go: the full traces URL for http/protobuf, the base URL for gRPC.
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub sampler: String,
    pub sampler_arg: f64,
    pub propagators: Vec<Propagator>,
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub queue: usize,
    pub batch: usize,
    pub flush_every: Duration,
}

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The most spans the queue may hold, whatever the config says (bounds memory).
const MAX_QUEUE: usize = 1 << 20;

impl TelemetrySettings {
    /// `None` when tracing is off. `env` reads a variable (the process environment, or a map in
    /// tests).
    pub fn resolve(
        config: Option<&TelemetryConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<TelemetrySettings>, String> {
        let empty = TelemetryConfig::default();
        let c = config.unwrap_or(&empty);
        let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if c.enabled == Some(false)
            || env_nonempty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let protocol_text = c
            .protocol
            .clone()
            .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = match protocol_text.trim() {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(format!(
                    "protocol: {other:?} is not supported (http/protobuf or grpc)"
                ))
            }
        };
        // The full traces URL: a traces-specific endpoint is used as is, a base one gets the
        // signal path (http/protobuf only; gRPC takes the base URL).
        let endpoint = if let Some(base) = &c.endpoint {
            signal_url(base, protocol)
        } else if let Some(full) = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            full
        } else if let Some(base) = env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT") {
            signal_url(&base, protocol)
        } else if config.is_some() {
            signal_url(
                match protocol {
                    Protocol::HttpProtobuf => "http://localhost:4318",
                    Protocol::Grpc => "http://localhost:4317",
                },
                protocol,
            )
        } else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint: {endpoint:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "endpoint: {endpoint:?} must be an http:// or https:// URL"
                ))
            }
        }
        if protocol == Protocol::Grpc && uri.scheme_str() == Some("https") {
            return Err(
                "endpoint: gRPC export is plaintext only in this build; use http/protobuf for \
                 an https:// collector"
                    .into(),
            );
        }
        let headers = match &c.headers {
            Some(h) => h.clone(),
            None => env_nonempty("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_HEADERS"))
                .map(|v| parse_pairs(&v, "OTEL_EXPORTER_OTLP_HEADERS"))
                .transpose()?
                .unwrap_or_default(),
        };
        for (k, v) in &headers {
            http::HeaderName::try_from(k.as_str())
                .map_err(|_| format!("headers: {k:?} is not a header name"))?;
            http::HeaderValue::try_from(v.as_str())
                .map_err(|_| format!("headers.{k}: not a valid header value"))?;
        }
        let timeout = match c.timeout {
            Some(t) => t.0,
            None => env_nonempty("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .map(|v| millis(&v, "OTEL_EXPORTER_OTLP_TIMEOUT"))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
        };
        let sampler = c
            .sampler
            .clone()
            .or_else(|| env_nonempty("OTEL_TRACES_SAMPLER"))
            .unwrap_or_else(|| "parentbased_traceidratio".into())
            .trim()
            .to_ascii_lowercase();
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(format!(
                "sampler: {sampler:?} is not one of {}",
                SAMPLERS.join(", ")
            ));
        }
        let sampler_arg = match c.sampler_arg {
            Some(a) => a,
            None => match env_nonempty("OTEL_TRACES_SAMPLER_ARG") {
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG: {v:?} is not a number"))?,
                None => 1.0,
            },
        };
        if !(0.0..=1.0).contains(&sampler_arg) {
            return Err(format!(
                "sampler_arg: {sampler_arg} is not a ratio between 0 and 1"
            ));
        }
        let propagators = match &c.propagators {
            Some(p) => p.clone(),
            None => match env_nonempty("OTEL_PROPAGATORS") {
                Some(v) => v
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && *p != "none")
                    .map(|p| match p {
                        "tracecontext" => Ok(Propagator::Tracecontext),
                        "baggage" => Ok(Propagator::Baggage),
                        "b3" => Ok(Propagator::B3),
                        "b3multi" => Ok(Propagator::B3multi),
                        other => Err(format!("OTEL_PROPAGATORS: {other:?} is not supported")),
                    })
                    .collect::<Result<_, _>>()?,
                None => vec![Propagator::Tracecontext, Propagator::Baggage],
            },
        };
        let mut resource = env_nonempty("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_pairs(&v, "OTEL_RESOURCE_ATTRIBUTES"))
            .transpose()?
            .unwrap_or_default();
        resource.extend(c.resource.clone().unwrap_or_default());
        let service_name = c
            .service_name
            .clone()
            .or_else(|| env_nonempty("OTEL_SERVICE_NAME"))
            .or_else(|| resource.remove("service.name"))
            .unwrap_or_else(|| "stoa-gateway".into());
        resource.remove("service.name");
        let env_size = |k: &str| -> Result<Option<usize>, String> {
            env_nonempty(k)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("{k}: {v:?} is not a count"))
                })
                .transpose()
        };
        let queue = c
            .queue
            .or(env_size("OTEL_BSP_MAX_QUEUE_SIZE")?)
            .unwrap_or(2048);
        let batch = c
            .batch
            .or(env_size("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?)
            .unwrap_or(512);
        if queue == 0 || queue > MAX_QUEUE {
            return Err(format!("queue: {queue} is not between 1 and {MAX_QUEUE}"));
        }
        if batch == 0 || batch > queue {
            return Err(format!(
                "batch: {batch} is not between 1 and queue ({queue})"
            ));
        }
        let flush_every = match c.flush_every {
            Some(d) => d.0,
            None => env_nonempty("OTEL_BSP_SCHEDULE_DELAY")
                .map(|v| millis(&v, "OTEL_BSP_SCHEDULE_DELAY"))
                .transpose()?
                .unwrap_or(Duration::from_secs(1)),
        };
        if flush_every.is_zero() {
            return Err("flush_every: must be more than 0".into());
        }
        Ok(Some(TelemetrySettings {
            endpoint,
            protocol,
            headers,
            timeout,
            sampler,
            sampler_arg,
            propagators,
            service_name,
            resource,
            queue,
            batch,
            flush_every,
        }))
    }

    pub fn sampler(&self) -> Sampler {
        let ratio = || Sampler::TraceIdRatioBased(self.sampler_arg);
        match self.sampler.as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => ratio(),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            _ => Sampler::ParentBased(Box::new(ratio())),
        }
    }

    pub fn resource(&self) -> Resource {
        Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .with_attributes(
                self.resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .chain([
                        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                        KeyValue::new("telemetry.sdk.language", "rust"),
                        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
                    ]),
            )
            .build()
    }
}

fn signal_url(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        Protocol::Grpc => base.to_string(),
    }
}

fn millis(v: &str, name: &str) -> Result<Duration, String> {
    v.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{name}: {v:?} is not a number of milliseconds"))
}

/// `k1=v1,k2=v2` with percent-encoded values (the OTEL_*_HEADERS / _ATTRIBUTES format).
fn parse_pairs(v: &str, name: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!("{name}: an entry has no '=' (key=value,...)"));
        };
        let val = percent_encoding::percent_decode_str(val.trim())
            .decode_utf8()
            .map_err(|_| format!("{name}: the value of {:?} is not UTF-8", k.trim()))?;
        out.insert(k.trim().to_string(), val.into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Option<TelemetrySettings>, String> {
        let config: Option<TelemetryConfig> = config.map(|c| serde_saphyr::from_str(c).unwrap());
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetrySettings::resolve(config.as_ref(), &|k| env.get(k).cloned())
    }

    #[test]
    fn off_without_a_section_or_an_endpoint_variable() {
        assert!(resolve(None, &[]).unwrap().is_none());
        assert!(resolve(None, &[("OTEL_SERVICE_NAME", "x")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_standard_variables_fill_what_the_section_leaves_out() {
        let s = resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=se%20cret,x=1"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_SERVICE_NAME", "edge"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=prod",
                ),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.headers["api-key"], "se cret");
        assert_eq!(s.sampler_arg, 0.25);
        assert_eq!(s.service_name, "edge");
        assert_eq!(s.resource["deployment.environment.name"], "prod");
        let s = resolve(
            Some("endpoint: http://c:4317\nprotocol: grpc\nsampler_arg: 0.5\nservice_name: gw"),
            &[
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_SERVICE_NAME", "edge"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://c:4317");
        assert_eq!((s.protocol, s.sampler_arg), (Protocol::Grpc, 0.5));
        assert_eq!(s.service_name, "gw");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (config, key) in [
            ("protocol: thrift", "protocol"),
            ("endpoint: collector:4318", "endpoint"),
            ("sampler: sometimes", "sampler"),
            ("sampler_arg: 2", "sampler_arg"),
            ("queue: 0", "queue"),
            ("batch: 5000", "batch"),
            ("endpoint: https://c:4317\nprotocol: grpc", "endpoint"),
            ("headers: {\"bad name\": x}", "headers"),
        ] {
            let e = resolve(Some(config), &[]).unwrap_err();
            assert!(e.starts_with(key), "{config}: {e}");
        }
        assert!(resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_SDK_DISABLED", "true")
            ]
        )
        .unwrap()
        .is_none());
        assert!(resolve(
            Some("enabled: false"),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")]
        )
        .unwrap()
        .is_none());
    }
}
