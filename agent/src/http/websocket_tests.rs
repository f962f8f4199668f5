use super::*;

const CAP: usize = 1 << 20;

fn decode_all(d: &mut WsDecoder, bytes: &[u8]) -> Result<Vec<WsMessage>, WsError> {
    let mut out = Vec::new();
    d.push(bytes, &mut out)?;
    Ok(out)
}

/// The same bytes fed one at a time give the same messages.
fn bytewise(deflate: Option<bool>, bytes: &[u8]) -> Result<Vec<WsMessage>, WsError> {
    let mut d = WsDecoder::new(deflate, CAP);
    let mut out = Vec::new();
    for b in bytes {
        d.push(std::slice::from_ref(b), &mut out)?;
    }
    Ok(out)
}

fn text(s: &str) -> WsMessage {
    WsMessage::Text(s.as_bytes().to_vec())
}

/// A frame as a client sends it (masked) or a server (`mask` None).
pub(crate) fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(fin as u8) << 7 | (rsv1 as u8) << 6 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend(k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend(payload),
    }
    f
}

/// permessage-deflate as a sender does it: raw deflate, sync flush, the
/// trailing `00 00 ff ff` removed.
pub(crate) fn deflate(c: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

#[test]
fn rfc6455_examples() {
    // A single-frame unmasked text message, and the same masked.
    let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    // A fragmented unmasked text message, a ping between its fragments.
    let fragmented = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x80, 0x02, 0x6c, 0x6f];
    for bytes in [&unmasked[..], &masked[..], &fragmented[..]] {
        assert_eq!(decode_all(&mut WsDecoder::new(None, CAP), bytes).unwrap(), [text("Hello")]);
        assert_eq!(bytewise(None, bytes).unwrap(), [text("Hello")]);
    }
    // 256 bytes and 64 KiB binary messages (16- and 64-bit lengths).
    for n in [256usize, 65536] {
        let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let f = frame(true, false, 2, &payload, Some([1, 2, 3, 4]));
        assert_eq!(decode_all(&mut WsDecoder::new(None, CAP), &f).unwrap(), [WsMessage::Binary(payload)]);
    }
}

#[test]
fn rfc7692_examples_with_and_without_context_takeover() {
    // "Hello" compressed, then again with the window kept (section 7.2.3.2).
    let first = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let second = [0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00];
    let both = [&first[..], &second[..]].concat();
    assert_eq!(decode_all(&mut WsDecoder::new(Some(false), CAP), &both).unwrap(), [text("Hello"), text("Hello")]);
    assert_eq!(bytewise(Some(false), &both).unwrap(), [text("Hello"), text("Hello")]);
    // The second refers to the first's window: with the context reset per
    // message (no_context_takeover) it does not read as "Hello".
    assert_ne!(decode_all(&mut WsDecoder::new(Some(true), CAP), &both), Ok(vec![text("Hello"), text("Hello")]));
    // A sender that resets per message is read with resets.
    let mut out = Vec::new();
    for _ in 0..3 {
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        out.extend(frame(true, true, 1, &deflate(&mut c, b"Hello"), None));
    }
    assert_eq!(decode_all(&mut WsDecoder::new(Some(true), CAP), &out).unwrap(), vec![text("Hello"); 3]);
    // Uncompressed messages may be mixed in (RSV1 clear).
    let plain = frame(true, false, 1, b"raw", Some([9, 9, 9, 9]));
    let got = decode_all(&mut WsDecoder::new(Some(false), CAP), &[&first[..], &plain, &second].concat()).unwrap();
    assert_eq!(got, [text("Hello"), text("raw"), text("Hello")]);
}

#[test]
fn a_compressed_fragmented_stream_of_events_with_context_kept() {
    // Like a Responses API stream over a WebSocket: many JSON events, each
    // compressed with the window kept, the long ones split into fragments.
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for i in 0..50 {
        let ev = format!(
            r#"{{"type":"response.output_text.delta","sequence_number":{i},"delta":"{}"}}"#,
            "x".repeat(i * 40)
        );
        let z = deflate(&mut c, ev.as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        wire.extend(frame(false, true, 1, a, None));
        wire.extend(frame(true, false, 0, b, None));
        want.push(text(&ev));
    }
    wire.extend(frame(true, false, 8, &1000u16.to_be_bytes(), None));
    want.push(WsMessage::Close(Some(1000)));
    let mut d = WsDecoder::new(Some(false), CAP);
    let mut got = Vec::new();
    for piece in wire.chunks(7) {
        d.push(piece, &mut got).unwrap();
    }
    assert_eq!(got, want);
    assert!(d.is_done());
    // After the close, nothing more is decoded.
    d.push(&frame(true, false, 1, b"late", None), &mut got).unwrap();
    assert_eq!(got.len(), want.len());
}

#[test]
fn malformed_frames_end_decoding() {
    let bad: &[(&[u8], WsError)] = &[
        (&[0xa1, 0x00], WsError::Reserved),             // RSV2
        (&[0xc1, 0x00], WsError::Reserved),             // RSV1 without deflate
        (&[0x83, 0x00], WsError::Opcode(3)),            // reserved data opcode
        (&[0x8b, 0x00], WsError::Opcode(0xb)),          // reserved control opcode
        (&[0x09, 0x00], WsError::Control),              // fragmented ping
        (&[0x89, 0x7e, 0x00, 0x7e], WsError::Control),  // ping of 126 bytes
        (&[0x80, 0x00], WsError::Sequence),             // continuation, no message
        (&[0x01, 0x00, 0x01, 0x00], WsError::Sequence), // a new message inside one
        (&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], WsError::Length),
    ];
    for (bytes, err) in bad {
        let mut d = WsDecoder::new(None, CAP);
        assert_eq!(decode_all(&mut d, bytes), Err(*err), "{bytes:x?}");
        assert!(d.is_done());
        // Nothing after is decoded, and nothing is held.
        assert_eq!(decode_all(&mut d, &[0x81, 0x01, b'x']), Ok(vec![]));
        assert_eq!(d.buffered(), 0);
    }
    // Compressed garbage.
    let mut d = WsDecoder::new(Some(false), CAP);
    assert_eq!(decode_all(&mut d, &frame(true, true, 1, &[0xff; 40], None)), Err(WsError::Inflate));
}

#[test]
fn messages_and_bombs_are_capped() {
    // A frame announcing more than the cap is refused at its header.
    let mut d = WsDecoder::new(None, 1000);
    assert_eq!(decode_all(&mut d, &[0x82, 0x7e, 0x04, 0x00]), Err(WsError::TooLarge(1000)));
    // Fragments adding up past the cap.
    let mut d = WsDecoder::new(None, 1000);
    let mut wire = Vec::new();
    for _ in 0..3 {
        wire.extend(frame(false, false, if wire.is_empty() { 2 } else { 0 }, &[0; 400], None));
    }
    assert_eq!(decode_all(&mut d, &wire), Err(WsError::TooLarge(1000)));
    // 64 MB of zeros deflates to a few KB: inflated only up to the cap.
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let bomb = deflate(&mut c, &vec![0u8; 64 << 20]);
    assert!(bomb.len() < 100_000);
    let mut d = WsDecoder::new(Some(false), CAP);
    assert_eq!(decode_all(&mut d, &frame(true, true, 2, &bomb, None)), Err(WsError::TooLarge(CAP)));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut noise = crate::Noise(0x2545_f491_4f6c_dd1d);
    for deflate in [None, Some(false), Some(true)] {
        for len in [1usize, 2, 13, 200, 5000] {
            let bytes = noise.bytes(len);
            let mut d = WsDecoder::new(deflate, 4096);
            let mut out = Vec::new();
            for piece in bytes.chunks(3) {
                if d.push(piece, &mut out).is_err() {
                    break;
                }
            }
            assert!(d.buffered() <= 4096 + 14 + 125);
        }
    }
}

#[test]
fn the_negotiated_extension_is_read_from_the_101_response() {
    assert_eq!(Deflate::negotiated("permessage-deflate"), Some(Deflate::default()));
    assert_eq!(
        Deflate::negotiated("permessage-deflate; client_no_context_takeover; server_max_window_bits=10"),
        Some(Deflate { client_no_context_takeover: true, server_no_context_takeover: false })
    );
    assert_eq!(
        Deflate::negotiated("x-webkit-deflate-frame, Permessage-Deflate;server_no_context_takeover"),
        Some(Deflate { client_no_context_takeover: false, server_no_context_takeover: true })
    );
    assert_eq!(Deflate::negotiated("x-other"), None);
    assert_eq!(Deflate::negotiated(""), None);
}
