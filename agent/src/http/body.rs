//! Content decoding (gzip, deflate, br, zstd) with a hard cap on the decoded size,
//! so a compressed bomb costs at most `cap` bytes of memory.
use std::io::Read;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("decoded body larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported content-encoding {0:?}")]
    Unsupported(String),
    #[error("corrupt {0} data")]
    Corrupt(&'static str),
}

/// Undo `content-encoding` (a comma-separated list, applied in order, so undone in
/// reverse). `None`/`identity` returns the input unchanged.
pub fn decode(encoding: Option<&str>, data: &[u8], cap: usize) -> Result<Vec<u8>, BodyError> {
    let mut cur = data.to_vec();
    let Some(encoding) = encoding else {
        return Ok(cur);
    };
    let codings: Vec<String> =
        encoding.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()).collect();
    for coding in codings.iter().rev() {
        cur = match coding.as_str() {
            "identity" => cur,
            "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(&cur[..]), cap, "gzip")?,
            "deflate" => {
                // "deflate" is zlib-wrapped per the RFC but raw deflate in the wild.
                match read_capped(flate2::read::ZlibDecoder::new(&cur[..]), cap, "deflate") {
                    Err(BodyError::Corrupt(_)) => {
                        read_capped(flate2::read::DeflateDecoder::new(&cur[..]), cap, "deflate")?
                    }
                    other => other?,
                }
            }
            "br" => read_capped(brotli::Decompressor::new(&cur[..], 4096), cap, "br")?,
            "zstd" => {
                let d = zstd::stream::read::Decoder::new(&cur[..]).map_err(|_| BodyError::Corrupt("zstd"))?;
                read_capped(d, cap, "zstd")?
            }
            other => return Err(BodyError::Unsupported(other.to_owned())),
        };
    }
    Ok(cur)
}

fn read_capped(r: impl Read, cap: usize, name: &'static str) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let limit = cap as u64 + 1;
    r.take(limit).read_to_end(&mut out).map_err(|_| BodyError::Corrupt(name))?;
    if out.len() > cap {
        return Err(BodyError::TooLarge(cap));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_every_coding() {
        let text = br#"{"usage":{"prompt_tokens":1}}"#.repeat(20);
        assert_eq!(decode(Some("gzip"), &gzip(&text), 1 << 20).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(decode(Some("deflate"), &z.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(decode(Some("deflate"), &raw.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &text[..], &mut br, &Default::default()).unwrap();
        assert_eq!(decode(Some("br"), &br, 1 << 20).unwrap(), text);
        let zs = zstd::encode_all(&text[..], 3).unwrap();
        assert_eq!(decode(Some("zstd"), &zs, 1 << 20).unwrap(), text);
        assert_eq!(decode(Some("identity"), &text, 1 << 20).unwrap(), text);
        assert_eq!(decode(None, &text, 1 << 20).unwrap(), text);
        // Stacked codings are undone in reverse.
        assert_eq!(decode(Some("gzip, gzip"), &gzip(&gzip(&text)), 1 << 20).unwrap(), text);
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        assert_eq!(decode(Some("gzip"), &bomb, 1 << 20), Err(BodyError::TooLarge(1 << 20)));
    }

    #[test]
    fn garbage_and_unknown_codings_are_errors() {
        assert_eq!(decode(Some("gzip"), b"not gzip", 1024), Err(BodyError::Corrupt("gzip")));
        assert!(decode(Some("br"), b"\xff\xff\xff\xff", 1024).is_err());
        assert!(decode(Some("zstd"), b"nope", 1024).is_err());
        assert_eq!(decode(Some("compress"), b"x", 1024), Err(BodyError::Unsupported("compress".into())));
        let g = gzip(b"hello");
        assert!(decode(Some("gzip"), &g[..g.len() / 2], 1024).is_err());
    }
}
