//! `wal-archive`: glue between the command line and the commands, and the mapping of outcomes to
//! exit codes, which PostgreSQL acts on (DESIGN §4).

mod args;
mod client;
mod durable;
mod helper;
mod ops;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::helper::{fetch, push, worker};
use crate::ops::{backup, check, restore, wal};
use crate::settings::Settings;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let _ = e.print();
            return unusable_exit(None);
        }
    };
    let settings = match Settings::resolve(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wal-archive: {e}");
            return unusable_exit(Some(&cli.command));
        }
    };
    let json = settings.json;
    let client = match Client::new(settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wal-archive: {e}");
            return unusable_exit(Some(&cli.command));
        }
    };
    match cli.command {
        Command::Push {
            cluster,
            test: true,
            ..
        } => match push::test(&client, &cluster) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    println!("{}", push::describe_test(&client, &r));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wal-archive push --test: {e}");
                ExitCode::from(1)
            }
        },
        Command::Push {
            cluster,
            path: Some(path),
            ..
        } => match push::push(&client, &cluster, &path) {
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
        Command::Push { path: None, .. } => {
            // clap requires the path without --test; kept for completeness of the match.
            eprintln!("wal-archive push: the path of a WAL file (PostgreSQL's %p) is required");
            ExitCode::from(1)
        }
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
        Command::FetchWorker { cluster } => worker::run(&client, &cluster),
        Command::Check { cluster, nagios } => check::run(&client, &cluster, json, nagios),
        Command::Retention { cluster, dry_run } => {
            match ops::jobs::retention(&client, &cluster, dry_run, json) {
                Ok(r) => {
                    if json {
                        print_json(&r);
                    } else {
                        ops::jobs::print_retention(&r);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("retention", &e),
            }
        }
        Command::Jobs { cluster } => match ops::jobs::jobs(&client, &cluster) {
            Ok(j) => {
                if json {
                    print_json(&j);
                } else {
                    ops::jobs::print_jobs(&j);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("jobs", &e),
        },
        Command::SwitchWal {
            cluster,
            archive,
            timeout,
        } => match ops::jobs::switch_wal(&client, &cluster, archive, timeout) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else if archive {
                    println!("switched: {} closed and archived", r.segment);
                } else {
                    println!("switched: {} closed", r.segment);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("switch-wal", &e),
        },
        Command::Status { cluster } => match ops::status::report(&client, cluster.as_deref()) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    ops::status::print_human(&r);
                }
                if ops::status::all_ok(&r) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("wal-archive status: {e}");
                ExitCode::from(1)
            }
        },
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
        Command::Backup {
            cluster,
            wait,
            checkpoint,
        } => match backup::backup(&client, &cluster, checkpoint, wait, json) {
            Ok(info) => {
                if json {
                    print_json(&info);
                } else if !wait {
                    println!("{}", info.id);
                } else if info.status == "done" {
                    backup::print_info(&info);
                }
                if info.status == "failed" {
                    eprintln!(
                        "wal-archive backup: backup {} failed: {}",
                        info.id,
                        info.reason.as_deref().unwrap_or("no reason given")
                    );
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("backup", &e),
        },
        Command::List { cluster } => match backup::list(&client, &cluster) {
            Ok(list) => {
                if json {
                    print_json(&list);
                } else {
                    backup::print_list(&list);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("list", &e),
        },
        Command::Show { cluster, backup } => match backup::info(&client, &cluster, &backup) {
            Ok(info) => {
                if json {
                    print_json(&info);
                } else {
                    backup::print_info(&info);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("show", &e),
        },
        Command::Restore(args) => match restore::restore(&client, &cli.global, &args, json) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    restore::print_human(&r);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("restore", &e),
        },
        Command::Verify { cluster, backup } => {
            match backup::verify(&client, &cluster, backup.as_deref(), json) {
                Ok(reports) => {
                    if json {
                        if backup.is_some() && reports.len() == 1 {
                            print_json(&reports[0]);
                        } else {
                            print_json(&reports);
                        }
                    } else {
                        for r in &reports {
                            backup::print_report(r);
                        }
                    }
                    if reports.iter().all(|r| r.ok) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail("verify", &e),
            }
        }
        Command::Drill(args) => match ops::drill::drill(&client, &args, json) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    ops::drill::print_report(&r);
                }
                if r.result == "ok" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail("drill", &e),
        },
        Command::Delete { cluster, backup } => match backup::delete(&client, &cluster, &backup) {
            Ok(info) => {
                if json {
                    print_json(&info);
                } else {
                    println!("deleted backup {} of cluster {}", info.id, info.cluster);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("delete", &e),
        },
        Command::Keep {
            cluster,
            backup,
            release,
        } => match backup::keep(&client, &cluster, &backup, !release) {
            Ok(info) => {
                if json {
                    print_json(&info);
                } else if info.keep {
                    println!("backup {} is kept: retention will not delete it", info.id);
                } else {
                    println!("backup {} is released: retention applies to it", info.id);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("keep", &e),
        },
    }
}

/// The exit code when the command cannot even start (bad arguments, an unreadable config or CA
/// file): what PostgreSQL must hear is "failed", never "no such file" (DESIGN §4). `push`
/// exits 1 (PostgreSQL keeps the segment and retries); `fetch` follows the rule for an
/// unreachable archive: 1 in standby mode, above 125 in archive recovery, so recovery stops
/// rather than ending at the wrong point; operator commands exit 2 (usage).
fn unusable_exit(command: Option<&Command>) -> ExitCode {
    let fetch_pgdata = match command {
        Some(Command::Fetch { pgdata, .. }) => Some(pgdata.clone()),
        Some(Command::Push { .. }) | Some(Command::FetchWorker { .. }) => return ExitCode::from(1),
        Some(_) => return ExitCode::from(2),
        // The arguments did not parse: read what can be read of them.
        None => fetch_in_args(std::env::args().skip(1)),
    };
    match fetch_pgdata {
        Some(pgdata) => {
            if fetch::standby_mode(pgdata.as_deref()) {
                ExitCode::from(1)
            } else {
                eprintln!(
                    "wal-archive fetch: stopping archive recovery (exit {}) rather than ending it \
                     at the wrong point; fix restore_command and start PostgreSQL again",
                    fetch::EXIT_ABORT_RECOVERY
                );
                ExitCode::from(fetch::EXIT_ABORT_RECOVERY)
            }
        }
        None if std::env::args().skip(1).any(|a| a == "push") => ExitCode::from(1),
        None => ExitCode::from(2),
    }
}

/// For arguments clap refused: `Some(--pgdata)` when they name the `fetch` command.
fn fetch_in_args(args: impl Iterator<Item = String>) -> Option<Option<std::path::PathBuf>> {
    let args: Vec<String> = args.collect();
    if !args.iter().any(|a| a == "fetch") {
        return None;
    }
    let pgdata = args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--pgdata=") {
            Some(std::path::PathBuf::from(v))
        } else if a == "--pgdata" {
            args.get(i + 1).map(std::path::PathBuf::from)
        } else {
            None
        }
    });
    Some(pgdata)
}

/// An operator command failed: the whole chain of causes, then exit 1.
fn fail(command: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("wal-archive {command}: {e:#}");
    ExitCode::from(1)
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("wal-archive: cannot encode JSON: {e}"),
    }
}
