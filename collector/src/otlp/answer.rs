//! Answers as OTLP/HTTP specifies them: 200 with an `ExportTraceServiceResponse`
//! (its `partial_success` counts the spans not taken, and says why), and for
//! every 4xx/5xx a `google.rpc.Status` — both in the request's encoding.
//! 429/503 carry `Retry-After`, which OTLP exporters honour.
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;

use super::decode::Format;
use crate::server::{Refusal, Shared};

/// `google.rpc.Status` (code, message; no details): the body of an OTLP error.
/// opentelemetry-proto does not ship it, and its two fields need no more than this.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status code for an HTTP status (OTLP pairs them in its error bodies).
fn rpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        408 => 4,             // DEADLINE_EXCEEDED
        429 | 503 => 14,      // UNAVAILABLE (retry)
        _ => 13,              // INTERNAL
    }
}

fn body(format: Format, encoded_pb: Vec<u8>, json: serde_json::Result<Vec<u8>>) -> Vec<u8> {
    match format {
        Format::Protobuf => encoded_pb,
        Format::Json => json.unwrap_or_else(|_| b"{}".to_vec()),
    }
}

/// A refused request: counted by reason, answered with a Status.
pub fn refused(shared: &Shared, format: Format, r: Refusal) -> Response {
    shared.metrics.reject(r.reason);
    tracing::debug!(reason = r.reason, msg = %r.msg, "OTLP export refused");
    let status = RpcStatus { code: rpc_code(r.status), message: r.msg };
    let bytes = body(format, status.encode_to_vec(), serde_json::to_vec(&status));
    let mut resp = (r.status, [("content-type", format.content_type())], bytes).into_response();
    if matches!(r.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

/// The export was taken: `rejected` spans were not stored, `message` says why
/// (empty when every span was stored or was a duplicate of a stored call).
pub fn accepted(format: Format, rejected: u64, message: String) -> Response {
    let partial_success = (rejected > 0 || !message.is_empty())
        .then_some(ExportTracePartialSuccess { rejected_spans: rejected as i64, error_message: message });
    let r = ExportTraceServiceResponse { partial_success };
    let bytes = body(format, r.encode_to_vec(), serde_json::to_vec(&r));
    (StatusCode::OK, [("content-type", format.content_type())], bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_success_in_both_encodings() {
        let r = accepted(Format::Json, 0, String::new());
        assert_eq!(r.status(), StatusCode::OK);
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess { rejected_spans: 2, error_message: "x".into() }),
        };
        let back = ExportTraceServiceResponse::decode(&r.encode_to_vec()[..]).unwrap();
        assert_eq!(back.partial_success.unwrap().rejected_spans, 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["partialSuccess"]["errorMessage"], "x", "{json}");
        let s = RpcStatus { code: 3, message: "bad".into() };
        assert_eq!(RpcStatus::decode(&s.encode_to_vec()[..]).unwrap(), s);
        assert_eq!(rpc_code(StatusCode::SERVICE_UNAVAILABLE), 14);
    }
}
