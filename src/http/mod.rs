//! The HTTP edge: the axum application, its routes and extractors, authentication, the error
//! mapping, metrics and the OpenAPI document. It turns requests into engine calls and engine
//! replies into responses; it decides no auction rule.

pub mod api;
pub mod auth;
pub mod cors;
pub mod cursor;
pub mod engine;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod tls;
