//! The proxy's own HTTP/1.1: a server for client connections and the framing it shares with the upstream client
//! (`upstream.rs`). Written for the proxy path alone: small reused buffers, heads and small bodies in one write, and
//! no connection task or channel between a request and its upstream connection.

pub mod codec;
pub mod server;
