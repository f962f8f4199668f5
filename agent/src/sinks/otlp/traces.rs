//! Records -> an OTLP `ExportTraceServiceRequest`: one CLIENT span per call,
//! grouped by resource (who made it), under tokentap's instrumentation scope.
use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use tokentap_event::LlmCall;

use super::semconv::{self, Host, ResourceKey};

/// The instrumentation scope of everything tokentap exports.
pub fn scope() -> opentelemetry_proto::tonic::common::v1::InstrumentationScope {
    opentelemetry_proto::tonic::common::v1::InstrumentationScope {
        name: "tokentap".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// One call as a span.
pub fn span(r: &LlmCall) -> Span {
    let (trace_id, span_id) = semconv::ids(&r.event_id);
    let (start, end) = semconv::times(r);
    let status = match r.status {
        Some(s) if s >= 400 => Status { code: StatusCode::Error as i32, message: format!("HTTP {s}") },
        _ => Status::default(),
    };
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: semconv::span_name(r),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: semconv::span_attributes(r),
        status: Some(status),
        ..Default::default()
    }
}

/// The request for these records.
pub fn request(records: &[LlmCall], host: &Host) -> ExportTraceServiceRequest {
    let mut by_resource: BTreeMap<ResourceKey, Vec<Span>> = BTreeMap::new();
    for r in records {
        by_resource.entry(semconv::resource(r, host)).or_default().push(span(r));
    }
    let resource_spans = by_resource
        .into_iter()
        .map(|(key, spans)| ResourceSpans {
            resource: Some(Resource { attributes: semconv::resource_attributes(&key), ..Default::default() }),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), spans, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}
