//! `flick`: the platform (`flick up`) and its CLI in one binary.
//!
//! # Layout
//! - `cli`: the command line (clap), with examples in every `--help`;
//! - `config`: `flick up`'s settings, resolved once (flags > env > file > defaults);
//! - `server`: `flick up` — wires store, runtime, scheduler, platform and API;
//! - `client`: how the other commands reach a running flick (URL, key, trust rules);
//! - `commands/`: one file per family of subcommands;
//! - `out`: printing — quiet on a closed stdout, function output escaped;
//! - `templates`: the functions `flick new` scaffolds and `--examples` deploys.

#[macro_use]
mod out;
mod cli;
mod client;
mod commands;
mod config;
mod server;
mod templates;

use std::io::Write;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // reqwest is built without a default TLS provider (the default,
    // aws-lc, is a long C build); ring serves https:// instead.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`| head -1`): nothing to report.
        Err(e) if e.chain().any(|c| c.is::<out::StdoutClosed>()) => std::process::ExitCode::from(out::CLOSED_EXIT),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
