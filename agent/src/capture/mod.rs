//! From ring-buffer records to per-connection byte streams: [`decode`] checks
//! raw records and turns them into the typed [`event`]s, [`streams`] keeps one
//! entry per connection (bounded, idle expiry, freed on close and process exit)
//! and checks chunk continuity; [`clock`] turns kernel time into wall-clock time;
//! [`tls_hello`] reads the server name a TLS ClientHello names.
pub mod clock;
pub mod decode;
pub mod event;
pub mod streams;
pub mod tls_hello;
