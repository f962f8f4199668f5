//! HTTP over captured plaintext: HTTP/1.1 framing ([`h1`]), content decoding
//! ([`body`]), server-sent events ([`sse`]) and the pairing of a connection's
//! requests with their responses ([`exchange`]).
pub mod body;
pub mod exchange;
pub mod h1;
pub mod sse;
