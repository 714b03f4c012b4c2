//! The reverse proxy: the request path (service), the accept loop (server), the upstream
//! hop (forward), body accounting (body), route classes and the path guard (routes).

pub mod body;
pub mod errors;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod routes;
pub mod server;
pub mod service;
