//! The HTTP data path (being written).
pub mod error;
pub mod request;
pub mod usage;
