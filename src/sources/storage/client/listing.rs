//! The List Blobs answer (XML): names, properties, prefixes and the next marker.

use super::*;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EnumerationResults {
    #[serde(default)]
    pub(super) blobs: RawBlobs,
    #[serde(default)]
    pub(super) next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawBlobs {
    #[serde(rename = "Blob", default)]
    pub(super) blob: Vec<RawBlob>,
    #[serde(rename = "BlobPrefix", default)]
    pub(super) blob_prefix: Vec<RawPrefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawPrefix {
    pub(super) name: RawName,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawBlob {
    pub(super) name: RawName,
    pub(super) properties: RawProperties,
}

/// `<Name Encoded="true">` holds a percent-encoded name (one with characters XML cannot carry).
#[derive(Deserialize)]
pub(super) struct RawName {
    #[serde(rename = "@Encoded", default)]
    pub(super) encoded: bool,
    #[serde(rename = "$text", default)]
    pub(super) text: String,
}

#[derive(Deserialize)]
pub(super) struct RawProperties {
    #[serde(rename = "Content-Length")]
    pub(super) content_length: u64,
    #[serde(rename = "BlobType", default)]
    pub(super) blob_type: String,
    #[serde(rename = "Last-Modified", default)]
    pub(super) last_modified: Option<String>,
}

/// A List Blobs answer → its blobs and next marker.
pub(super) fn parse_listing(body: &[u8]) -> Result<BlobPage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let text = text.trim_start_matches('\u{feff}');
    let raw: EnumerationResults = quick_xml::de::from_str(text).map_err(|e| e.to_string())?;
    let prefixes = raw
        .blobs
        .blob_prefix
        .into_iter()
        .map(|p| {
            if p.name.encoded {
                decode(&p.name.text)
            } else {
                p.name.text
            }
        })
        .collect();
    let items = raw
        .blobs
        .blob
        .into_iter()
        .map(|b| BlobItem {
            name: if b.name.encoded {
                decode(&b.name.text)
            } else {
                b.name.text
            },
            size: b.properties.content_length,
            blob_type: b.properties.blob_type,
            last_modified: b.properties.last_modified,
        })
        .collect();
    Ok(BlobPage {
        items,
        prefixes,
        next_marker: raw.next_marker.filter(|m| !m.is_empty()),
    })
}
