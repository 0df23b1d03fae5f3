//! Typed errors on the request path. Each maps to the protocol [`Status`] its reply carries; the
//! `Display` text becomes the reply's `error` string.

use crate::protocol::{Status, MAX_COMPUTE_ROUNDS, MAX_KEY_LEN, MAX_VALUE_LEN};

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A length prefix of 0: the stream's framing is broken and the connection closes.
    #[error("frame length prefix is 0")]
    EmptyFrame,
    /// A length prefix over `--max-frame`: the connection closes.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// The frame's bytes are not a valid `Request` FlatBuffer.
    #[error("frame is not a valid percore.v1.Request: {0}")]
    Malformed(&'static str),
    /// The union holds a member this server does not know (or none at all).
    #[error("unknown operation (union type {0})")]
    UnknownOp(u8),
    /// A field the operation needs is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {0} bytes, the limit is {MAX_KEY_LEN}")]
    KeyTooLarge(usize),
    #[error("value is {0} bytes, the limit is {MAX_VALUE_LEN}")]
    ValueTooLarge(usize),
    #[error("compute input is {0} bytes, the limit is {MAX_VALUE_LEN}")]
    InputTooLarge(usize),
    #[error("compute rounds must be at least 1")]
    ZeroRounds,
    #[error("compute rounds {0} is over the limit of {MAX_COMPUTE_ROUNDS}")]
    TooManyRounds(u32),
    #[error("unknown compute algorithm {0}")]
    UnknownAlgo(u8),
    /// A key/value pair larger than a shard's whole memory budget.
    #[error("item of {0} bytes can never fit in this shard's memory budget")]
    ItemTooLarge(usize),
    #[error("key not found")]
    NotFound,
    #[error("the compute queue of this core is full")]
    ComputeQueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl RequestError {
    /// The status a reply for this error carries.
    pub fn status(&self) -> Status {
        use RequestError::*;
        match self {
            EmptyFrame | Malformed(_) | UnknownOp(_) | MissingField(_) | EmptyKey | ZeroRounds
            | TooManyRounds(_) | UnknownAlgo(_) => Status::BadRequest,
            FrameTooLarge { .. }
            | KeyTooLarge(_)
            | ValueTooLarge(_)
            | InputTooLarge(_)
            | ItemTooLarge(_) => Status::TooLarge,
            NotFound => Status::NotFound,
            ComputeQueueFull => Status::Overloaded,
            ShuttingDown => Status::ShuttingDown,
            Internal(_) => Status::Internal,
        }
    }

    /// Whether the connection must close after the reply: the framing can no longer be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::EmptyFrame | RequestError::FrameTooLarge { .. }
        )
    }
}
