//! `wal-archive`: glue between the command line and the commands, and the mapping of outcomes to
//! exit codes, which PostgreSQL acts on (DESIGN §4).

mod args;
mod check;
mod client;
mod durable;
mod fetch;
mod push;
mod settings;
mod wal;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::settings::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wal-archive: {e}");
            return ExitCode::from(2);
        }
    };
    let json = settings.json;
    let client = match Client::new(settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wal-archive: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Push { cluster, path } => match push::push(&client, &cluster, &path) {
            Ok(r) => {
                if json {
                    print_json(&r);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wal-archive push: {}: {e}", path.display());
                // Always 1, never above 125: PostgreSQL's archiver treats >125 as fatal to
                // itself, while 1 means "keep the segment and retry".
                ExitCode::from(1)
            }
        },
        Command::Fetch {
            cluster,
            walname,
            dest,
            pgdata,
        } => {
            let standby = fetch::standby_mode(pgdata.as_deref());
            let window = client
                .settings
                .retry_for
                .unwrap_or_else(|| fetch::default_retry(standby));
            match fetch::fetch(&client, &cluster, &walname, &dest, window, !standby) {
                Ok(fetch::Outcome::Restored { size }) => {
                    if json {
                        print_json(&serde_json::json!({ "name": walname, "size": size }));
                    }
                    ExitCode::SUCCESS
                }
                Ok(fetch::Outcome::NotFound) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("wal-archive fetch: {walname}: {e}");
                    if standby {
                        ExitCode::from(1)
                    } else {
                        eprintln!(
                            "wal-archive fetch: stopping archive recovery (exit {}) rather than \
                             ending it at the wrong point; fix the archive and start PostgreSQL again",
                            fetch::EXIT_ABORT_RECOVERY
                        );
                        ExitCode::from(fetch::EXIT_ABORT_RECOVERY)
                    }
                }
            }
        }
        Command::Check { cluster, nagios } => check::run(&client, &cluster, json, nagios),
        Command::Wal { cluster } => match wal::report(&client, &cluster) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    wal::print_human(&r);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wal-archive wal: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("wal-archive: cannot encode JSON: {e}"),
    }
}
