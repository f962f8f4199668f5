//! From ring-buffer records to per-connection byte streams: [`decode`] checks and
//! splits raw records, [`streams`] keeps one entry per connection (bounded, idle
//! expiry, freed on close and process exit) and checks chunk continuity.
pub mod decode;
pub mod streams;
