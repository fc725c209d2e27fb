//! The S3 backend of `BlobStore` against a real SeaweedFS on loopback: create-only writes by
//! both routes (a single conditional PUT, and staged multipart plus a create-only copy for
//! objects over 8 MiB), conditional writes of small objects, listings.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use wal_archive_e2e::{seaweed, SeaweedFs, TestDir};
use wal_archive_server::storage::{
    BlobStore, ObjectStoreBlobs, Precondition, PutOutcome, S3Settings, StorageError,
};

fn bucket(weed: &SeaweedFs, prefix: &str) -> ObjectStoreBlobs {
    let settings = S3Settings {
        bucket: weed.bucket.clone(),
        endpoint: Some(weed.endpoint()),
        region: "us-east-1".into(),
        prefix: format!("{prefix}/"),
        access_key_id: seaweed::ACCESS_KEY.into(),
        secret_access_key: seaweed::SECRET_KEY.into(),
        session_token: None,
        request_timeout: std::time::Duration::from_secs(30),
    };
    ObjectStoreBlobs::s3(settings.build().expect("client"))
}

fn pseudo_random(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put(blobs: &dyn BlobStore, key: &str, data: &[u8]) -> PutOutcome {
    let mut up = blobs.begin_put(key).await.expect("begin");
    for chunk in data.chunks(1 << 20) {
        up.write(chunk).await.expect("write");
    }
    up.commit().await.expect("commit")
}

async fn read(blobs: &dyn BlobStore, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = blobs
        .get(key)
        .await
        .expect("get")
        .try_collect()
        .await
        .expect("read");
    chunks.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_by_both_routes_and_conditional_small_writes() {
    let dir = TestDir::new("s3-storage").expect("dir");
    let weed = SeaweedFs::start(&dir, "weed").expect("seaweed");
    let blobs: Arc<dyn BlobStore> = Arc::new(bucket(&weed, "unit"));

    // A small object: one conditional PUT; a second create of the key is refused, the first
    // content stays.
    let small = pseudo_random(300_000, 7);
    assert_eq!(put(&*blobs, "a/small", &small).await, PutOutcome::Created);
    assert_eq!(
        put(&*blobs, "a/small", b"other bytes").await,
        PutOutcome::AlreadyExists
    );
    assert_eq!(read(&*blobs, "a/small").await, small);

    // A large one (incompressible, over the single-PUT size): staged, then copied create-only.
    let large = pseudo_random(20 << 20, 11);
    assert_eq!(put(&*blobs, "a/large", &large).await, PutOutcome::Created);
    assert_eq!(
        put(&*blobs, "a/large", &pseudo_random(20 << 20, 12)).await,
        PutOutcome::AlreadyExists
    );
    assert_eq!(read(&*blobs, "a/large").await, large);
    assert_eq!(blobs.head("a/large").await.expect("head"), Some(20 << 20));
    assert_eq!(
        blobs
            .get_range("a/large", (20 << 20) - 64..20 << 20)
            .await
            .expect("range"),
        &large[large.len() - 64..]
    );
    // No staging debris is left by either route.
    assert!(blobs.list("staging").await.expect("list").is_empty());
    let listed = blobs.list("a/").await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    // (SeaweedFS's filer keeps emptied directories; S3 itself has none: no object is left.)
    assert!(blobs
        .list_dirs("")
        .await
        .expect("dirs")
        .contains(&"a/".to_string()));

    // A create-only copy made by the bucket itself (what a spilled backup file becomes): to a
    // free key it is made, onto a taken one refused, and the taken one keeps its content.
    assert_eq!(
        blobs.copy_new("a/large", "b/copy").await.expect("copy"),
        PutOutcome::Created
    );
    assert_eq!(read(&*blobs, "b/copy").await, large);
    assert_eq!(
        blobs.copy_new("a/large", "a/small").await.expect("copy"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(read(&*blobs, "a/small").await, small);
    blobs.delete("b/copy").await.expect("delete");

    // Conditional writes of a small object: what the lease is made of.
    let v1 = blobs
        .put_if("meta/x", Bytes::from_static(b"one"), Precondition::Absent)
        .await
        .expect("create")
        .expect("a version");
    assert!(matches!(
        blobs
            .put_if("meta/x", Bytes::from_static(b"two"), Precondition::Absent)
            .await,
        Err(StorageError::Precondition(_))
    ));
    let read_back = blobs
        .read_versioned("meta/x")
        .await
        .expect("read")
        .expect("there");
    assert_eq!(read_back.data, Bytes::from_static(b"one"));
    assert_eq!(read_back.version.as_deref(), Some(v1.as_str()));
    blobs
        .put_if(
            "meta/x",
            Bytes::from_static(b"two"),
            Precondition::Version(v1.clone()),
        )
        .await
        .expect("update at the version read");
    assert!(matches!(
        blobs
            .put_if(
                "meta/x",
                Bytes::from_static(b"three"),
                Precondition::Version(v1)
            )
            .await,
        Err(StorageError::Precondition(_))
    ));
    blobs
        .replace("meta/x", Bytes::from_static(b"four"))
        .await
        .expect("replace");
    assert_eq!(
        blobs
            .read_versioned("meta/x")
            .await
            .expect("read")
            .expect("there")
            .data,
        Bytes::from_static(b"four")
    );
    assert!(blobs.supports_versions());
}
