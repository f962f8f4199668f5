use loona_hpack::Encoder;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn headers(enc: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
    enc.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}
