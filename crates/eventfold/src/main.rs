//! The eventfold binary (CLI and HTTP server); being built.

fn main() {}
