//! Server-sent events (`text/event-stream`) as LLM APIs stream them.
//! Tolerant: LF, CRLF or CR line ends, comments, missing final blank line.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field, if any.
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// Body offset just past this event: when it had fully arrived.
    pub end: usize,
}

pub fn parse(body: &[u8]) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut event: Option<String> = None;
    let mut data: Option<String> = None;
    let mut pos = 0usize;
    while pos < body.len() {
        let rest = &body[pos..];
        let (line_len, term_len) = match rest.iter().position(|&c| c == b'\n' || c == b'\r') {
            Some(i) => {
                let t = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                (i, t)
            }
            None => (rest.len(), 0),
        };
        let line = &rest[..line_len];
        pos += line_len + term_len;
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(SseEvent { event: event.take(), data: d, end: pos });
            }
            event = None;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => event = Some(value.into_owned()),
            b"data" => match data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => data = Some(value.into_owned()),
            },
            _ => {}
        }
    }
    if let Some(d) = data {
        events.push(SseEvent { event, data: d, end: body.len() });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_and_anthropic_shapes() {
        let body = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let ev = parse(body);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[0].end, 15);
        assert_eq!(ev[1].data, "[DONE]");

        let body = b"event: message_start\r\ndata: {\"x\":1}\r\n\r\n: ping\r\nevent: message_stop\r\ndata: {}\r\n\r\n";
        let ev = parse(body);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event.as_deref(), Some("message_start"));
        assert_eq!(ev[1].event.as_deref(), Some("message_stop"));
    }

    #[test]
    fn multi_line_data_and_missing_trailer() {
        let ev = parse(b"data: a\ndata: b\r\rdata:c");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "a\nb");
        assert_eq!(ev[1].data, "c");
    }

    #[test]
    fn garbage_does_not_panic() {
        for body in [&b"\xff\xfe\r\r\n:"[..], b"data", b"event: x\n\n", b"\n\n\n"] {
            let _ = parse(body);
        }
        assert!(parse(b"event: x\n\n").is_empty());
    }
}
