//! HTTP helpers that are not routes.

pub mod client_ip;
