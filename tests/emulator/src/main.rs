//! Runs the emulator by hand: `cargo run -p m365-emulator -- [ADDR]` (default 127.0.0.1:8089).
//! Tenant, client and secret are printed; any stream is accepted, with any columns.

use std::collections::HashMap;
use std::time::Duration;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8089".into());
    let config = m365_emulator::Config {
        tenant_id: "00000000-0000-4000-8000-000000000001".into(),
        client_id: "00000000-0000-4000-8000-000000000002".into(),
        client_secret: "emulator-secret".into(),
        dcr_immutable_id: "dcr-00000000000000000000000000e0e0e0".into(),
        streams: HashMap::new(),
        other_dcrs: HashMap::new(),
        token_lifetime: Duration::from_secs(3600),
        accept_undeclared_streams: true,
        keep_rows: false,
        workspace_id: "00000000-0000-4000-8000-000000000003".into(),
        shared_key: "ZW11bGF0b3Itd29ya3NwYWNlLWtleQ==".into(),
        client_certificate_pem: None,
    };
    let emulator = m365_emulator::Emulator::start_on(&bind, config.clone()).await?;
    println!("emulator on {}", emulator.url());
    println!(
        "tenant {} client {} secret {}",
        config.tenant_id, config.client_id, config.client_secret
    );
    tokio::signal::ctrl_c().await
}
