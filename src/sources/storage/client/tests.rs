//! The client's pure parts: listings, error bodies, masking, encoding.

use super::*;

/// Shaped as the List Blobs reference shows it, with a BOM as the service sends it.
const LISTING: &str = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<EnumerationResults ServiceEndpoint=\"https://acct.blob.core.windows.net/\" ContainerName=\"insights\">\
<Prefix>tenantId=t/</Prefix><MaxResults>2</MaxResults><Blobs>\
<Blob><Name>tenantId=t/y=2026/m=11/d=22/h=13/m=00/PT1H.json</Name><Properties>\
<Creation-Time>Sun, 22 Nov 2026 13:00:01 GMT</Creation-Time>\
<Last-Modified>Sun, 22 Nov 2026 13:59:01 GMT</Last-Modified><Etag>0x8D</Etag>\
<Content-Length>1234</Content-Length><Content-Type>application/octet-stream</Content-Type>\
<BlobType>AppendBlob</BlobType><LeaseStatus>unlocked</LeaseStatus></Properties>\
<OrMetadata /></Blob>\
<Blob><Name Encoded=\"true\">odd%EF%BF%BEname</Name><Properties>\
<Content-Length>0</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>\
</Blobs><NextMarker>2!96!abc</NextMarker></EnumerationResults>";

#[test]
fn a_listing_parses_with_sizes_types_and_marker() {
    let page = parse_listing(LISTING.as_bytes()).unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(
        page.items[0],
        BlobItem {
            name: "tenantId=t/y=2026/m=11/d=22/h=13/m=00/PT1H.json".into(),
            size: 1234,
            blob_type: "AppendBlob".into(),
            last_modified: Some("Sun, 22 Nov 2026 13:59:01 GMT".into()),
        }
    );
    assert_eq!(page.items[1].name, "odd\u{fffe}name");
    assert_eq!(page.items[1].last_modified, None);
    assert_eq!(page.next_marker.as_deref(), Some("2!96!abc"));
}

#[test]
fn the_last_page_has_no_marker() {
    let xml = "<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>";
    let page = parse_listing(xml.as_bytes()).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_marker, None);
    assert!(parse_listing(b"<EnumerationResults><Blobs><Blob><Name>x</Name></Blob>").is_err());
}

#[test]
fn error_bodies_keep_code_and_first_line_and_mask_quotes() {
    let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
<Message>Server failed to authenticate the request.\nRequestId:1\nTime:2026</Message>\
<AuthenticationErrorDetail>The MAC signature found in the HTTP request 'SECRETSIG=' is not the same as any computed signature. Server used following string to sign: 'GET\n'.</AuthenticationErrorDetail></Error>";
    let parsed = parse_error_body(body.as_bytes());
    assert_eq!(parsed.code.as_deref(), Some("AuthenticationFailed"));
    assert!(
        parsed
            .message
            .starts_with("Server failed to authenticate the request. The MAC")
    );
    assert!(!parsed.message.contains("SECRETSIG"));
    assert!(!parsed.message.contains("RequestId"));
    assert_eq!(parse_error_body(b"not xml"), ErrorBody::default());
}

#[test]
fn names_are_encoded_for_paths_and_queries() {
    assert_eq!(
        encode("tenantId=a b/y=2026/PT1H.json", true),
        "tenantId%3Da%20b/y%3D2026/PT1H.json"
    );
    assert_eq!(encode("a/b+c", false), "a%2Fb%2Bc");
    assert_eq!(decode("a%2Fb%2Bc%zz"), "a/b+c%zz");
    assert_eq!(range_start("bytes 10-19/100"), Some(10));
    assert_eq!(range_start("items 1-2"), None);
}

#[test]
fn urls_carry_the_sas_and_errors_do_not() {
    let client = BlobClient::new(
        reqwest::Client::new(),
        "https://acct.blob.core.windows.net/",
        BlobAuth::Sas(SasToken::new("?sv=2022&sp=rl&sig=SECRET%3D")),
    )
    .unwrap();
    assert_eq!(client.account(), "acct");
    let url = client
        .url("/c", &[("restype", "container"), ("prefix", "t=1/")])
        .unwrap();
    assert_eq!(
        url.as_str(),
        "https://acct.blob.core.windows.net/c?restype=container&prefix=t%3D1%2F&sv=2022&sp=rl&sig=SECRET%3D"
    );
    assert_eq!(strip_query(&url), "https://acct.blob.core.windows.net/c");
    assert!(!format!("{client:?}").contains("SECRET"));
    let target = Target {
        container: "c",
        blob: None,
        range: None,
    };
    let err = client.classify(
        StatusCode::FORBIDDEN,
        "AuthorizationPermissionMismatch".into(),
        "no".into(),
        None,
        &url,
        &target,
    );
    let text = err.to_string();
    assert!(matches!(err, StorageError::AuthRefused { .. }));
    assert!(text.contains("acct") && text.contains("container c") && text.contains("sp=rl"));
    assert!(!text.contains("SECRET"));
    let err = client.classify(
        StatusCode::IM_A_TEAPOT,
        String::new(),
        String::new(),
        None,
        &url,
        &target,
    );
    assert!(!err.to_string().contains("SECRET"));
    assert!(!err.is_retryable());
    let busy = client.classify(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServerBusy".into(),
        String::new(),
        None,
        &url,
        &target,
    );
    assert!(busy.is_retryable());
    assert!(busy.to_string().contains("ServerBusy"));
}

#[test]
fn path_style_endpoints_name_their_account() {
    let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap();
    assert_eq!(account_from_endpoint(&url), "devstoreaccount1");
    assert!(
        BlobClient::new(
            reqwest::Client::new(),
            "https://a.blob.core.windows.net/?sig=x",
            BlobAuth::Sas(SasToken::new("x"))
        )
        .is_err()
    );
}
