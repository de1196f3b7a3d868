//! What proves the log is whole: the hash-chain walk and signed anchors of its head ([`verify`]),
//! and the cold archive whose events stay proven against the chain ([`archive`]).

pub mod archive;
pub mod verify;
