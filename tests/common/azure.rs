//! The emulated Azure side as the tests set it up: one app registration, one DCR whose stream
//! declarations come from the schemas, a workspace for the legacy API.

use std::collections::HashMap;
use std::time::Duration;

use m365_emulator::Config;
use m365_sentinel::schema::ColumnType;

pub const TENANT: &str = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub const CLIENT: &str = "0f0e0d0c-0b0a-4909-8887-868584838281";
pub const WORKSPACE: &str = "11111111-2222-4333-8444-555555555555";
/// base64 of "data collector test key" (not a real key).
pub const SHARED_KEY: &str = "ZGF0YSBjb2xsZWN0b3IgdGVzdCBrZXk=";
pub const SECRET: &str = "s3cret-for-tests";
pub const DCR: &str = "dcr-0123456789abcdef0123456789abcdef";

/// The DCR column type of a schema type.
pub fn dcr_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Bool => "boolean",
        ColumnType::Guid => "string",
        other => other.table_type(),
    }
}

/// A table's stream declaration as `schema dcr` writes it: the schema's columns and the
/// chain's, with their DCR types.
pub fn stream_columns(t: &m365_sentinel::schema::TableSchema) -> Vec<(String, String)> {
    t.columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty))
        .chain(m365_sentinel::integrity::CHAIN_COLUMNS)
        .map(|(name, ty)| (name.to_string(), dcr_type(ty).to_string()))
        .collect()
}

/// An emulator config declaring every stream of the embedded schemas.
pub fn emulator_config() -> Config {
    let setup = super::setup();
    let streams: HashMap<String, Vec<(String, String)>> = setup
        .schemas
        .tables
        .iter()
        .map(|t| (t.stream.clone(), stream_columns(t)))
        .collect();
    Config {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: SECRET.into(),
        dcr_immutable_id: DCR.into(),
        streams,
        other_dcrs: HashMap::new(),
        token_lifetime: Duration::from_secs(3600),
        accept_undeclared_streams: false,
        keep_rows: true,
        workspace_id: WORKSPACE.into(),
        shared_key: SHARED_KEY.into(),
        client_certificate_pem: None,
    }
}
