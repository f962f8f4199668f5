//! Records -> an OTLP `ExportMetricsServiceRequest` with the GenAI client
//! metrics: `gen_ai.client.token.usage` (`{token}`, by `gen_ai.token.type`),
//! `gen_ai.client.operation.duration` (s) and, for streams,
//! `gen_ai.client.operation.time_to_first_chunk` (s); explicit-bucket
//! histograms with the conventions' boundaries, delta temporality.
//!
//! Each spooled batch is aggregated on its own, over a window its records fix
//! (first request start .. last response end): the points of a batch are the
//! same on every send, however the spool merges batches into requests. A
//! resend is therefore identical points (same series, same start and end
//! time), which a receiver that keys points by series and time keeps once.
use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokentap_event::LlmCall;

use super::semconv::{self, Host, ResourceKey};

pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub const DURATION: &str = "gen_ai.client.operation.duration";
pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";

/// The conventions' recommended boundaries.
const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const SECONDS_BOUNDS: [f64; 14] =
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];

struct Instrument {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    bounds: &'static [f64],
}

const INSTRUMENTS: [Instrument; 3] = [
    Instrument {
        name: TOKEN_USAGE,
        unit: "{token}",
        description: "Number of input and output tokens used.",
        bounds: &TOKEN_BOUNDS,
    },
    Instrument { name: DURATION, unit: "s", description: "GenAI operation duration.", bounds: &SECONDS_BOUNDS },
    Instrument {
        name: TIME_TO_FIRST_CHUNK,
        unit: "s",
        description: "Time to receive the first chunk in a streaming operation.",
        bounds: &SECONDS_BOUNDS,
    },
];

/// One histogram point being filled.
#[derive(Default)]
struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn record(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
            (self.min, self.max) = (v, v);
        }
        // Buckets are (b[i-1], b[i]]: the first bound not below the value.
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// A series: the instrument (index into INSTRUMENTS) and its attributes.
type Series = (usize, Vec<(&'static str, String)>);

/// The attributes every GenAI client metric carries.
fn common(r: &LlmCall) -> Vec<(&'static str, String)> {
    let mut a = vec![
        ("gen_ai.operation.name", semconv::operation_name(&r.operation, r.request_model.as_deref()).to_owned()),
        ("gen_ai.provider.name", semconv::provider_name(&r.provider, r.server.as_deref()).into_owned()),
    ];
    for (k, v) in [
        ("gen_ai.request.model", &r.request_model),
        ("gen_ai.response.model", &r.response_model),
        ("server.address", &r.server),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            a.push((k, v.clone()));
        }
    }
    a
}

/// What one record adds: (series, value).
fn measurements(r: &LlmCall) -> Vec<(Series, f64)> {
    let base = common(r);
    let mut out = Vec::with_capacity(4);
    for (kind, tokens) in [("input", r.input_tokens), ("output", r.output_tokens)] {
        if let Some(t) = tokens {
            let mut a = base.clone();
            a.push(("gen_ai.token.type", kind.to_owned()));
            out.push(((0, a), t as f64));
        }
    }
    if let Some(d) = r.duration_ms.filter(|d| d.is_finite() && *d >= 0.0) {
        let mut a = base.clone();
        if let Some(s) = r.status.filter(|s| *s >= 400) {
            a.push(("error.type", s.to_string()));
        }
        out.push(((1, a), d / 1000.0));
    }
    if let Some(t) = r.ttft_ms.filter(|t| r.stream && t.is_finite() && *t >= 0.0) {
        out.push(((2, base), t / 1000.0));
    }
    out
}

/// The window a batch's points cover: its first request start to its last
/// response end (at least 1 ns long).
fn window(batch: &[LlmCall]) -> (u64, u64) {
    let times: Vec<(u64, u64)> = batch.iter().map(semconv::times).collect();
    let start = times.iter().map(|t| t.0).min().unwrap_or(0);
    let end = times.iter().map(|t| t.1).max().unwrap_or(0);
    (start, end.max(start + 1))
}

/// The request for these batches (each a spooled batch's records).
pub fn request(batches: &[Vec<LlmCall>], host: &Host) -> ExportMetricsServiceRequest {
    // resource -> instrument -> points, in a fixed order.
    let mut out: BTreeMap<ResourceKey, BTreeMap<usize, Vec<HistogramDataPoint>>> = BTreeMap::new();
    for batch in batches {
        let (start, end) = window(batch);
        let mut hists: BTreeMap<(ResourceKey, Series), Hist> = BTreeMap::new();
        for r in batch {
            let resource = semconv::resource(r, host);
            for (series, v) in measurements(r) {
                let bounds = INSTRUMENTS[series.0].bounds;
                hists.entry((resource.clone(), series)).or_default().record(bounds, v);
            }
        }
        for ((resource, (instrument, attrs)), h) in hists {
            let point = HistogramDataPoint {
                attributes: attrs.iter().map(|(k, v)| semconv::kv(k, semconv::str_value(v))).collect(),
                start_time_unix_nano: start,
                time_unix_nano: end,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts: h.counts,
                explicit_bounds: INSTRUMENTS[instrument].bounds.to_vec(),
                min: Some(h.min),
                max: Some(h.max),
                ..Default::default()
            };
            out.entry(resource).or_default().entry(instrument).or_default().push(point);
        }
    }
    let resource_metrics = out
        .into_iter()
        .map(|(key, by_instrument)| ResourceMetrics {
            resource: Some(Resource { attributes: semconv::resource_attributes(&key), ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(super::traces::scope()),
                metrics: by_instrument
                    .into_iter()
                    .map(|(i, data_points)| Metric {
                        name: INSTRUMENTS[i].name.into(),
                        unit: INSTRUMENTS[i].unit.into(),
                        description: INSTRUMENTS[i].description.into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}
