//! What proves the log is whole: the hash-chain walk and signed anchors of its head ([`verify`]),
//! the cold archive whose events stay proven against the chain ([`archive`]), and the server's
//! own periodic walk ([`watch`]).

pub mod archive;
pub mod verify;
pub mod watch;
