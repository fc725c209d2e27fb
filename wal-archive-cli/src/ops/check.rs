//! `wal-archive check`: the server's checks of a cluster, one line each, OK or FAILED with the
//! fix. Exit 0 when all pass, 1 otherwise; with `--nagios`, a Nagios plugin line and its exit
//! codes (0 OK, 2 CRITICAL, 3 UNKNOWN when the server cannot be asked).

use std::process::ExitCode;

use pgwal::api::{CheckItem, CheckReport};

use crate::client::{status_failure, Client};

pub fn run(client: &Client, cluster: &str, json: bool, nagios: bool) -> ExitCode {
    let report = match fetch_report(client, cluster) {
        Ok(r) => r,
        Err(e) => {
            if nagios {
                println!("WAL-ARCHIVE UNKNOWN - {cluster}: {e}");
                return ExitCode::from(3);
            }
            // The first check is the server itself.
            let failed = CheckReport {
                cluster: cluster.to_string(),
                checks: vec![CheckItem {
                    name: "server".into(),
                    ok: false,
                    message: e,
                    hint: Some("check --url / WAL_ARCHIVE_URL, the token, and that wal-archive-server runs".into()),
                }],
            };
            print_report(&failed, json);
            return ExitCode::from(1);
        }
    };
    let all_ok = report.checks.iter().all(|c| c.ok);
    if nagios {
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
        if failed.is_empty() {
            println!(
                "WAL-ARCHIVE OK - {cluster}: {} checks passed",
                report.checks.len()
            );
            return ExitCode::SUCCESS;
        }
        let what: Vec<String> = failed
            .iter()
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect();
        println!("WAL-ARCHIVE CRITICAL - {cluster}: {}", what.join("; "));
        return ExitCode::from(2);
    }
    print_report(&report, json);
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn fetch_report(client: &Client, cluster: &str) -> Result<CheckReport, String> {
    let mut resp = client
        .get(&format!("/v1/clusters/{cluster}/check"), false)
        .map_err(|e| e.to_string())?;
    if resp.status().as_u16() != 200 {
        return Err(status_failure(resp).to_string());
    }
    resp.body_mut()
        .read_json()
        .map_err(|e| format!("unexpected answer from the server: {e}"))
}

fn print_report(report: &CheckReport, json: bool) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("wal-archive: cannot encode JSON: {e}"),
        }
        return;
    }
    println!("cluster {}", report.cluster);
    for c in &report.checks {
        if c.ok {
            println!("  {}: OK ({})", c.name, c.message);
        } else {
            match &c.hint {
                Some(h) => println!("  {}: FAILED ({}) — fix: {h}", c.name, c.message),
                None => println!("  {}: FAILED ({})", c.name, c.message),
            }
        }
    }
}
