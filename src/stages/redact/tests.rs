//! Redaction rules on real shapes: cmdlet parameters, tokens, SAS, connection strings, DLP.

use super::*;

fn shipped() -> Redactor {
    Redactor::from_files(&SchemaFiles::embedded(), &[], "config").unwrap()
}

fn masked(column: &str, text: &str) -> Option<(String, Vec<String>)> {
    let r = shipped();
    let mut hits = Vec::new();
    r.redact_text(column, text, &mut hits).map(|s| {
        (
            s,
            hits.iter().map(|h| r.rule_name(*h).to_string()).collect(),
        )
    })
}

#[test]
fn cmdlet_password_parameter_is_masked_and_its_neighbours_are_not() {
    let params = r#"[{"Name":"Identity","Value":"alice@contoso.com"},{"Name":"NewPassword","Value":"Hunter2!\"x"},{"Name":"ForceChangePasswordNextLogin","Value":"True"},{"Name":"ForceChangePassword","Value":"True"},{"Name":"Password","Value":"S3cr3t"}]"#;
    let r = shipped();
    let mut hits = Vec::new();
    let out = r.redact_json("Parameters", params, &mut hits).unwrap();
    assert_eq!(
        out,
        r#"[{"Name":"Identity","Value":"alice@contoso.com"},{"Name":"NewPassword","Value":"***REDACTED***"},{"Name":"ForceChangePasswordNextLogin","Value":"True"},{"Name":"ForceChangePassword","Value":"True"},{"Name":"Password","Value":"***REDACTED***"}]"#
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert!(
        hits.iter()
            .all(|h| r.rule_name(*h) == "secret-named-parameter")
    );
}

#[test]
fn name_value_pairs_are_masked_in_any_order_spacing_and_type() {
    let r = shipped();
    let mut hits = Vec::new();
    let pretty = r#"[ { "Value" : "Hunter2", "Name" : "CertificatePassword" },
        {"Name": "Pin", "Value": 1234}, {"Name":"ApiKey","Value":98765},
        {"Name":"Identity","Value":"bob"}, {"Name":"ResetPassword","Value":"$true"} ]"#;
    let out = r.redact_json("Parameters", pretty, &mut hits).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Value"], MASK);
    assert_eq!(
        v[0]["Name"], "CertificatePassword",
        "key order and names are kept"
    );
    assert_eq!(v[1]["Value"], 1234, "a PIN is not named like a secret");
    assert_eq!(v[2]["Value"], MASK, "numbers are masked too");
    assert_eq!(v[3]["Value"], "bob");
    assert_eq!(v[4]["Value"], "$true", "a switch is not a secret");

    // ModifiedProperties carry NewValue/OldValue.
    let modified = r#"[{"Name":"ClientSecret","NewValue":"new-s3cret","OldValue":"old-s3cret"}]"#;
    let out = r
        .redact_json("ModifiedProperties", modified, &mut Vec::new())
        .unwrap();
    assert!(!out.contains("s3cret"), "{out}");

    // Parameters sent as a JSON string (with spaces) get the same treatment.
    let text = r#"[{"Name": "Password", "Value": "Sup3r S3cret"}]"#;
    let out = r.redact_text("Parameters", text, &mut Vec::new()).unwrap();
    assert_eq!(out, r#"[{"Name":"Password","Value":"***REDACTED***"}]"#);
}

#[test]
fn command_line_passwords() {
    let (s, _) = masked("X", "Set-Thing -Identity bob -Password Pa55w0rd -Force").unwrap();
    assert_eq!(s, "Set-Thing -Identity bob -Password ***REDACTED*** -Force");
    let (s, _) = masked("X", "tool.exe /password:abc123 /user:bob").unwrap();
    assert_eq!(s, "tool.exe /password:***REDACTED*** /user:bob");
    let (s, _) = masked("X", "https://x/y?user=bob&password=abc&x=1").unwrap();
    assert_eq!(s, "https://x/y?user=bob&password=***REDACTED***&x=1");
    // Not over-masking: prose and operation names that mention passwords.
    assert_eq!(masked("X", "PasswordLogonInitialAuthUsingPassword"), None);
    assert_eq!(masked("X", "Reset password for user bob"), None);
    assert_eq!(masked("X", "Set-Mailbox -PasswordNeverExpires $true"), None);
    assert_eq!(masked("X", "-Password -Force"), None);
}

#[test]
fn bearer_tokens_and_jwts() {
    let (s, rules) = masked("X", "Authorization: Bearer abcdefghijklmnop.qrs-tuv_wx=").unwrap();
    assert_eq!(s, "Authorization: Bearer ***REDACTED***");
    assert_eq!(rules, ["bearer-token"]);
    let jwt = "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end";
    let (s, _) = masked("X", jwt).unwrap();
    assert_eq!(s, "token ***REDACTED-JWT*** end");
    assert_eq!(masked("X", "the bearer of bad news"), None);
    assert_eq!(masked("X", "eyJhbGciOiJIUzI1NiJ9 alone"), None);
}

#[test]
fn sas_signatures_and_connection_strings() {
    let (s, _) = masked(
        "X",
        "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=AbC%2Bdef%3D&x=1",
    )
    .unwrap();
    assert_eq!(
        s,
        "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=***REDACTED***&x=1"
    );
    let (s, _) = masked(
        "X",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=bXlrZXk=;EndpointSuffix=core.windows.net",
    )
    .unwrap();
    assert_eq!(
        s,
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***REDACTED***;EndpointSuffix=core.windows.net"
    );
    let (s, _) = masked(
        "X",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc/def+g=",
    )
    .unwrap();
    assert!(
        s.ends_with("SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=***REDACTED***")
    );
    // Not over-masking: a URL without a signature, a key name without a value.
    assert_eq!(masked("X", "https://x/y?sv=1&signature=false"), None);
    assert_eq!(
        masked("X", "SharedAccessKeyName=RootManageSharedAccessKey"),
        None
    );
}

#[test]
fn column_scoped_rules_apply_only_to_their_columns() {
    let r = Redactor::new(vec![(
        "test".into(),
        RuleSpec {
            name: "upn".into(),
            description: None,
            kind: RuleKind::Regex,
            pattern: Some("[a-z]+@contoso.com".into()),
            replacement: Some("user@masked".into()),
            name_pattern: None,
            key_pattern: None,
            columns: Some(vec!["UserId".into()]),
        },
    )])
    .unwrap();
    let mut hits = Vec::new();
    assert_eq!(
        r.redact_text("UserId", "bob@contoso.com", &mut hits)
            .as_deref(),
        Some("user@masked")
    );
    assert_eq!(
        r.redact_text("Operation", "bob@contoso.com", &mut hits),
        None
    );
}

#[test]
fn nested_strings_in_dynamic_values_are_masked_keys_are_kept() {
    let r = shipped();
    let mut hits = Vec::new();
    let json = r#"{"Url":"https://a/b?sig=secret","sig=x":"keep","n":1,"esc":"say \"Bearer abcdefghijkl\""}"#;
    let out = r.redact_json("AdditionalFields", json, &mut hits).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Url"], "https://a/b?sig=***REDACTED***");
    assert_eq!(v["sig=x"], "keep");
    assert_eq!(v["esc"], "say \"Bearer ***REDACTED***\"");
    assert_eq!(v["n"], 1);
}

#[test]
fn a_structure_that_cannot_be_parsed_but_names_a_secret_is_masked_whole() {
    let r = shipped();
    // Deeper than serde_json's recursion limit: the walk can't see it, so all of it goes.
    let json = format!(
        r#"[{{"Name":"Password","Value":"hunter2"}},{}1{}]"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let out = r.redact_json("Parameters", &json, &mut Vec::new()).unwrap();
    assert_eq!(out, "\"***REDACTED***\"");
}

#[test]
fn masking_keeps_every_other_number_as_it_was_written() {
    let r = shipped();
    let json = r#"[{"Name":"Password","Value":"hunter2"},{"Name":"X","Value":1e400},{"Name":"Big","Value":12345678901234567890123}]"#;
    let out = r.redact_json("Parameters", json, &mut Vec::new()).unwrap();
    assert_eq!(
        out,
        // serde_json writes the exponent with its sign; the value is the same.
        r#"[{"Name":"Password","Value":"***REDACTED***"},{"Name":"X","Value":1e+400},{"Name":"Big","Value":12345678901234567890123}]"#
    );
}

#[test]
fn one_rule_that_would_break_the_json_does_not_undo_the_others() {
    let r = shipped();
    let json = r#"{"PolicyDetails":[{"Rules":[{"DetectedValues":["4111111111111111"]}]}],"Note":"password=","X":"y"}"#;
    let out = r
        .redact_json("AdditionalFields", json, &mut Vec::new())
        .unwrap();
    assert!(!out.contains("4111111111111111"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["X"], "y");
}

#[test]
fn whole_text_rules_cannot_merge_elements_or_rename_keys() {
    let r = shipped();
    let out = r
        .redact_json("X", r#"["/password:","hunter2","z"]"#, &mut Vec::new())
        .map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap());
    if let Some(v) = out {
        assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    }
    let out = r.redact_json("X", r#"{"?sig=a":1,"?sig=b":2}"#, &mut Vec::new());
    if let Some(s) = out {
        assert!(s.contains("\"?sig=a\"") && s.contains("\"?sig=b\""), "{s}");
    }
}

#[test]
fn json_key_rules_mask_whatever_the_value_is() {
    let r = shipped();
    let json = r#"{"a":{"DetectedValues":[{"Name":"n","Value":"SECRET-1"}],"Count":2}}"#;
    let out = r
        .redact_json("AdditionalFields", json, &mut Vec::new())
        .unwrap();
    assert_eq!(
        out,
        r#"{"a":{"DetectedValues":"***REDACTED***","Count":2}}"#
    );
}

#[test]
fn shipped_rules_all_have_a_literal_prefilter() {
    assert!(shipped().prefilter.is_some());
}

#[test]
fn records_with_nothing_to_mask_are_cleared_by_the_prefilter() {
    let r = shipped();
    let plain = r#"{"Operation":"FileAccessed","Path":"\\Inbox","Parameters":[{"Name":"Identity","Value":"bob"}]}"#;
    assert!(!r.record_may_match(plain));
    for needs_a_look in [
        r#"{"Parameters":[{"Name":"NewPassword","Value":"x"}]}"#,
        r#"{"Url":"https://a/b?SIG=abc"}"#,
        r#"{"Auth":"BEARER abcdefghijkl"}"#,
        r#"{"Parameters":"[{\"Name\":\"Password\"}]"}"#,
        r#"{"X":"p\u0077d=1"}"#,
        r#"{"X":"pässword"}"#,
    ] {
        assert!(r.record_may_match(needs_a_look), "{needs_a_look}");
    }
}

#[test]
fn bad_pattern_is_reported_with_rule_name() {
    let err = Redactor::new(vec![(
        "config.yaml".into(),
        RuleSpec {
            name: "broken".into(),
            description: None,
            kind: RuleKind::Regex,
            pattern: Some("(unclosed".into()),
            replacement: Some("x".into()),
            name_pattern: None,
            key_pattern: None,
            columns: None,
        },
    )])
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("config.yaml") && text.contains("broken"),
        "{text}"
    );
}
