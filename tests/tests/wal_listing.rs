//! `wal-archive wal` (DESIGN 4): timelines, contiguous ranges and gaps of the WAL archive.
//!
//! - `archived_segments_form_one_range`: after PostgreSQL archived a run of segments, one timeline
//!   with one contiguous range covering the archive listing, and no gap; the same with `--json`
//!   before or after the command name.
//! - `missing_segment_is_reported_as_a_gap`: segments N and N+2 pushed, N+1 not: the gap is N+1.
//! - `object_deleted_behind_the_servers_back_is_a_gap_after_restart`: N..N+2 pushed, N+1's object
//!   file deleted while the server is down; at start the server reconciles, and neither the
//!   listing nor `wal` claims N+1 any more.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use wal_archive_e2e::{
    archive_command, is_segment_name, segment_offset, Cli, Pg, PgOptions, Server, TestDir,
    WalFactory, DEADLINE, SEG_SIZE,
};

/// The timelines of a `wal --json` document.
fn timelines(doc: &Value) -> Result<Vec<Value>> {
    let list = doc
        .get("timelines")
        .or_else(|| doc.as_array().map(|_| doc))
        .and_then(Value::as_array)
        .with_context(|| format!("no \"timelines\" array in {doc}"))?;
    Ok(list.clone())
}

/// A `(first, last)` pair written as `["a", "b"]` or as an object with first/last (or start/end,
/// from/to) fields.
fn pair(v: &Value) -> Option<(String, String)> {
    if let Some([a, b]) = v.as_array().map(Vec::as_slice) {
        return Some((a.as_str()?.to_string(), b.as_str()?.to_string()));
    }
    for (a, b) in [("first", "last"), ("start", "end"), ("from", "to")] {
        if let (Some(x), Some(y)) = (
            v.get(a).and_then(Value::as_str),
            v.get(b).and_then(Value::as_str),
        ) {
            return Some((x.to_string(), y.to_string()));
        }
    }
    v.as_str().map(|s| (s.to_string(), s.to_string()))
}

fn pairs(timeline: &Value, key: &str) -> Result<Vec<(String, String)>> {
    timeline
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("timeline without \"{key}\": {timeline}"))?
        .iter()
        .map(|v| pair(v).with_context(|| format!("cannot read {key} entry {v}")))
        .collect()
}

fn wal_json(cli: &Cli, cluster: &str, json_first: bool) -> Result<Value> {
    let args: Vec<&str> = if json_first {
        vec!["--json", "wal", "--cluster", cluster]
    } else {
        vec!["wal", "--cluster", cluster, "--json"]
    };
    let out = cli.run(&args)?;
    ensure!(
        out.code == Some(0) || out.code == Some(1),
        "wal-archive {}: {}",
        args.join(" "),
        out.describe()
    );
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("wal --json printed no JSON: {}", out.describe()))
}

#[test]
fn archived_segments_form_one_range() -> Result<()> {
    let dir = TestDir::new("wal-range")?;
    let server = Server::start(&dir)?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    pg.set("archive_command", archive_command(&server, "main")?)?;
    pg.start()?;
    pg.psql("create table t (id int, payload text)")?;
    let mut last = String::new();
    for round in 0..6 {
        pg.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            round * 1000,
            round * 1000 + 999
        ))?;
        last = pg.switch_wal()?;
    }
    pg.wait_archived(&last, DEADLINE)?;
    let segments: Vec<String> = server
        .api()
        .wal_names("main", None)?
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect();
    let first = segments.first().context("nothing archived")?.clone();
    let newest = segments.last().context("nothing archived")?.clone();

    let cli = server.cli()?;
    for json_first in [true, false] {
        let doc = wal_json(&cli, "main", json_first)?;
        let tls = timelines(&doc)?;
        ensure!(tls.len() == 1, "expected one timeline: {doc}");
        let ranges = pairs(&tls[0], "ranges")?;
        ensure!(
            ranges == vec![(first.clone(), newest.clone())],
            "expected the single range {first}..{newest}: {doc}"
        );
        ensure!(pairs(&tls[0], "gaps")?.is_empty(), "unexpected gap: {doc}");
    }
    let human = cli.run_ok(["wal", "--cluster", "main"])?;
    ensure!(
        human.stdout.contains(&first) && human.stdout.contains(&newest),
        "the text output does not show the range {first}..{newest}: {}",
        human.describe()
    );
    Ok(())
}

/// `wal --json` reports exactly `missing` as the gap of timeline 1.
fn expect_gap(cli: &Cli, cluster: &str, missing: &str, around: (&str, &str)) -> Result<()> {
    let doc = wal_json(cli, cluster, false)?;
    let tls = timelines(&doc)?;
    ensure!(tls.len() == 1, "expected one timeline: {doc}");
    ensure!(
        pairs(&tls[0], "gaps")? == vec![(missing.to_string(), missing.to_string())],
        "expected the gap {missing}: {doc}"
    );
    ensure!(
        pairs(&tls[0], "ranges")?
            == vec![
                (around.0.to_string(), around.0.to_string()),
                (around.1.to_string(), around.1.to_string())
            ],
        "expected the ranges {} and {}: {doc}",
        around.0,
        around.1
    );
    let human = cli.run(["wal", "--cluster", cluster])?;
    ensure!(
        human.stdout.contains(missing) || human.stderr.contains(missing),
        "the text output does not name the gap {missing}: {}",
        human.describe()
    );
    Ok(())
}

#[test]
fn missing_segment_is_reported_as_a_gap() -> Result<()> {
    let dir = TestDir::new("wal-gap")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(3)?;
    ensure!(
        names[2] == segment_offset(&names[0], 2, SEG_SIZE)?,
        "not consecutive: {names:?}"
    );
    let cli = server.cli()?;
    for name in [&names[0], &names[2]] {
        cli.run_ok([
            "push",
            "--cluster",
            "gappy",
            &factory.path(name).to_string_lossy(),
        ])?;
    }
    expect_gap(&cli, "gappy", &names[1], (&names[0], &names[2]))?;

    // Filling it closes the gap.
    cli.run_ok([
        "push",
        "--cluster",
        "gappy",
        &factory.path(&names[1]).to_string_lossy(),
    ])?;
    let doc = wal_json(&cli, "gappy", false)?;
    let tls = timelines(&doc)?;
    ensure!(
        pairs(&tls[0], "gaps")?.is_empty(),
        "gap still reported: {doc}"
    );
    Ok(())
}

#[test]
fn object_deleted_behind_the_servers_back_is_a_gap_after_restart() -> Result<()> {
    let dir = TestDir::new("wal-reconcile")?;
    let mut server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(3)?;
    ensure!(
        names[2] == segment_offset(&names[0], 2, SEG_SIZE)?,
        "not consecutive: {names:?}"
    );
    let cli = server.cli()?;
    for name in &names {
        cli.run_ok([
            "push",
            "--cluster",
            "main",
            &factory.path(name).to_string_lossy(),
        ])?;
    }
    server.stop()?;
    let object = server.stored_object(&names[1])?.with_context(|| {
        format!(
            "no {}.zst under {}",
            names[1],
            server.storage_dir().display()
        )
    })?;
    std::fs::remove_file(&object)?;
    server.start_again()?;

    let api = server.api();
    let listing = api.wal_listing("main", None)?;
    let listed: Vec<String> = api.wal_names("main", None)?;
    let reported_missing = listing
        .get("missing")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some(names[1].as_str())));
    ensure!(
        !listed.contains(&names[1]) || reported_missing,
        "after reconciliation the listing still offers {} as present: {listing}",
        names[1]
    );
    let resp = api.get_wal("main", &names[1], None)?;
    ensure!(resp.status != 200, "GET of a deleted object answered 200");
    expect_gap(&cli, "main", &names[1], (&names[0], &names[2]))
}
