//! `flick`: the platform (`flick up`) and its CLI in one binary.
//!
//! # Layout
//! - `cli`: the command line (clap), with examples in every `--help`;
//! - `config`: `flick up`'s settings, resolved once (flags > env > file > defaults);
//! - `server`: `flick up` — wires store, runtime, scheduler, platform and API;
//! - `client`: how the other commands reach a running flick (URL and key);
//! - `commands/`: one file per family of subcommands;
//! - `templates`: the functions `flick new` scaffolds and `--examples` deploys.

mod cli;
mod client;
mod commands;
mod config;
mod server;
mod templates;
mod timefmt;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
