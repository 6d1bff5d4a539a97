//! Raw kernel records in, [`crate::event::Event`]s out.
pub mod decode;
pub mod ids;

pub use decode::{DecodeError, Decoder, IdOp, parse};
