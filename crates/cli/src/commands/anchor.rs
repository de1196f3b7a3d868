//! `eventfold anchor`: Ed25519 keys and signed anchors of the hash chain's head.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::context::Global;

/// Signed anchors of the hash chain.
#[derive(Debug, Subcommand)]
pub enum Anchor {
    /// Create an Ed25519 key pair: the secret key (hex seed, file mode 0600, never overwritten)
    /// and the public key (hex).
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        secret_key: PathBuf,
        /// Where to write the public key.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Verify the whole log, then sign its head (position and hash) with the secret key and
    /// write the anchor file (JSON). Nothing is signed when the chain is broken.
    Sign {
        /// The secret key file written by `anchor keygen`.
        #[arg(long)]
        secret_key: PathBuf,
        /// Where to write the anchor.
        #[arg(long, default_value = "eventfold-anchor.json")]
        out: PathBuf,
    },
}

impl Anchor {
    /// Writes a key pair, or verifies the log and writes a signed anchor of its head.
    ///
    /// # Errors
    /// A key file that exists already or cannot be read, a broken chain or an empty log (nothing
    /// is signed), file system or store failures.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let output = global.output();
        match self {
            Self::Keygen {
                secret_key,
                public_key,
            } => {
                let mut seed = [0u8; 32];
                getrandom::getrandom(&mut seed).context("reading the OS random source")?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public = hex::encode(key.verifying_key().as_bytes());
                write_secret(&secret_key, &hex::encode(seed))?;
                std::fs::write(&public_key, format!("{public}\n"))
                    .with_context(|| format!("writing {}", public_key.display()))?;
                output.print(
                    &serde_json::json!({ "public_key": public, "secret_key_file": secret_key, "public_key_file": public_key }),
                    || {
                        format!(
                            "public key {public} (secret key in {})",
                            secret_key.display()
                        )
                    },
                )
            }
            Self::Sign { secret_key, out } => {
                let text = std::fs::read_to_string(&secret_key)
                    .with_context(|| format!("reading {}", secret_key.display()))?;
                let key = eventfold_core::chain::signing_key(&text)
                    .with_context(|| format!("secret key file {}", secret_key.display()))?;
                let backend = global.open().await?;
                let bar = output.progress_bar(backend.events.head_position().await?);
                let (anchor, report) = eventfold_app::integrity::verify::sign_anchor(
                    backend.events.clone(),
                    &key,
                    chrono::Utc::now(),
                    &|p| bar.set_position(p),
                )
                .await?;
                bar.finish_and_clear();
                std::fs::write(&out, serde_json::to_string_pretty(&anchor)? + "\n")
                    .with_context(|| format!("writing {}", out.display()))?;
                output.print(&anchor, || {
                    format!(
                        "signed head position {} hash {} ({} events verified first); anchor written to {}",
                        anchor.position,
                        anchor.hash,
                        report.events_checked,
                        out.display()
                    )
                })
            }
        }
    }
}

/// Writes a new secret file readable by its owner only; an existing file is never overwritten.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))
}
