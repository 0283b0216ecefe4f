//! Real records nobody on the team wrote (../shared/samples, read in place) through the whole
//! dry-run path: decode, route, map, batch, write. Assertions are on concrete column values.

mod common;

use common::{find, run, shared_samples, temp_input};
use serde_json::Value;

fn mgmt(file: &str) -> std::path::PathBuf {
    shared_samples().join("management-api").join(file)
}

fn defender(file: &str) -> std::path::PathBuf {
    shared_samples().join("defender-streaming").join(file)
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sharepoint_file_operation() {
    let r = run(&[mgmt("elastic-sharepointfileop.ndjson")]);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let rows = r.table("OfficeActivity_CL");
    assert_eq!(
        rows.len(),
        12,
        "duplicates are kept here; dedupe by Id belongs to the Management API source"
    );
    let row = &rows[0];
    assert_eq!(row["RecordType"], "SharePointFileOperation");
    assert_eq!(row["OfficeWorkload"], "OneDrive");
    assert_eq!(row["UserType"], "Regular");
    assert_eq!(row["Operation"], "FileDeleted");
    assert_eq!(row["TimeGenerated"], "2020-02-07T16:44:07Z");
    let site = row["Site_Url"].as_str().unwrap();
    assert_eq!(
        site,
        "https://testsiem-my.sharepoint.com/personal/asr_testsiem_onmicrosoft_com/"
    );
    assert!(site.ends_with('/'));
    assert_eq!(
        row["OfficeObjectId"].as_str().unwrap(),
        format!(
            "{site}Documents/{}",
            row["SourceFileName"].as_str().unwrap()
        )
    );
    assert_eq!(row["ClientIP"], "67.43.156.15");
    assert_eq!(row["OfficeId"], "ec04aa09-0a43-4879-cdc8-08d7abecf327");
    assert_eq!(row["SourceRecordId"], row["OfficeId"]);
    assert_eq!(row["Site_"], "d5180cfc-3479-44d6-b410-8c985ac894e3");
    assert_eq!(row["ItemType"], "File");
    assert_eq!(row["EventSource"], "SharePoint");
    assert_eq!(
        row["ListItemUniqueId"],
        "4803608a-df7d-4f63-aa73-67aa33bb576e"
    );
    // Fields without a column are kept, with their JSON types.
    assert_eq!(
        row["AdditionalFields"]["ListId"],
        "2b6ad2bd-0fd7-4556-9c89-a97847085b85"
    );
    assert_eq!(row["AdditionalFields"]["Version"], "1");
    assert_eq!(
        row["AdditionalFields"]["CorrelationId"],
        "652b339f-908c-a000-f25f-91423da7dd9b"
    );
    // The last record is a SecureLinkUsed with RecordType "14".
    assert_eq!(rows[11]["RecordType"], "SharePointSharingOperation");
}

#[test]
fn client_ip_is_kept_verbatim() {
    let path = mgmt("elastic-ip-formats.ndjson");
    let r = run(std::slice::from_ref(&path));
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    let inputs = lines(&path);
    assert_eq!(rows.len(), inputs.len());
    for (row, input) in rows.iter().zip(&inputs) {
        assert_eq!(row["ClientIP"], input["ClientIP"]);
        assert_eq!(
            row["RecordType"], "-1",
            "unknown enum values pass through as decimal text"
        );
    }
}

#[test]
fn exchange_item_objects_become_json_strings() {
    let path = mgmt("elastic-exchange-item.ndjson");
    let r = run(std::slice::from_ref(&path));
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    let inputs = lines(&path);
    let row = &rows[0];
    assert_eq!(row["RecordType"], "ExchangeItem");
    assert_eq!(row["UserType"], "Admin");
    assert_eq!(row["Logon_Type"], "Admin");
    assert_eq!(row["InternalLogonType"], 1);
    assert_eq!(row["ExternalAccess"], "True");
    assert_eq!(row["Client_IPAddress"], "::1");
    assert_eq!(row["OriginatingServer"], "AM6PR01MB4535 (15.20.225.32)\n");
    // Item is an object: a string column holds its compact JSON, and parse_json gets it back.
    let item: Value = serde_json::from_str(row["Item"].as_str().unwrap()).unwrap();
    assert_eq!(item, inputs[0]["Item"]);
    assert_eq!(item["ParentFolder"]["Path"], "\\Inbox");
    assert!(item["InternetMessageId"].as_str().unwrap().starts_with('<'));
}

#[test]
fn teams_members_stay_dynamic() {
    let path = mgmt("elastic-ms-teams.ndjson");
    let r = run(std::slice::from_ref(&path));
    let rows = r.table("OfficeActivity_CL");
    let inputs = lines(&path);
    let added = find(rows, "Operation", "MemberAdded");
    let input = inputs
        .iter()
        .find(|i| i["Operation"] == "MemberAdded")
        .unwrap();
    assert!(added["Members"].is_array());
    assert_eq!(added["Members"], input["Members"]);
    assert_eq!(added["RecordType"], "MicrosoftTeams");
    assert_eq!(added["TeamName"], "SIEMTest");
    assert_eq!(rows[0]["UserType"], "Application");
    assert_eq!(rows[4]["AppAccessContext"]["DeviceId"], "Device123");
}

#[test]
fn microsoft_docs_azure_ad_records() {
    let r = run(&[mgmt("retrieve-content.json")]);
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["RecordType"], "AzureActiveDirectoryAccountLogon");
    assert_eq!(rows[0]["LoginStatus"], -2147217390);
    let ext: Value = serde_json::from_str(rows[0]["ExtendedProperties"].as_str().unwrap()).unwrap();
    assert_eq!(ext[0]["Name"], "LoginError");
    let add_user = &rows[2];
    assert_eq!(add_user["RecordType"], "AzureActiveDirectory");
    let target: Value = serde_json::from_str(add_user["AADTarget"].as_str().unwrap()).unwrap();
    assert_eq!(target[0]["ID"], "user001@contoso.onmicrosoft.com");
    let actor: Value = serde_json::from_str(add_user["Actor"].as_str().unwrap()).unwrap();
    assert_eq!(actor.as_array().unwrap().len(), 3);
    assert_eq!(
        add_user["IntraSystemId"],
        "d1497f7e-15b4-49aa-83ad-11a17ca4a2f4"
    );
    assert!(
        add_user.get("ClientIP").is_none(),
        "null ClientIP is left empty"
    );
}

#[test]
fn dlp_detected_values_never_leave_the_process() {
    let r = run(&[mgmt("graph2otel-dlp_records.json")]);
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["RecordType"], "ComplianceDLPSharePoint");
    assert_eq!(rows[0]["Operation"], "DLPRuleMatch");
    for body in r.bodies.values().flatten() {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("SENTINEL-SECRET-MUST-NEVER-BE-EMITTED"),
            "detected value leaked"
        );
    }
    // The policy match itself is kept.
    let policy = &rows[0]["AdditionalFields"]["PolicyDetails"][0];
    assert_eq!(policy["PolicyName"], "Homelab - Secrets and Credentials");
    let info = &policy["Rules"][0]["ConditionsMatched"]["SensitiveInformation"][0];
    assert_eq!(
        info["SensitiveInformationTypeName"],
        "Amazon S3 Client Secret Access Key"
    );
    assert_eq!(
        info["SensitiveInformationDetections"]["DetectedValues"],
        "***REDACTED***"
    );
    assert_eq!(
        info["SensitiveInformationDetections"]["ResultsTruncated"],
        false
    );
    assert!(r.notices.iter().any(|n| {
        n["notes"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("dlp-detected-values")
    }));
}

#[test]
fn threat_intelligence_audit_records() {
    let r = run(&[mgmt("elastic-wl-threatintelligence.ndjson")]);
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["RecordType"], "ThreatIntelligence");
    assert_eq!(rows[0]["UserType"], "System");
    assert_eq!(rows[0]["AdditionalFields"]["Verdict"], "Phish");
    assert_eq!(
        rows[4]["AdditionalFields"]["AttachmentData"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

fn check_defender_row(row: &Value, input: &Value) {
    let props = &input["properties"];
    let ts = props["Timestamp"].as_str().unwrap();
    assert_eq!(row["TimeGenerated"], ts);
    assert_eq!(row["Timestamp"], ts);
    assert_eq!(row["TimeGenerated"], row["Timestamp"]);
    assert_eq!(row["NetworkMessageId"], props["NetworkMessageId"]);
    assert_eq!(row["ReportId"], props["ReportId"]);
    let extra = &row["AdditionalFields"];
    assert_eq!(extra["category"], input["category"]);
    assert_eq!(extra["tenantId"], input["tenantId"]);
    assert_eq!(extra["time"], input["time"]);
}

#[test]
fn defender_rows_route_by_category_with_time_generated_equal_to_timestamp() {
    for (file, table) in [
        ("emailevents.ndjson", "EmailEvents_CL"),
        ("emailattachmentinfo.ndjson", "EmailAttachmentInfo_CL"),
        ("emailurlinfo.ndjson", "EmailUrlInfo_CL"),
        (
            "emailpostdeliveryevents.ndjson",
            "EmailPostDeliveryEvents_CL",
        ),
    ] {
        let path = defender(file);
        let r = run(std::slice::from_ref(&path));
        assert!(r.rejected.is_empty(), "{file}: {:?}", r.rejected);
        assert_eq!(r.stats.rows(), 1, "{file}");
        let rows = r.table(table);
        assert_eq!(rows.len(), 1, "{file} goes to {table}");
        check_defender_row(&rows[0], &lines(&path)[0]);
    }
}

#[test]
fn email_events_keep_json_types() {
    let r = run(&[defender("emailevents.ndjson")]);
    let row = &r.table("EmailEvents_CL")[0];
    assert_eq!(row["To"], serde_json::json!(["rob@m7kni.io"]));
    assert_eq!(row["Cc"], serde_json::json!([]));
    assert_eq!(row["IsFirstContact"], true);
    assert_eq!(row["EmailSize"], 239528);
    assert_eq!(row["EmailClusterId"], 2898195034_i64);
    assert_eq!(row["AttachmentCount"], 0);
    assert_eq!(row["UrlCount"], 16);
    let auth: Value = serde_json::from_str(row["AuthenticationDetails"].as_str().unwrap()).unwrap();
    assert_eq!(auth["DMARC"], "pass");
    assert!(
        row.get("SenderObjectId").is_none(),
        "explicit nulls stay empty"
    );

    let r = run(&[defender("emailurlinfo.ndjson")]);
    let row = &r.table("EmailUrlInfo_CL")[0];
    assert_eq!(row["UrlChainPosition"], 0);
    let r = run(&[defender("emailattachmentinfo.ndjson")]);
    let row = &r.table("EmailAttachmentInfo_CL")[0];
    assert_eq!(row["FileType"], "txt;text");
    assert_eq!(row["FileExtension"], ".txt");
    assert!(row["FileSize"].is_number());
}

#[test]
fn event_hubs_body_and_crlf_storage_blob_give_the_same_rows() {
    let hub = run(&[defender("eventhub-message.json")]);
    assert!(hub.rejected.is_empty());
    for table in [
        "EmailEvents_CL",
        "EmailAttachmentInfo_CL",
        "EmailUrlInfo_CL",
        "EmailPostDeliveryEvents_CL",
    ] {
        assert_eq!(hub.table(table).len(), 1, "{table}");
    }
    // The Storage form: the same rows as JSON Lines with CRLF, as live append blobs have them.
    let mut blob = Vec::new();
    for f in [
        "emailevents.ndjson",
        "emailattachmentinfo.ndjson",
        "emailurlinfo.ndjson",
        "emailpostdeliveryevents.ndjson",
    ] {
        for l in std::fs::read_to_string(defender(f)).unwrap().lines() {
            blob.extend_from_slice(l.as_bytes());
            blob.extend_from_slice(b"\r\n");
        }
    }
    let (_dir, path) = temp_input("PT1H.json", &blob);
    let storage = run(&[path]);
    assert!(storage.rejected.is_empty());
    assert_eq!(storage.rows, hub.rows);
}

#[test]
fn every_sample_record_maps_and_every_body_is_within_limits() {
    let r = run(&[shared_samples()]);
    // The samples directory also holds listing responses, subscriptions and the raw HTTP captures:
    // those are not records and must be refused with a reason, never dropped.
    let audit_and_defender: u64 = 12 + 5 + 9 + 15 + 5 + 3 + 2 + 4 + 4;
    assert_eq!(r.stats.rows(), audit_and_defender);
    for rej in &r.rejected {
        let src = rej["source"].as_str().unwrap();
        assert!(
            src.ends_with(".txt")
                || src.ends_with(".md")
                || src.contains("list-")
                || src.contains("subscriptions")
                || src.contains("notifications"),
            "unexpected rejection: {rej}"
        );
        assert!(rej["reason"].as_str().unwrap().len() > 10);
    }
    for bodies in r.bodies.values() {
        for b in bodies {
            assert!(b.len() <= 1_000_000);
        }
    }
}

/// What the chain hashes when a row is sealed (its text as sent) and what `verify` hashes when
/// it reads the row back (its values) agree for every row the real samples map to: a
/// difference would make `verify` report an untouched row as altered.
#[test]
fn every_sample_rows_canonical_bytes_as_sealed_are_those_verify_computes() {
    use m365_sentinel::integrity::canonical::Columns;
    use m365_sentinel::pipeline::{Output, process_unit};
    use m365_sentinel::record::Position;
    let setup = common::setup();
    let front = setup.front();
    let columns: Vec<Columns> = setup.schemas.tables.iter().map(Columns::of).collect();
    let pos = Position::new(std::sync::Arc::from("samples"), 1);
    let mut rows_by_table: std::collections::BTreeMap<String, usize> = Default::default();
    for dir in ["management-api", "defender-streaming"] {
        for entry in std::fs::read_dir(shared_samples().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let units: Vec<&str> = match path.extension().and_then(|e| e.to_str()) {
                Some("ndjson") => text.lines().filter(|l| !l.trim().is_empty()).collect(),
                Some("json") => vec![text.as_str()],
                _ => continue,
            };
            for unit in units {
                process_unit(&front, unit, &pos, &mut |out| {
                    let Output::Row { row, .. } = out else {
                        return;
                    };
                    let table = &setup.schemas.tables[row.table];
                    let mut sealed = Vec::new();
                    columns[row.table].of_sent(&row.json, &mut sealed).unwrap();
                    let read: Value = serde_json::from_str(&row.json).unwrap();
                    let mut verified = Vec::new();
                    columns[row.table].of_read(|name| read.get(name), &mut verified);
                    assert_eq!(
                        String::from_utf8_lossy(&sealed),
                        String::from_utf8_lossy(&verified),
                        "{}: {}",
                        path.display(),
                        row.json
                    );
                    *rows_by_table.entry(table.output_table.clone()).or_default() += 1;
                });
            }
        }
    }
    // Every table the samples feed was checked, each with its rows.
    for table in common::SENTINEL_TABLES {
        assert!(
            rows_by_table.get(table).copied().unwrap_or(0) >= 1,
            "{table}: {rows_by_table:?}"
        );
    }
    assert!(
        rows_by_table["OfficeActivity_CL"] >= 30,
        "{rows_by_table:?}"
    );
}
