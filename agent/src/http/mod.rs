//! HTTP over captured plaintext: the protocol-neutral types it hands on
//! ([`message`]), first-bytes checks ([`sniff`]), HTTP/1.1 framing ([`h1`]),
//! HTTP/2 frames and HPACK ([`h2`]), the pairing of a connection's requests with
//! their responses ([`exchange`]), content decoding ([`body`]), server-sent
//! events ([`sse`]), AWS event-stream framing ([`eventstream`]), WebSocket
//! messages after an upgrade ([`websocket`]) and the response bodies the kernel
//! need not copy ([`mute`]).
pub mod body;
pub mod eventstream;
pub mod exchange;
pub mod h1;
pub mod h2;
pub mod handoff_codec;
pub mod ignored;
pub mod message;
pub mod mute;
pub mod sniff;
pub mod sse;
pub mod websocket;
pub mod ws_session;
