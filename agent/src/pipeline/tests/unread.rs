//! Calls whose response the client never read whole, and connections whose
//! bytes are not HTTP at all: what each is counted as.
use super::*;

const INVOKE: &[u8] = b"POST /model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke HTTP/1.1\r\nHost: bedrock-runtime.us-east-1.amazonaws.com\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// Bedrock's InvokeModel answer: the counts in headers, a 19 KB body.
fn invoke_response() -> Vec<u8> {
    fixture("bedrock/invoke_response.http")
}

/// boto3's `invoke_model` hands back a StreamingBody; a caller that never reads
/// it leaves all but the first buffer (8 KiB) unread when the process ends.
#[test]
fn an_invoke_model_body_never_read_is_recorded_from_its_headers() {
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, INVOKE, 1000);
    let r = invoke_response();
    let head_end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    call(&mut p, 1, DIR_INGRESS, &r[..8192], 8192);
    assert!(c.0.lock().unwrap().is_empty(), "nothing before the connection ends");
    p.handle(&exit_record(42));
    let records = c.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!((rec.input_tokens, rec.output_tokens), (Some(17), Some(4410)));
    assert_eq!(rec.usage_source, Some(tokentap_event::UsageSource::Headers));
    assert_eq!(rec.request_id.as_deref(), Some("6b1f3c2e-8d4a-4c1e-9f0b-2a7d5e3c1b90"));
    assert_eq!(rec.request_model.as_deref(), Some("anthropic.claude-3-haiku-20240307-v1:0"));
    assert!(rec.response_id.is_none(), "the body's id was never read");
    let s = stats.snapshot();
    assert_eq!((s.records, s.records_body_unread, s.dropped_unanswered), (1, 1, 0));

    // Read whole: a plain record, not counted as unread.
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, INVOKE, 1000);
    call(&mut p, 1, DIR_INGRESS, &r, 8192);
    assert_eq!(c.0.lock().unwrap()[0].response_id.as_deref(), Some("msg_bdrk_01XYZ"));
    assert_eq!((stats.snapshot().records, stats.snapshot().records_body_unread), (1, 0));

    // Only the head, no body byte: still the headers' counts.
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, INVOKE, 1000);
    call(&mut p, 1, DIR_INGRESS, &r[..head_end], 8192);
    p.handle(&exit_record(42));
    assert_eq!(c.0.lock().unwrap()[0].output_tokens, Some(4410));
    assert_eq!(stats.snapshot().records_body_unread, 1);

    // Cut inside the head: nothing to read the counts from.
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, INVOKE, 1000);
    call(&mut p, 1, DIR_INGRESS, &r[..head_end - 30], 8192);
    p.handle(&exit_record(42));
    assert!(c.0.lock().unwrap().is_empty());
    assert_eq!(stats.snapshot().dropped_unanswered, 1);
}

/// Converse carries its usage in the body: a body cut short is a lost call.
#[test]
fn a_converse_body_cut_short_is_unanswered() {
    let (mut p, c, stats) = pipeline();
    let req = String::from_utf8_lossy(INVOKE).replace("/invoke ", "/converse ");
    call(&mut p, 1, DIR_EGRESS, req.as_bytes(), 1000);
    let r = invoke_response();
    call(&mut p, 1, DIR_INGRESS, &r[..8192], 8192);
    p.handle(&exit_record(42));
    assert!(c.0.lock().unwrap().is_empty());
    let s = stats.snapshot();
    assert_eq!((s.records, s.records_body_unread, s.dropped_unanswered), (0, 0, 1));
}

/// Bytes that are never HTTP (a database over TLS) are `ignored_not_http`,
/// whether the connection goes on or ends first; `joined_mid_stream` is kept
/// for connections that prove HTTP after the skipped bytes.
#[test]
fn garbage_is_not_http_and_a_real_join_is_joined_mid_stream() {
    let (mut p, c, stats) = pipeline();
    // PostgreSQL over TLS: a startup message, its answer, a query; then the end.
    call(&mut p, 1, DIR_EGRESS, b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00app\x00", 100);
    call(&mut p, 1, DIR_INGRESS, b"R\x00\x00\x00\x08\x00\x00\x00\x00", 100);
    call(&mut p, 1, DIR_EGRESS, b"Q\x00\x00\x00\x0dselect 1\x00", 100);
    // A long binary session: given up as not HTTP while open.
    for _ in 0..8 {
        call(&mut p, 2, DIR_EGRESS, b"\x17\x03\x03binary", 100);
    }
    // Capture began inside a request body: the next request is captured.
    call(&mut p, 3, DIR_EGRESS, b"\"content\":\"hi\"}]}", 100);
    call(&mut p, 3, DIR_EGRESS, REQ, 1000);
    call(&mut p, 3, DIR_INGRESS, &resp(), 1000);
    // Capture began inside a streamed response.
    call(&mut p, 4, DIR_INGRESS, b"data: {\"choices\":[]}\n\n", 100);
    p.handle(&exit_record(42));
    assert_eq!(c.0.lock().unwrap().len(), 1);
    let s = stats.snapshot();
    assert_eq!((s.ignored_not_http, s.joined_mid_stream), (2, 2), "{s:?}");
    assert_eq!(s.dropped_calls(), 0);
}
