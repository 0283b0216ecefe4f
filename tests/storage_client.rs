//! The Blob client against a real Azurite: paging, prefixes, ranged reads of growing append
//! blobs, and the errors a misconfigured connector meets first. Needs Azurite (see
//! `common/azurite.rs` for where it is looked for).

#[allow(dead_code)]
#[path = "common/azurite.rs"]
mod azurite;
#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

use azurite::Azurite;
use m365_sentinel::sources::storage::client::{BlobAuth, BlobClient, StorageError};

const CONTAINER: &str = "insights-logs-emailevents";

fn hour_blob(tenant: &str, hour: u32) -> String {
    format!("tenantId={tenant}/y=2026/m=11/d=22/h={hour:02}/m=00/PT1H.json")
}

#[tokio::test]
async fn listing_follows_every_page_and_keeps_to_the_prefix() {
    let az = Azurite::start();
    az.create_container(CONTAINER).await;
    let mut expected = Vec::new();
    for hour in 0..7u32 {
        let name = hour_blob("t1", hour);
        az.create_append_blob(CONTAINER, &name).await;
        let body = vec![b'x'; hour as usize * 10 + 1];
        az.append_block(CONTAINER, &name, &body).await;
        expected.push((name, body.len() as u64, "AppendBlob".to_string()));
    }
    // A name needing encoding in both the path and the prefix query.
    let odd = "tenantId=t1/z odd+name&x.json".to_string();
    az.put_block_blob(CONTAINER, &odd, b"12345").await;
    expected.push((odd, 5, "BlockBlob".to_string()));
    // Outside the prefix.
    az.create_append_blob(CONTAINER, &hour_blob("t2", 1)).await;
    az.put_block_blob(CONTAINER, "tenantId=t10/other.json", b"no")
        .await;
    expected.sort();

    let client = az.client();
    let first = client
        .list_page(CONTAINER, "tenantId=t1/", None, Some(3))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    assert!(first.next_marker.is_some(), "3 of 8: more pages follow");

    let paged = client
        .list_blobs_paged(CONTAINER, "tenantId=t1/", Some(3))
        .await
        .unwrap();
    let got: Vec<(String, u64, String)> = paged
        .iter()
        .map(|b| (b.name.clone(), b.size, b.blob_type.clone()))
        .collect();
    assert_eq!(got, expected);
    assert!(paged.iter().all(|b| b.last_modified.is_some()));

    let whole = client.list_blobs(CONTAINER, "tenantId=t1/").await.unwrap();
    assert_eq!(whole, paged);
    assert_eq!(client.list_blobs(CONTAINER, "").await.unwrap().len(), 10);
    assert!(
        client
            .list_blobs(CONTAINER, "nothing/")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn ranged_reads_of_a_growing_append_blob() {
    let az = Azurite::start();
    az.create_container(CONTAINER).await;
    let name = hour_blob("t1", 13);
    az.create_append_blob(CONTAINER, &name).await;
    let mut content = Vec::new();
    for block in [&b"{\"a\":1}\n"[..], b"{\"b\":22}\n", b"{\"c\":333}\n"] {
        az.append_block(CONTAINER, &name, block).await;
        content.extend_from_slice(block);
    }
    let client = az.client();
    let len = content.len() as u64;

    let all = client
        .read_range(CONTAINER, &name, 0, len - 1)
        .await
        .unwrap();
    assert_eq!(all, content);
    // Across a block boundary, ending mid-blob.
    let mid = client.read_range(CONTAINER, &name, 5, 12).await.unwrap();
    assert_eq!(mid, &content[5..=12]);
    let one = client
        .read_range(CONTAINER, &name, len - 1, len - 1)
        .await
        .unwrap();
    assert_eq!(one, b"\n");
    // A range running past the end gives what there is.
    let tail = client
        .read_range(CONTAINER, &name, 8, len + 100)
        .await
        .unwrap();
    assert_eq!(tail, &content[8..]);

    // Starting at the end: the distinct "shorter than asked" error.
    let err = client
        .read_range(CONTAINER, &name, len, len + 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::RangeNotSatisfiable { start, .. } if start == len),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&name), "{err}");
    let err = client
        .read_range(CONTAINER, &name, len + 5, len + 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::RangeNotSatisfiable { status: 416, .. }),
        "{err:?}"
    );

    // The blob grows; the new bytes are readable from where the old ones ended.
    az.append_block(CONTAINER, &name, b"{\"d\":4}\n").await;
    let more = client
        .read_range(CONTAINER, &name, len, len + 99)
        .await
        .unwrap();
    assert_eq!(more, b"{\"d\":4}\n");

    let err = client
        .read_range(CONTAINER, "tenantId=t1/missing.json", 0, 9)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::BlobNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_key_is_an_authentication_error_naming_the_account() {
    let az = Azurite::start();
    az.create_container(CONTAINER).await;
    // A valid base64 key that is not the account's.
    let wrong = "d3JvbmcgYWNjb3VudCBrZXkgZm9yIHRoZSB0ZXN0cyAwMTIzNDU2Nzg5YWJjZGVm";
    let auth = BlobAuth::shared_key(az.account(), wrong).unwrap();
    let client = BlobClient::new(reqwest::Client::new(), &az.endpoint(), auth).unwrap();

    let err = client.list_blobs(CONTAINER, "").await.unwrap_err();
    assert!(matches!(err, StorageError::AuthRefused { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("devstoreaccount1"), "{text}");
    assert!(text.contains(CONTAINER), "{text}");
    assert!(
        text.contains("AuthorizationFailure") || text.contains("AuthenticationFailed"),
        "{text}"
    );
    assert!(text.contains("account key"), "{text}");
    for shown in [text, format!("{err:?}"), format!("{client:?}")] {
        assert!(
            !shown.contains(wrong) && !shown.contains(az.key()),
            "{shown}"
        );
    }

    let err = client
        .read_range(CONTAINER, "tenantId=t1/x.json", 0, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AuthRefused { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_container_is_named() {
    let az = Azurite::start();
    let err = az
        .client()
        .list_blobs("insights-logs-notyet", "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::ContainerNotFound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("insights-logs-notyet") && text.contains("ContainerNotFound"),
        "{text}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn nothing_listening_is_a_retryable_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth = BlobAuth::shared_key(azurite::ACCOUNT, azurite::KEY).unwrap();
    let endpoint = format!("http://127.0.0.1:{port}/{}", azurite::ACCOUNT);
    let client = BlobClient::new(reqwest::Client::new(), &endpoint, auth).unwrap();
    let err = client.list_blobs(CONTAINER, "").await.unwrap_err();
    assert!(matches!(err, StorageError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
}
