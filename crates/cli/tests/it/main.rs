//! Integration tests of the `eventfold` binary: the CLI's subcommands, outputs and exit codes,
//! durability under kill -9 and SIGTERM, the relay killed mid-publish, the flash-sale simulation,
//! and the hash chain, archive, corrections and snapshots driven through both the binary and the
//! library.

mod archive;
mod chain;
mod cli;
mod corrections;
mod durability;
mod relay_kill;
mod shutdown;
mod simulate;
mod snapshots;

/// A free loopback port for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
