#![no_main]
//! Arbitrary bytes through framing, decoding, routing, mapping (with the shipped redaction rules)
//! and batching: nothing may panic, and every mapped row must be valid JSON.

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use m365_sentinel::pipeline::{Output, Setup, process_unit};
use m365_sentinel::sinks::batch::BodyBuilder;
use m365_sentinel::sources::file::{FileOptions, Framed, read_stream};

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| Setup::load(None, None, std::iter::empty()).expect("embedded setup"))
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let mapper = setup.front();
    let mut builder = BodyBuilder::new(4096);
    let options = FileOptions {
        max_record_bytes: 1 << 16,
        max_document_bytes: 1 << 20,
    };
    read_stream(
        Arc::from("fuzz"),
        Box::new(std::io::Cursor::new(data.to_vec())),
        &options,
        &mut |framed| {
            if let Framed::Unit { pos, text } = framed {
                process_unit(&mapper, text, &pos, &mut |out| {
                    if let Output::Row { row, .. } = out {
                        serde_json::from_str::<serde::de::IgnoredAny>(&row.json)
                            .expect("rows are valid JSON");
                        let _ = builder.push(row.json.as_bytes());
                    }
                });
            }
        },
    );
});
