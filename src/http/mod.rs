//! Sans-io HTTP/1.x: bytes in, a request view of offsets out; responses as
//! bytes appended to a caller's buffer. No I/O and no allocation per request:
//! the connection loop in `server` owns every buffer and reuses it.

pub mod body;
pub mod chunked;
pub mod date;
pub mod params;
pub mod request;
pub mod response;

pub use params::{DecodeError, Params};
pub use request::{parse_head, HeadError, Limits, Method, RequestHead, Span};
pub use response::Status;
