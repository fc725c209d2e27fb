//! The HTTP API in-process, on real local storage, with the fault-injecting store where a
//! failure is needed. Real PostgreSQL is exercised by the end-to-end tests in `tests/`; here the
//! segments are synthetic (`pgwal::synth`) so that every edge can be built on purpose.
//!
//! - `stores_then_idempotent_then_conflict`: 201, 200 for the same bytes, 409 for other bytes,
//!   and the stored copy is untouched.
//! - `refuses_what_is_not_wal_of_this_cluster`: wrong system, wrong name, truncated, empty,
//!   garbage, checksum header mismatch; nothing is stored.
//! - `out_of_space_is_507_and_nothing_is_acknowledged` / `io_error_is_503`.
//! - `concurrent_uploads_of_one_name`: exactly one creates; identical ones get 200, others 409.
//! - `client_compressed_upload`: stored as sent, still verified.
//! - `corrupt_object_is_never_served`.
//! - `history_and_backup_files`: form checks.
//! - `reconcile_*`: start-up reconciliation of storage with the catalog; a storage error while
//!   checking an uncataloged object stops start-up and never quarantines it.
//! - `client_zstd_must_be_whole_frames`: a zstd body cut inside its last frame, or with bytes
//!   after it, is refused (422) and nothing is stored; frames that ask for a larger window than
//!   8 MiB, and bodies longer than any compressed form of the file, are refused.
//! - `already_stored_proves_the_object_and_repairs_it`: 200 only once the stored object is there
//!   with the cataloged checksum and size; a missing or damaged one is stored again from the
//!   same bytes (the damaged copy moved to quarantine); a storage error is 503, never 200.
//! - `uploads_beyond_the_limit_are_told_to_retry`: with `max_concurrent_uploads = 1`, a second
//!   upload while one is in progress gets 503 with `Retry-After`, and succeeds afterwards.
//! - `metrics_can_require_a_token`: 401 without one, 200 with any valid token.
//! - `the_status_page_is_authorised_like_the_read_api`: `/` and `/v1/status` need a token that
//!   may read, and show only the clusters of its list.
//! - `open_mode_answers_only_loopback_names`: without tokens, a request whose `Host` is not a
//!   loopback name (a DNS-rebinding web page) gets 421 and nothing is done; with tokens the
//!   name does not matter.
//! - `second_partial_with_the_same_wal_is_accepted`: two `.partial` files of one name that agree
//!   up to the switch point (from the timeline history, else up to where one is zero-filled)
//!   are the same WAL: 200; one that differs before it is 409.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pgwal::api::{ErrorBody, WalListing};
use pgwal::synth::SyntheticSegment;
use pgwal::SegmentSize;
use tower::ServiceExt;
use wal_archive_server::config::{Config, Overrides};
use wal_archive_server::http::auth::Authorizer;
use wal_archive_server::storage::{
    BlobStore, EncryptedBlobs, FaultPlan, FaultyBlobs, Keyring, ObjectStoreBlobs,
};
use wal_archive_server::{http::router, state::AppState};

struct Env {
    dir: tempfile::TempDir,
    config: Config,
    plan: Arc<FaultPlan>,
    state: Arc<AppState>,
    /// One router for the whole test, as the server has (its state bounds uploads in progress).
    router: axum::Router,
    _lock: wal_archive_server::Guard,
}

async fn env_in(dir: tempfile::TempDir) -> Env {
    match env_with_plan(dir, Arc::new(FaultPlan::default())).await {
        Ok(env) => env,
        Err((e, _)) => panic!("open: {e:#}"),
    }
}

/// A server on `dir` whose storage fails as `plan` says from the start (reconciliation
/// included); on error, start-up's error and the directory back.
async fn env_with_plan(
    dir: tempfile::TempDir,
    plan: Arc<FaultPlan>,
) -> Result<Env, (anyhow::Error, tempfile::TempDir)> {
    env_with(dir, plan, "").await
}

/// A server with configuration `text`.
async fn env_with(
    dir: tempfile::TempDir,
    plan: Arc<FaultPlan>,
    text: &str,
) -> Result<Env, (anyhow::Error, tempfile::TempDir)> {
    env_over(dir, plan, text, None).await
}

/// A server whose objects are sealed with `key` (encryption at rest).
async fn env_sealed(key: [u8; 32]) -> Env {
    let keys = Arc::new(Keyring::from_keys(&key, &[]).expect("keys"));
    let dir = tempfile::tempdir().expect("tempdir");
    match env_over(dir, Arc::new(FaultPlan::default()), "", Some(keys)).await {
        Ok(env) => env,
        Err((e, _)) => panic!("open: {e:#}"),
    }
}

async fn env_over(
    dir: tempfile::TempDir,
    plan: Arc<FaultPlan>,
    text: &str,
    sealed: Option<Arc<Keyring>>,
) -> Result<Env, (anyhow::Error, tempfile::TempDir)> {
    let config = Config::from_toml(
        text,
        &Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .expect("config");
    let local = ObjectStoreBlobs::local(&config.storage_dir()).expect("storage");
    let blobs: Arc<dyn BlobStore> = match sealed {
        Some(keys) => Arc::new(FaultyBlobs {
            inner: EncryptedBlobs::new(local, keys),
            plan: plan.clone(),
        }),
        None => Arc::new(FaultyBlobs {
            inner: local,
            plan: plan.clone(),
        }),
    };
    let (archive, lock) = match wal_archive_server::open(&config, Some(blobs)).await {
        Ok(v) => v,
        Err(e) => return Err((e, dir)),
    };
    let state = Arc::new(AppState {
        archive,
        config: Arc::new(config.clone()),
        receivers: Default::default(),
        backups: Default::default(),
        jobs: Default::default(),
        drills: Default::default(),
    });
    let router = router(state.clone(), Authorizer::new(&config.tokens));
    Ok(Env {
        dir,
        config,
        plan,
        state,
        router,
        _lock: lock,
    })
}

async fn env() -> Env {
    env_in(tempfile::tempdir().expect("tempdir")).await
}

fn seg(segno: u64) -> SyntheticSegment {
    SyntheticSegment {
        segno,
        segment_size: SegmentSize::new(1 << 20).expect("size"),
        written_pages: Some(40),
        ..Default::default()
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn error(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).expect("error body")
    }
}

async fn call(env: &Env, req: Request<Body>) -> Reply {
    let resp = env.router.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn put(env: &Env, name: &str, body: Vec<u8>) -> Reply {
    let req = Request::put(format!("/v1/clusters/main/wal/{name}"))
        .body(Body::from(body))
        .expect("request");
    call(env, req).await
}

async fn get(env: &Env, name: &str) -> Reply {
    let req = Request::get(format!("/v1/clusters/main/wal/{name}"))
        .body(Body::empty())
        .expect("request");
    call(env, req).await
}

async fn listing(env: &Env) -> WalListing {
    let req = Request::get("/v1/clusters/main/wal")
        .body(Body::empty())
        .expect("request");
    let r = call(env, req).await;
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).expect("listing")
}

fn stored_files(env: &Env) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![env.config.storage_dir().join("wal")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_then_idempotent_then_conflict() {
    let env = env().await;
    let s = seg(5);
    let name = s.name(1).to_string();
    let bytes = s.build();
    assert_eq!(
        put(&env, &name, bytes.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(put(&env, &name, bytes.clone()).await.status, StatusCode::OK);

    // Valid WAL for this name, other bytes (a record byte differs): a conflict.
    let mut other = bytes.clone();
    other[100] ^= 0xFF;
    let r = put(&env, &name, other).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error().error, "conflict");

    let r = get(&env, &name).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, bytes, "the stored copy is untouched");
    let sha = r.headers.get("x-content-sha256").expect("checksum header");
    assert_eq!(
        sha.to_str().expect("ascii"),
        wal_archive_server::wal::object_format::sha256_hex(&bytes)
    );
    // The XXH3-128 recorded at ingest travels with the file.
    let tag = r.headers.get("x-content-xxh3").expect("xxh3 header");
    assert_eq!(
        tag.to_str().expect("ascii"),
        pgwal::checksum::xxh3_hex(&bytes)
    );
    assert_eq!(stored_files(&env).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_is_not_wal_of_this_cluster() {
    let env = env().await;
    let first = seg(5);
    assert_eq!(
        put(&env, &first.name(1).to_string(), first.build())
            .await
            .status,
        StatusCode::CREATED
    );
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "another system",
            seg(6).name(1).to_string(),
            SyntheticSegment {
                system_identifier: 42,
                ..seg(6)
            }
            .build(),
            "wrong_system",
        ),
        (
            "content of another segment",
            seg(7).name(1).to_string(),
            seg(8).build(),
            "name_mismatch",
        ),
        (
            "truncated",
            seg(9).name(1).to_string(),
            seg(9).build()[..300_000].to_vec(),
            "truncated",
        ),
        (
            "empty",
            seg(10).name(1).to_string(),
            Vec::new(),
            "truncated",
        ),
        (
            "not WAL",
            seg(11).name(1).to_string(),
            (0..1u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not_wal",
        ),
        (
            "other segment size",
            seg(12).name(1).to_string(),
            SyntheticSegment {
                segment_size: SegmentSize::new(2 << 20).expect("size"),
                ..seg(12)
            }
            .build(),
            "wrong_segment_size",
        ),
    ];
    for (what, name, body, kind) in cases {
        let r = put(&env, &name, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        assert_eq!(r.error().error, kind, "{what}: {}", r.error().message);
        assert_eq!(
            get(&env, &name).await.status,
            StatusCode::NOT_FOUND,
            "{what}"
        );
    }
    // A checksum header that does not match the body.
    let s = seg(13);
    let req = Request::put(format!("/v1/clusters/main/wal/{}", s.name(1)))
        .header("x-content-sha256", "0".repeat(64))
        .body(Body::from(s.build()))
        .expect("request");
    let r = call(&env, req).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error().error, "checksum_mismatch");
    // The same for an XXH3-128 that does not match, or is malformed.
    let req = Request::put(format!("/v1/clusters/main/wal/{}", s.name(1)))
        .header("x-content-xxh3", "0".repeat(32))
        .body(Body::from(s.build()))
        .expect("request");
    let r = call(&env, req).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error().error, "checksum_mismatch");
    let req = Request::put(format!("/v1/clusters/main/wal/{}", s.name(1)))
        .header("x-content-xxh3", "xyz")
        .body(Body::from(s.build()))
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::BAD_REQUEST);
    // Bad names never reach storage.
    for bad in [
        "..",
        "00000001000000000000000",
        "000000010000000000000zzz",
        "000000010000000000000005a",
        "00000001000000000000000a",
    ] {
        let r = put(&env, bad, seg(5).build()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let req = Request::put("/v1/clusters/main/wal/a%2F..%2Fx")
        .body(Body::from("x"))
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::BAD_REQUEST);
    let req = Request::put(format!("/v1/clusters/bad%2Fname/wal/{}", seg(5).name(1)))
        .body(Body::from("x"))
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(stored_files(&env).len(), 1);
    assert_eq!(listing(&env).await.files.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_space_is_507_and_nothing_is_acknowledged() {
    let env = env().await;
    let s = seg(5);
    let name = s.name(1).to_string();
    env.plan.out_of_space.store(true, Ordering::SeqCst);
    let r = put(&env, &name, s.build()).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(r.error().error, "out_of_space");
    assert_eq!(get(&env, &name).await.status, StatusCode::NOT_FOUND);
    assert!(stored_files(&env).is_empty());
    // Space is back: the retry PostgreSQL makes succeeds.
    env.plan.out_of_space.store(false, Ordering::SeqCst);
    assert_eq!(
        put(&env, &name, s.build()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, &name).await.body, s.build());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_error_is_503() {
    let env = env().await;
    let s = seg(5);
    env.plan.io_error.store(true, Ordering::SeqCst);
    let r = put(&env, &s.name(1).to_string(), s.build()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(stored_files(&env).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_name() {
    let env = Arc::new(env().await);
    let s = seg(5);
    let name = s.name(1).to_string();
    let bytes = s.build();
    let mut other = bytes.clone();
    other[200] ^= 1;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let env = env.clone();
        let name = name.clone();
        let body = if i % 2 == 0 {
            bytes.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            (i, put(&env, &name, body).await.status)
        }));
    }
    let mut created = 0;
    let mut winner_even = None;
    let mut statuses = Vec::new();
    for t in tasks {
        let (i, st) = t.await.expect("task");
        if st == StatusCode::CREATED {
            created += 1;
            winner_even = Some(i % 2 == 0);
        }
        statuses.push((i, st));
    }
    assert_eq!(created, 1, "{statuses:?}");
    let winner_even = winner_even.expect("a winner");
    for (i, st) in statuses {
        if st == StatusCode::CREATED {
            continue;
        }
        let same = (i % 2 == 0) == winner_even;
        assert_eq!(
            st,
            if same {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            },
            "{i}"
        );
    }
    let expected = if winner_even { bytes } else { other };
    assert_eq!(get(&env, &name).await.body, expected);
    assert!(std::fs::read_dir(env.config.storage_dir().join("staging"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_compressed_upload() {
    let env = env().await;
    let s = seg(5);
    let name = s.name(1).to_string();
    let plain = s.build();
    let compressed = zstd::encode_all(&plain[..], 1).expect("compress");
    let req = Request::put(format!("/v1/clusters/main/wal/{name}"))
        .header("content-encoding", "zstd")
        .header(
            "x-content-sha256",
            wal_archive_server::wal::object_format::sha256_hex(&plain),
        )
        .body(Body::from(compressed.clone()))
        .expect("request");
    let r = call(&env, req).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let files = stored_files(&env);
    let stored = std::fs::read(&files[0]).expect("read object");
    assert!(
        stored.starts_with(&compressed),
        "stored as sent, trailer appended"
    );
    assert_eq!(get(&env, &name).await.body, plain);
    // zstd that decodes to something invalid is refused.
    let bad = zstd::encode_all(&seg(6).build()[..500_000], 1).expect("compress");
    let req = Request::put(format!("/v1/clusters/main/wal/{}", seg(6).name(1)))
        .header("content-encoding", "zstd")
        .body(Body::from(bad))
        .expect("request");
    assert_eq!(
        call(&env, req).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let req = Request::put(format!("/v1/clusters/main/wal/{}", seg(6).name(1)))
        .header("content-encoding", "zstd")
        .body(Body::from(vec![1u8, 2, 3, 4, 5]))
        .expect("request");
    assert_eq!(
        call(&env, req).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_object_is_never_served() {
    let env = env().await;
    let s = seg(5);
    let name = s.name(1).to_string();
    assert_eq!(
        put(&env, &name, s.build()).await.status,
        StatusCode::CREATED
    );
    let file = stored_files(&env).remove(0);
    let mut data = std::fs::read(&file).expect("read");
    let mid = data.len() / 3;
    data[mid] ^= 0x40;
    std::fs::write(&file, data).expect("write");
    for accept in ["zstd", "identity"] {
        let req = Request::get(format!("/v1/clusters/main/wal/{name}"))
            .header("accept-encoding", accept)
            .body(Body::empty())
            .expect("request");
        let r = call(&env, req).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{accept}");
        assert_eq!(r.error().error, "corrupt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_backup_files() {
    let env = env().await;
    assert_eq!(
        put(&env, &seg(2).name(1).to_string(), seg(2).build())
            .await
            .status,
        StatusCode::CREATED
    );
    let history = "1\t0/2000100\tno recovery target specified\n";
    assert_eq!(
        put(&env, "00000002.history", history.into()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, "00000002.history").await.body, history.as_bytes());
    let r = put(&env, "00000003.history", "garbage here\n".into()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error().error, "bad_history");
    // Parent timeline not below the file's own.
    let r = put(&env, "00000003.history", "3\t0/3000000\tx\n".into()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let backup = "START WAL LOCATION: 0/200028 (file 000000010000000000000002)\n\
                  STOP WAL LOCATION: 0/200100 (file 000000010000000000000002)\n\
                  CHECKPOINT LOCATION: 0/200060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                  START TIME: 2026-11-21 10:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n\
                  STOP TIME: 2026-11-21 10:00:01 UTC\nSTOP TIMELINE: 1\n";
    assert_eq!(
        put(
            &env,
            "000000010000000000000002.00000028.backup",
            backup.into()
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = put(
        &env,
        "000000010000000000000003.00000028.backup",
        backup.into(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name does not match content"
    );
    let r = put(
        &env,
        "000000010000000000000002.00000028.backup",
        "x".repeat(2 << 20).into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_indexes_quarantines_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (orphan_name, missing_name, storage, db) = {
        let env = env_in(dir).await;
        let a = seg(5);
        let b = seg(6);
        let c = seg(7);
        for s in [&a, &b, &c] {
            assert_eq!(
                put(&env, &s.name(1).to_string(), s.build()).await.status,
                StatusCode::CREATED
            );
        }
        let storage = env.config.storage_dir();
        let db = env.config.catalog_path();
        let Env {
            dir, state, _lock, ..
        } = env;
        drop(state);
        drop(_lock);
        (
            a.name(1).to_string(),
            b.name(1).to_string(),
            (dir, storage),
            db,
        )
    };
    let (dir, storage) = storage;
    // A crash between publish and catalog insert: the object has no row.
    let conn = rusqlite::Connection::open(&db).expect("db");
    conn.execute("DELETE FROM wal_files WHERE name = ?1", [&orphan_name])
        .expect("delete row");
    drop(conn);
    // Someone deleted an object.
    let key_dir = storage.join("wal/main/0000000100000000");
    std::fs::remove_file(key_dir.join(format!("{missing_name}.zst"))).expect("rm");
    // Garbage under a WAL key, and debris of interrupted uploads.
    let junk = seg(9).name(1).to_string();
    std::fs::write(key_dir.join(format!("{junk}.zst")), b"not an object").expect("write");
    std::fs::write(key_dir.join("000000010000000000000010.zst#1"), b"debris").expect("write");
    std::fs::create_dir_all(storage.join("staging")).expect("mkdir");
    std::fs::write(storage.join("staging/123-4-5"), b"debris").expect("write");

    let env = env_in(dir).await;
    let l = listing(&env).await;
    let names: Vec<_> = l.files.iter().map(|f| f.name.clone()).collect();
    assert!(names.contains(&orphan_name), "orphan re-indexed: {names:?}");
    assert!(!names.contains(&junk));
    assert_eq!(l.missing, vec![missing_name.clone()]);
    assert_eq!(get(&env, &orphan_name).await.body, seg(5).build());
    let r = get(&env, &missing_name).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error().error, "missing_object");
    assert!(storage
        .join(format!("quarantine/wal/main/0000000100000000/{junk}.zst"))
        .exists());
    assert!(!key_dir.join("000000010000000000000010.zst#1").exists());
    assert!(!storage.join("staging/123-4-5").exists());
    // A missing object is repaired by pushing the same bytes again, and only those.
    let mut other = seg(6).build();
    other[300] ^= 1;
    assert_eq!(
        put(&env, &missing_name, other).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        put(&env, &missing_name, seg(6).build()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, &missing_name).await.body, seg(6).build());
    assert!(listing(&env).await.missing.is_empty());
    assert_eq!(env.dir.path(), env.config.data_dir.as_path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_one_data_dir_is_refused() {
    let env = env().await;
    let err = match wal_archive_server::open(&env.config, None).await {
        Ok(_) => panic!("a second server opened a locked data directory"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("already using"), "{err}");
}

async fn put_to(env: &Env, cluster: &str, name: &str, body: Vec<u8>) -> Reply {
    let req = Request::put(format!("/v1/clusters/{cluster}/wal/{name}"))
        .body(Body::from(body))
        .expect("request");
    call(env, req).await
}

async fn scrape(env: &Env) -> prometheus_parse::Scrape {
    let r = call(
        env,
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.body).expect("utf-8");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_work_done() {
    let env = env().await;
    let cluster = "metrics-test";
    let before = scrape(&env).await;
    let pushed = |s: &prometheus_parse::Scrape, outcome: &str| {
        sample(
            s,
            "wal_archive_push_total",
            &[("cluster", cluster), ("outcome", outcome)],
        )
    };
    let (s5, s6) = (seg(5), seg(6));
    assert_eq!(
        put_to(&env, cluster, &s5.name(1).to_string(), s5.build())
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        put_to(&env, cluster, &s6.name(1).to_string(), s6.build())
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        put_to(&env, cluster, &s6.name(1).to_string(), s6.build())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        put_to(&env, cluster, &seg(7).name(1).to_string(), seg(8).build())
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let req = Request::get(format!("/v1/clusters/{cluster}/wal/{}", s5.name(1)))
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::OK);
    let after = scrape(&env).await;
    assert_eq!(pushed(&after, "stored") - pushed(&before, "stored"), 2.0);
    assert_eq!(
        pushed(&after, "already_stored") - pushed(&before, "already_stored"),
        1.0
    );
    assert_eq!(
        pushed(&after, "name_mismatch") - pushed(&before, "name_mismatch"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "wal_archive_fetch_total",
            &[("cluster", cluster), ("outcome", "served")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "wal_archive_push_bytes_total",
            &[("cluster", cluster)]
        ),
        3.0 * (1 << 20) as f64
    );
    assert_eq!(
        sample(&after, "wal_archive_wal_files", &[("cluster", cluster)]),
        2.0
    );
    assert!(sample(&after, "wal_archive_storage_bytes", &[("cluster", cluster)]) > 0.0);
    assert_eq!(
        sample(
            &after,
            "wal_archive_last_archived_info",
            &[("cluster", cluster), ("wal", &s6.name(1).to_string())]
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "wal_archive_last_archived_timestamp_seconds",
            &[("cluster", cluster)]
        ) > 1.7e9
    );
    assert!(after
        .samples
        .iter()
        .any(|x| x.metric.starts_with("wal_archive_push_duration_seconds")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers() {
    let env = env().await;
    let r = call(
        &env,
        Request::get("/healthz")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// `zstd --check`: frames with a content checksum, as the `zstd` tool writes by default.
fn zstd_with_checksum(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.include_checksum(true).expect("checksum flag");
    std::io::Write::write_all(&mut enc, data).expect("compress");
    enc.finish().expect("finish")
}

async fn put_zstd(env: &Env, name: &str, body: Vec<u8>) -> Reply {
    let req = Request::put(format!("/v1/clusters/main/wal/{name}"))
        .header("content-encoding", "zstd")
        .body(Body::from(body))
        .expect("request");
    call(env, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_zstd_must_be_whole_frames() {
    let env = env().await;
    let s = seg(21);
    let name = s.name(1).to_string();
    let plain = s.build();
    let whole = zstd_with_checksum(&plain);
    // Bound to its system and segment size, the cluster's bodies have a limit of their own.
    let first = seg(20);
    assert_eq!(
        put(&env, &first.name(1).to_string(), first.build())
            .await
            .status,
        StatusCode::CREATED
    );
    let before = stored_files(&env).len();
    // Cut inside the last frame (its checksum) or followed by bytes that are not a frame:
    // every byte of the WAL decodes, but what would be stored does not end on a frame.
    let cut = whole[..whole.len() - 4].to_vec();
    let mut trailing = whole.clone();
    trailing.extend_from_slice(b"\x28\xb5\x2f");
    let mut garbage = whole.clone();
    garbage.extend_from_slice(b"not a zstd frame at all");
    for (what, body) in [("cut", cut), ("trailing", trailing), ("garbage", garbage)] {
        let r = put_zstd(&env, &name, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        assert_eq!(r.error().error, "bad_encoding", "{what}");
        assert_eq!(
            get(&env, &name).await.status,
            StatusCode::NOT_FOUND,
            "{what}"
        );
        assert_eq!(stored_files(&env).len(), before, "{what}: nothing stored");
    }
    // A window above the upload limit (here 128 MiB) is refused before it is allocated.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("encoder");
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
        .expect("window");
    std::io::Write::write_all(&mut enc, &plain).expect("compress");
    let wide = enc.finish().expect("finish");
    let r = put_zstd(&env, &name, wide).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error().error, "bad_encoding");
    // Skippable frames decode to nothing but count against the body's limit.
    let mut padded = Vec::new();
    let filler = vec![0u8; 1 << 20];
    for _ in 0..3 {
        padded.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        padded.extend_from_slice(&(filler.len() as u32).to_le_bytes());
        padded.extend_from_slice(&filler);
    }
    padded.extend_from_slice(&whole);
    let r = put_zstd(&env, &name, padded).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error().error, "too_long");
    assert_eq!(stored_files(&env).len(), before);
    // The whole stream is stored, and served back byte for byte.
    assert_eq!(
        put_zstd(&env, &name, whole).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, &name).await.body, plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_stored_proves_the_object_and_repairs_it() {
    proves_and_repairs(env().await).await;
}

/// The same with encryption at rest: a sealed object whose bytes were damaged or cut fails
/// authentication, and is moved to quarantine as stored and replaced all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_object_is_proven_and_repaired_too() {
    let env = env_sealed(std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5c)).await;
    proves_and_repairs(env).await;
}

async fn proves_and_repairs(env: Env) {
    let s = seg(22);
    let name = s.name(1).to_string();
    let bytes = s.build();
    assert_eq!(
        put(&env, &name, bytes.clone()).await.status,
        StatusCode::CREATED
    );
    let object = stored_files(&env)
        .into_iter()
        .find(|p| p.ends_with(format!("{name}.zst")))
        .expect("object");
    assert_eq!(put(&env, &name, bytes.clone()).await.status, StatusCode::OK);

    // Removed behind the server's back: the same bytes store it again.
    std::fs::remove_file(&object).expect("rm");
    assert_eq!(
        put(&env, &name, bytes.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, &name).await.body, bytes);

    // Damaged (its trailer rotted): other bytes are still a conflict, the same bytes
    // replace it after it is moved to quarantine.
    let mut stored = std::fs::read(&object).expect("read");
    let n = stored.len();
    stored[n - 20] ^= 0xFF;
    std::fs::write(&object, &stored).expect("damage");
    let mut other = bytes.clone();
    other[5000] ^= 1;
    assert_eq!(put(&env, &name, other).await.status, StatusCode::CONFLICT);
    let r = put(&env, &name, bytes.clone()).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(get(&env, &name).await.body, bytes);
    let quarantined = env.config.storage_dir().join("quarantine").join(
        object
            .strip_prefix(env.config.storage_dir())
            .expect("under storage"),
    );
    assert_eq!(
        std::fs::read(&quarantined).expect("quarantined copy"),
        stored
    );

    // Truncated: the same.
    let len = std::fs::metadata(&object).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&object)
        .expect("open");
    f.set_len(len - 100).expect("truncate");
    drop(f);
    assert_eq!(
        put(&env, &name, bytes.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(&env, &name).await.body, bytes);

    // Storage unreadable while checking: not provable, so not 200 (the client retries).
    env.plan.read_error.store(true, Ordering::SeqCst);
    let r = put(&env, &name, bytes.clone()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    env.plan.read_error.store(false, Ordering::SeqCst);
    assert_eq!(put(&env, &name, bytes).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_retries_transient_errors_and_never_quarantines_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = seg(23);
    let name = s.name(1).to_string();
    let (dir, db, storage) = {
        let env = env_in(dir).await;
        assert_eq!(
            put(&env, &name, s.build()).await.status,
            StatusCode::CREATED
        );
        let (db, storage) = (env.config.catalog_path(), env.config.storage_dir());
        let Env { dir, .. } = env;
        (dir, db, storage)
    };
    // The row is lost (a crash between publish and catalog insert): start-up must re-index.
    let conn = rusqlite::Connection::open(&db).expect("db");
    conn.execute("DELETE FROM wal_files", [])
        .expect("delete rows");
    drop(conn);
    let plan = Arc::new(FaultPlan::default());
    *plan.read_error_prefix.lock().expect("lock") = "wal/".into();
    plan.read_error.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let (err, dir) = match env_with_plan(dir, plan).await {
        Ok(_) => panic!("start-up must stop while storage cannot be read"),
        Err((e, dir)) => (format!("{e:#}"), dir),
    };
    assert!(err.contains("start-up stopped"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(!storage.join("quarantine").exists(), "nothing quarantined");
    // Storage back: the object is indexed and served.
    let env = env_in(dir).await;
    assert_eq!(get(&env, &name).await.body, s.build());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_partial_with_the_same_wal_is_accepted() {
    let env = env().await;
    let size = SegmentSize::new(1 << 20).expect("size");
    let s = seg(24);
    let partial = match s.name(1) {
        pgwal::name::WalFileName::Segment { tli, log, seg } => {
            pgwal::name::WalFileName::Partial { tli, log, seg }.to_string()
        }
        other => panic!("{other}"),
    };
    // The first 40 pages hold WAL; the receiver's copy is zero after them.
    let zeroed = s.build();
    let end = 40 * 8192;
    let mut recycled = zeroed.clone();
    for (i, b) in recycled[end..].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    // A segment of the cluster first, so it is bound to its segment size.
    assert_eq!(
        put(&env, &seg(23).name(1).to_string(), seg(23).build())
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&env, &partial, zeroed.clone()).await.status,
        StatusCode::CREATED
    );
    // PostgreSQL's copy, other bytes after the point where the receiver's is zero: the same WAL.
    assert_eq!(
        put(&env, &partial, recycled.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&env, &partial).await.body,
        zeroed,
        "the first copy is kept"
    );
    // Differing inside the WAL: a conflict, and nothing left over.
    let mut foreign = zeroed.clone();
    foreign[end / 2] ^= 0x55;
    assert_eq!(
        put(&env, &partial, foreign.clone()).await.status,
        StatusCode::CONFLICT
    );
    // With the history naming the switch point inside the written pages, bytes after it may
    // differ even where the stored copy is not zero.
    let switch = end as u64 - 3000;
    let start = size.segment_start(24).0 + switch;
    let history = format!(
        "1\t{:X}/{:X}\tno recovery target specified\n",
        start >> 32,
        start & 0xFFFF_FFFF
    );
    assert_eq!(
        put(&env, "00000002.history", history.into_bytes())
            .await
            .status,
        StatusCode::CREATED
    );
    let mut after_switch = zeroed.clone();
    after_switch[switch as usize + 10] ^= 0x55;
    assert_eq!(
        put(&env, &partial, after_switch).await.status,
        StatusCode::OK
    );
    assert_eq!(
        put(&env, &partial, foreign).await.status,
        StatusCode::CONFLICT
    );
    assert!(
        !env.config.storage_dir().join("scratch").exists()
            || std::fs::read_dir(env.config.storage_dir().join("scratch/main"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_limit_are_told_to_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = match env_with(
        dir,
        Arc::new(FaultPlan::default()),
        "max_concurrent_uploads = 1",
    )
    .await
    {
        Ok(env) => env,
        Err((e, _)) => panic!("{e:#}"),
    };
    let (a, b) = (seg(30), seg(31));
    // An upload that has sent half its body and waits.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = Body::from_stream(tokio_stream_from(rx));
    let first = a.build();
    let third = first.len() / 3;
    let parts: Vec<bytes::Bytes> = first
        .chunks(third + 1)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    tx.send(Ok(parts[0].clone())).await.expect("send");
    let req = Request::put(format!("/v1/clusters/main/wal/{}", a.name(1)))
        .body(body)
        .expect("request");
    let slow = {
        let router = env.router.clone();
        tokio::spawn(async move { router.oneshot(req).await.expect("response").status() })
    };
    // The channel holds one piece: this send returns once the first was read, that is once
    // the upload holds its place.
    tx.send(Ok(parts[1].clone())).await.expect("send");
    let refused = put(&env, &b.name(1).to_string(), b.build()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error().error, "busy");
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    tx.send(Ok(parts[2].clone())).await.expect("send");
    drop(tx);
    assert_eq!(slow.await.expect("join"), StatusCode::CREATED);
    assert_eq!(
        put(&env, &b.name(1).to_string(), b.build()).await.status,
        StatusCode::CREATED
    );
}

/// A stream over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    // sha256("reader-secret")
    let sha = pgwal::checksum::sha256_hex(b"reader-secret");
    let text = format!(
        "metrics_require_token = true\n[[tokens]]\nname = \"r\"\nsecret_sha256 = \"{sha}\"\n\
         role = \"reader\"\nclusters = [\"other\"]\n"
    );
    let env = match env_with(dir, Arc::new(FaultPlan::default()), &text).await {
        Ok(env) => env,
        Err((e, _)) => panic!("{e:#}"),
    };
    let scrape = |token: Option<&str>| {
        let mut req = Request::get("/metrics");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Body::empty()).expect("request")
    };
    assert_eq!(
        call(&env, scrape(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&env, scrape(Some("wrong"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&env, scrape(Some("reader-secret"))).await.status,
        StatusCode::OK
    );
    // /healthz stays open.
    let req = Request::get("/healthz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_authorised_like_the_read_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reader = pgwal::checksum::sha256_hex(b"reader-secret");
    let archiver = pgwal::checksum::sha256_hex(b"archiver-secret");
    let text = format!(
        "[[tokens]]\nname = \"r\"\nsecret_sha256 = \"{reader}\"\nrole = \"reader\"\n\
         clusters = [\"main\"]\n[[tokens]]\nname = \"a\"\nsecret_sha256 = \"{archiver}\"\n\
         role = \"archiver\"\n[clusters.main]\n[clusters.other]\n"
    );
    let env = match env_with(dir, Arc::new(FaultPlan::default()), &text).await {
        Ok(env) => env,
        Err((e, _)) => panic!("{e:#}"),
    };
    let get = |path: &str, token: Option<&str>| {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Body::empty()).expect("request")
    };
    for path in ["/", "/v1/status", "/v1/clusters/main/status"] {
        assert_eq!(
            call(&env, get(path, None)).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&env, get(path, Some("archiver-secret"))).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    // A reader sees the clusters of its list only.
    let r = call(&env, get("/v1/status", Some("reader-secret"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let report: pgwal::api::StatusReport = serde_json::from_slice(&r.body).expect("report");
    let names: Vec<&str> = report.clusters.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(names, ["main"]);
    assert_eq!(
        call(
            &env,
            get("/v1/clusters/other/status", Some("reader-secret"))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let page = call(&env, get("/", Some("reader-secret"))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("data-cluster=\"main\""), "{html}");
    assert!(!html.contains("data-cluster=\"other\""), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_answers_only_loopback_names() {
    let env = env().await;
    let with_host = |method: &str, path: &str, host: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Body::empty())
            .expect("request")
    };
    for host in ["127.0.0.1:8420", "localhost:8420", "[::1]:8420"] {
        let r = call(&env, with_host("GET", "/v1/status", host)).await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/"),
        ("POST", "/v1/clusters/main/switch-wal"),
    ] {
        let r = call(&env, with_host(method, path, "evil.example:8420")).await;
        assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{method} {path}");
        assert_eq!(r.error().error, "not_loopback");
    }
    // With tokens, the token decides, whatever the name.
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = pgwal::checksum::sha256_hex(b"reader-secret");
    let text = format!(
        "[[tokens]]\nname = \"r\"\nsecret_sha256 = \"{secret}\"\nrole = \"reader\"\n\
         [clusters.main]\n"
    );
    let env = match env_with(dir, Arc::new(FaultPlan::default()), &text).await {
        Ok(env) => env,
        Err((e, _)) => panic!("{e:#}"),
    };
    let req = Request::get("/v1/status")
        .header("host", "archive.example:8420")
        .header("authorization", "Bearer reader-secret")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&env, req).await.status, StatusCode::OK);
}
