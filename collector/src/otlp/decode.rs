//! An OTLP/HTTP trace export's body -> `ExportTraceServiceRequest`: the
//! content type picks protobuf or OTLP/JSON, the content encoding (gzip, the
//! one OTLP exporters use, or zstd) is undone within a byte cap, so a
//! decompression bomb stops at the cap, not at the machine's memory.
use std::io::Read;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Spans one request may carry (the same bound as records in one wire batch).
pub const MAX_SPANS: usize = tokentap_event::wire::MAX_RECORDS;

/// OTLP/HTTP's two encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf`
    Protobuf,
    /// `application/json` (OTLP/JSON: hex ids, 64-bit integers as strings or numbers, enums as integers)
    Json,
}

impl Format {
    /// The format a `Content-Type` names (parameters such as `charset` ignored).
    pub fn of(content_type: Option<&str>) -> Result<Self, DecodeError> {
        let ct = content_type.unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
            "application/json" => Ok(Format::Json),
            _ => Err(DecodeError::ContentType(ct.chars().take(100).collect())),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content type {0:?}: OTLP/HTTP takes application/x-protobuf or application/json")]
    ContentType(String),
    #[error("unsupported content encoding {0:?} (use gzip, zstd or identity)")]
    Encoding(String),
    #[error("body is not valid {0}")]
    Compressed(&'static str),
    #[error("request larger than {0} bytes once decompressed")]
    TooLarge(usize),
    #[error("more than {MAX_SPANS} spans in one request")]
    TooManySpans,
    #[error("not an OTLP ExportTraceServiceRequest (protobuf): {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP ExportTraceServiceRequest (OTLP/JSON): {0}")]
    Json(#[from] serde_json::Error),
}

impl DecodeError {
    /// The sender sent too much (413), not something malformed (400).
    pub fn too_large(&self) -> bool {
        matches!(self, DecodeError::TooLarge(_) | DecodeError::TooManySpans)
    }

    /// The headers are wrong (415), not the body.
    pub fn unsupported(&self) -> bool {
        matches!(self, DecodeError::ContentType(_) | DecodeError::Encoding(_))
    }
}

/// The encodings `/v1/traces` accepts (checked from the headers, before the body is read).
pub fn check_encoding(encoding: Option<&str>) -> Result<(), DecodeError> {
    match encoding.map(str::trim).unwrap_or("") {
        "" | "identity" | "gzip" | "zstd" => Ok(()),
        other => Err(DecodeError::Encoding(other.chars().take(100).collect())),
    }
}

/// The body decompressed, at most `max` bytes.
pub fn decompress(encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    fn capped(r: impl Read, max: usize, what: &'static str, hint: usize) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(hint.min(max));
        // One byte past the cap tells "exactly max" from "more".
        r.take(max as u64 + 1).read_to_end(&mut out).map_err(|_| DecodeError::Compressed(what))?;
        if out.len() > max {
            return Err(DecodeError::TooLarge(max));
        }
        Ok(out)
    }
    match encoding.map(str::trim).unwrap_or("") {
        "" | "identity" if body.len() > max => Err(DecodeError::TooLarge(max)),
        "" | "identity" => Ok(body.to_vec()),
        "gzip" => capped(flate2::read::MultiGzDecoder::new(body), max, "gzip", body.len() * 4),
        "zstd" => {
            let d = zstd::stream::read::Decoder::new(body).map_err(|_| DecodeError::Compressed("zstd"))?;
            capped(d, max, "zstd", body.len() * 4)
        }
        other => Err(DecodeError::Encoding(other.chars().take(100).collect())),
    }
}

/// Decode one export request and check it is within the span bound.
pub fn decode(format: Format, bytes: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    let req = match format {
        Format::Protobuf => ExportTraceServiceRequest::decode(bytes)?,
        Format::Json => serde_json::from_slice(bytes)?,
    };
    let spans: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    if spans > MAX_SPANS {
        return Err(DecodeError::TooManySpans);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn content_types_and_encodings() {
        assert_eq!(Format::of(Some("application/x-protobuf")).unwrap(), Format::Protobuf);
        assert_eq!(Format::of(Some("application/json; charset=utf-8")).unwrap(), Format::Json);
        assert!(matches!(Format::of(Some("text/plain")), Err(DecodeError::ContentType(_))));
        assert!(Format::of(None).unwrap_err().unsupported());
        assert!(check_encoding(Some("gzip")).is_ok());
        assert!(check_encoding(Some("br")).unwrap_err().unsupported());
    }

    #[test]
    fn decompression_is_capped() {
        let plain = vec![b'a'; 10_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decompress(Some("gzip"), &gz, 10_000).unwrap(), plain);
        assert!(matches!(decompress(Some("gzip"), &gz, 9_999), Err(DecodeError::TooLarge(9_999))));
        let z = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(decompress(Some("zstd"), &z, 10_000).unwrap(), plain);
        assert!(decompress(Some("zstd"), &z, 100).unwrap_err().too_large());
        assert!(matches!(decompress(Some("gzip"), b"not gzip", 100), Err(DecodeError::Compressed("gzip"))));
        assert!(matches!(decompress(None, &plain, 10), Err(DecodeError::TooLarge(10))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(Format::Protobuf, &[0xff, 0xff, 0xff]), Err(DecodeError::Protobuf(_))));
        assert!(matches!(decode(Format::Json, b"{\"resourceSpans\": 3}"), Err(DecodeError::Json(_))));
        // An empty body is a valid, empty request in both encodings.
        assert!(decode(Format::Protobuf, b"").unwrap().resource_spans.is_empty());
        assert!(decode(Format::Json, b"{}").unwrap().resource_spans.is_empty());
    }
}
