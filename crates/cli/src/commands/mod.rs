//! The subcommands: `up` starts the platform, the rest talk to it over the
//! same `/v1` API any client uses.

mod activations;
mod dlq;
mod doctor;
mod functions;
mod invoke;
mod nodes;
mod top;
mod triggers;
mod usage;

pub use top::SortKey;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::client::Client;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Up(args) => {
            let config = crate::config::Config::load(&args, &g.data_dir)?;
            crate::server::up(config, args.examples).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New { name, runtime, dir } => functions::new(&name, &runtime, &dir),
        Command::Doctor => doctor::doctor().await,
        command => {
            let client = Client::connect(g).await?;
            match command {
                Command::Deploy { dir } => functions::deploy(&client, &dir).await,
                Command::Invoke(args) => invoke::invoke(&client, args).await,
                Command::List => functions::list(&client).await,
                Command::Show { name, env } => functions::show(&client, &name, env).await,
                Command::Revisions { name } => functions::revisions(&client, &name).await,
                Command::Rollback { name, revision } => functions::rollback(&client, &name, revision).await,
                Command::Delete { name } => functions::delete(&client, &name).await,
                Command::Activations { name, limit, cause, trigger, parent } => {
                    let filter = activations::Filter {
                        function: name.as_deref(),
                        cause: cause.as_deref(),
                        trigger: trigger.as_deref(),
                        parent: parent.as_deref(),
                    };
                    activations::list(&client, &filter, limit).await
                }
                Command::Nodes { json } => nodes::list(&client, json).await,
                Command::Triggers { name, json } => triggers::list(&client, name.as_deref(), json).await,
                Command::Activation { id, json, raw } => activations::show(&client, &id, json, raw).await,
                Command::Logs { name, follow, limit, raw } => {
                    activations::logs(g, &client, &name, follow, limit, raw).await
                }
                Command::Dlq(cmd) => dlq::run(&client, cmd).await,
                Command::Usage { name, since, json } => usage::show(&client, name.as_deref(), &since, json).await,
                Command::Top { once, window, sort, interval } => {
                    top::top(g, client, top::TopArgs { once, window, sort, interval }).await
                }
                Command::Up(_) | Command::New { .. } | Command::Doctor => unreachable!("handled above"),
            }
        }
    }
}
