//! Finished spans leave the request path through a bounded queue: `on_end` is one `try_send`,
//! a full queue drops the span and counts it (`stoa_trace_spans_dropped_total`). One thread
//! owns the OTLP exporter (http/protobuf through our reqwest client, or gRPC through tonic) and
//! sends a batch when it is full or `flush_every` after its first span, each export bounded by
//! the timeout. A collector that is down costs the request path nothing: exports fail (counted
//! in `stoa_trace_export_failures_total`) and the queue fills and drops.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::settings::{Protocol, TelemetrySettings};

struct Metrics {
    dropped: prometheus::IntCounter,
    exported: prometheus::IntCounter,
    failures: prometheus::IntCounter,
}

static METRICS: once_cell::sync::Lazy<Metrics> = once_cell::sync::Lazy::new(|| {
    let counter = |name: &str, help: &str| {
        let c = prometheus::IntCounter::new(name, help).expect("a valid metric");
        crate::metrics::REGISTRY
            .register(Box::new(c.clone()))
            .expect("each metric family is registered once");
        c
    };
    Metrics {
        dropped: counter(
            "stoa_trace_spans_dropped_total",
            "Finished spans dropped because the export queue was full",
        ),
        exported: counter(
            "stoa_trace_spans_exported_total",
            "Spans the collector accepted",
        ),
        failures: counter(
            "stoa_trace_export_failures_total",
            "Span batches the collector did not accept (down, refused, timed out)",
        ),
    }
});

/// Register the telemetry metric families (so `/metrics` shows them from the start).
pub fn register_metrics() {
    once_cell::sync::Lazy::force(&METRICS);
}

enum Message {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

pub struct QueueProcessor {
    queue: Mutex<Option<SyncSender<Message>>>,
}

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueProcessor")
    }
}

impl QueueProcessor {
    pub fn start(settings: &TelemetrySettings, resource: Resource) -> Result<Self, String> {
        register_metrics();
        let (tx, rx) = sync_channel(settings.queue);
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("stoa-otlp".into())
            .spawn(move || export_loop(settings, resource, rx))
            .map_err(|e| format!("cannot start the span exporter thread: {e}"))?;
        Ok(QueueProcessor {
            queue: Mutex::new(Some(tx)),
        })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = queue.as_ref() else {
            return;
        };
        match tx.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.dropped.inc()
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done_tx, done_rx) = sync_channel(1);
        if let Some(tx) = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            tx.send(Message::Flush(done_tx))
                .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        }
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(30)))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // Closing the queue makes the thread export what is left and stop. It is not waited
        // for: the last handle to a replaced tracer may be dropped by a request's thread,
        // which must not wait on a collector.
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        Ok(())
    }
}

/// The exporter thread: build the exporter inside its own runtime (tonic needs one), then
/// batch and send until the queue closes.
fn export_loop(settings: TelemetrySettings, resource: Resource, rx: Receiver<Message>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "span export disabled: cannot start its runtime");
            return;
        }
    };
    let exporter = runtime.block_on(async { build_exporter(&settings) });
    let mut exporter = match exporter {
        Ok(exp) => exp,
        Err(e) => {
            tracing::error!(error = %e, endpoint = %settings.endpoint, "span export disabled");
            return;
        }
    };
    exporter.set_resource(&resource);
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.batch);
    let mut first_at: Option<Instant> = None;
    loop {
        let wait = match first_at {
            Some(t) => settings.flush_every.saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        };
        let (flush, closed, waiter) = match rx.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                first_at.get_or_insert_with(Instant::now);
                (batch.len() >= settings.batch, false, None)
            }
            Ok(Message::Flush(done)) => (true, false, Some(done)),
            Err(RecvTimeoutError::Timeout) => (true, false, None),
            Err(RecvTimeoutError::Disconnected) => (true, true, None),
        };
        if flush && !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(settings.batch));
            let count = spans.len() as u64;
            let sent = runtime.block_on(async {
                tokio::time::timeout(settings.timeout, exporter.export(spans)).await
            });
            match sent {
                Ok(Ok(())) => METRICS.exported.inc_by(count),
                Ok(Err(e)) => {
                    METRICS.failures.inc();
                    tracing::warn!(error = %e, spans = count, "span export failed");
                }
                Err(_) => {
                    METRICS.failures.inc();
                    tracing::warn!(spans = count, "span export timed out");
                }
            }
            first_at = None;
        }
        if let Some(done) = waiter {
            let _ = done.send(());
        }
        if closed {
            let _ = exporter.shutdown();
            return;
        }
    }
}

fn build_exporter(
    settings: &TelemetrySettings,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match settings.protocol {
        Protocol::HttpProtobuf => {
            let client = reqwest::Client::builder()
                .timeout(settings.timeout)
                .build()
                .map_err(|e| e.to_string())?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(ReqwestClient(client))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.timeout)
                .with_headers(settings.headers.clone().into_iter().collect())
                .build()
        }
        Protocol::Grpc => {
            let mut metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
            let mut headers = http::HeaderMap::new();
            for (k, v) in &settings.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::try_from(k.as_str()),
                    http::HeaderValue::try_from(v.as_str()),
                ) {
                    headers.insert(k, v);
                }
            }
            if !headers.is_empty() {
                metadata =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.timeout)
                .with_metadata(metadata)
                .build()
        }
    };
    built.map_err(|e| e.to_string())
}

/// The OTLP exporter's HTTP client: the reqwest (rustls) client the gateway already uses, with
/// the collector's answer read up to 64 KiB.
#[derive(Debug)]
struct ReqwestClient(reqwest::Client);

const MAX_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = answer.status();
        let headers = std::mem::take(answer.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let mut response = http::Response::new(bytes::Bytes::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
