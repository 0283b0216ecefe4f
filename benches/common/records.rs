//! Synthetic audit records shared by the benchmark and the input generator (our own, modelled
//! on the Management Activity API schema; made unique by a counter).

/// Audit records of the common kinds, about 1 KB each, made unique by a counter.
const TEMPLATES: [&str; 3] = [
    r#"{"CreationTime":"2026-03-02T09:15:44","Id":"0f6a8e2c-1d3b-4c5a-9e7f-2b8d4a6c{N}","Operation":"Set-Mailbox","OrganizationId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","RecordType":1,"ResultStatus":"True","UserKey":"10032001A2B3C4D5","UserType":2,"Version":1,"Workload":"Exchange","ClientIP":"203.0.113.25:51034","ObjectId":"EURPR01A001.prod.outlook.com/Microsoft Exchange Hosted Organizations/contoso.onmicrosoft.com/user{N}","UserId":"admin@contoso.onmicrosoft.com","AppId":"fb78d390-0c51-40cd-8e17-fdbfab77341b","ClientAppId":"","ExternalAccess":false,"OrganizationName":"contoso.onmicrosoft.com","OriginatingServer":"AM0PR01MB1234 (15.20.7316.039)","Parameters":[{"Name":"Identity","Value":"user{N}@contoso.com"},{"Name":"ForwardingSmtpAddress","Value":"smtp:someone@example.net"},{"Name":"DeliverToMailboxAndForward","Value":"True"}],"SessionId":"4a1b6c1e-07e1-4a43-9e3e-6f2b1c0d9e88","RequestId":"8f1e2d3c-4b5a-4968-8776-0a1b2c3d4e5f"}"#,
    r#"{"CreationTime":"2026-03-03T11:02:55","Id":"a1b2c3d4-0001-4e5f-8a9b-0c1d2e3f{N}","Operation":"FileDownloaded","OrganizationId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","RecordType":6,"UserKey":"i:0h.f|membership|10032001a2b3c4d6@live.com","UserType":0,"Version":1,"Workload":"OneDrive","ClientIP":"192.0.2.44","ObjectId":"https://contoso-my.sharepoint.com/personal/j_doe_contoso_com/Documents/Report {N}.docx","UserId":"j.doe@contoso.com","CorrelationId":"1f0e9d8c-7b6a-5f4e-3d2c-1b0a9f8e7d6c","EventSource":"SharePoint","ItemType":"File","ListId":"aa11bb22-cc33-4d44-8e55-ff6677889900","ListItemUniqueId":"0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9","Site":"3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f","UserAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","WebId":"5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b","SourceFileExtension":"docx","SiteUrl":"https://contoso-my.sharepoint.com/personal/j_doe_contoso_com/","SourceFileName":"Report {N}.docx","SourceRelativeUrl":"Documents"}"#,
    r#"{"CreationTime":"2026-03-03T11:07:42","Id":"a1b2c3d4-0003-4e5f-8a9b-0c1d2e3f{N}","Operation":"MailItemsAccessed","OrganizationId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","RecordType":50,"ResultStatus":"Succeeded","UserKey":"10032001A2B3C4D7","UserType":0,"Version":1,"Workload":"Exchange","ClientIP":"2001:db8::17","UserId":"delegate@contoso.com","AppId":"00000002-0000-0ff1-ce00-000000000000","ClientIPAddress":"2001:db8::17","ClientInfoString":"Client=OutlookService;Outlook-iOS/2.0","ExternalAccess":false,"InternalLogonType":0,"LogonType":0,"LogonUserSid":"S-1-5-21-1111111111-2222222222-3333333333-4444","MailboxGuid":"d5e6f7a8-b9c0-4d1e-8f2a-3b4c5d6e7f8a","MailboxOwnerSid":"S-1-5-21-1111111111-2222222222-3333333333-5555","MailboxOwnerUPN":"delegate@contoso.com","OperationProperties":[{"Name":"MailAccessType","Value":"Bind"},{"Name":"IsThrottled","Value":"False"}],"OrganizationName":"contoso.onmicrosoft.com","OriginatingServer":"AM0PR01MB5678 (15.20.7316.039)","Folders":[{"FolderItems":[{"InternetMessageId":"<msg{N}@example.net>","SizeInBytes":48213}],"Id":"LgAAAAB","Path":"\\Inbox"}],"OperationCount":1}"#,
];

/// Record `i`: the three kinds in turn.
pub fn record(i: usize) -> String {
    TEMPLATES[i % TEMPLATES.len()].replace("{N}", &format!("{i:04}"))
}

/// Records `0..n`.
#[allow(dead_code)]
pub fn records(n: usize) -> Vec<String> {
    (0..n).map(record).collect()
}
