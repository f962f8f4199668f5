//! HTTP over captured plaintext: HTTP/1.1 framing ([`h1`]), HTTP/2 frames and
//! HPACK ([`h2`]), content decoding ([`body`]), server-sent events ([`sse`]), AWS
//! event-stream framing ([`eventstream`]) and the pairing of a connection's
//! requests with their responses ([`exchange`]).
pub mod body;
pub mod eventstream;
pub mod exchange;
pub mod h1;
pub mod h2;
pub mod sse;
