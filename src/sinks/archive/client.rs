//! The archive container through Microsoft's `azure_storage_blob` crate: a blob part's committed
//! block ids, staging a block, and committing a block list guarded by the blob's ETag, so two
//! writers can never interleave one blob (the loser reloads the list and tries again).
//!
//! Signing in is the SDK's: an Entra token (`archive.auth`, scope storage.azure.com) or a SAS
//! token in the URL (`archive.sas_file`). Every error's text is cleaned of the SAS signature
//! before it is shown.

use std::collections::HashSet;
use std::sync::Arc;

use azure_core::Bytes;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Etag, StatusCode, Transport, Url};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientCommitBlockListResultHeaders, BlockListType, BlockLookupList,
};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlockBlobClient};

use super::ArchiveError;
use super::config::ArchiveConfig;

/// The container, ready to make a client per blob.
pub struct Container {
    base: Url,
    /// The SAS file and the token last read from it.
    sas_file: Option<std::path::PathBuf>,
    sas: std::sync::Mutex<Option<String>>,
    credential: Option<Arc<dyn TokenCredential>>,
    options: BlobClientOptions,
}

impl Container {
    /// Reads the SAS file or builds the Entra credential; the requests go through `http`
    /// (the config's proxy and CA settings).
    pub fn new(config: &ArchiveConfig, http: &reqwest::Client) -> Result<Self, ArchiveError> {
        config.validate().map_err(ArchiveError::Config)?;
        let base = Url::parse(config.container_url.trim_end_matches('/'))
            .map_err(|e| ArchiveError::Config(format!("archive.container_url: {e}")))?;
        let sas = match &config.sas_file {
            Some(path) => Some(read_sas(path)?),
            None => None,
        };
        let credential = match &config.auth {
            Some(auth) => Some(auth.build(http)?),
            None => None,
        };
        let options = BlobClientOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                // One request per attempt: the writer's own backoff retries, and can stop
                // between attempts at shutdown.
                retry: azure_core::http::RetryOptions::none(),
                ..ClientOptions::default()
            },
            ..BlobClientOptions::default()
        };
        Ok(Self {
            base,
            sas_file: config.sas_file.clone(),
            sas: std::sync::Mutex::new(sas),
            credential,
            options,
        })
    }

    /// Reads the SAS file again (a rotated Secret); keeps the old token if it can't.
    pub fn reload_sas(&self) {
        let Some(path) = &self.sas_file else {
            return;
        };
        match read_sas(path) {
            Ok(token) => {
                if let Ok(mut sas) = self.sas.lock() {
                    *sas = Some(token);
                }
            }
            Err(e) => tracing::warn!(error = %e, "archive: keeping the SAS token read before"),
        }
    }

    fn client(&self, name: &str) -> Result<BlobClient, ArchiveError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ArchiveError::Config("archive.container_url cannot take a path".into()))?
            .extend(name.split('/'));
        let sas = self.sas.lock().ok().and_then(|s| s.clone());
        url.set_query(sas.as_deref());
        BlobClient::new(url, self.credential.clone(), Some(self.options.clone()))
            .map_err(|e| blob_error(name, "open", &e))
    }

    /// The part's committed blocks; a blob that does not exist yet has none. The ETag is read
    /// first (Get Blob Properties), so a change between it and the listing fails the commit
    /// rather than going unseen.
    pub async fn load(&self, name: &str) -> Result<Part, ArchiveError> {
        let blob = self.client(name)?;
        let etag = match blob.get_properties(None).await {
            Ok(response) => response
                .etag()
                .map_err(|e| blob_error(name, "read the ETag of", &e))?,
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => None,
            Err(e) => return Err(blob_error(name, "read the properties of", &e)),
        };
        let mut part = Part {
            name: name.to_string(),
            client: blob.block_blob_client(),
            committed: Vec::new(),
            ids: HashSet::new(),
            etag,
        };
        if part.etag.is_none() {
            return Ok(part);
        }
        let list = part
            .client
            .get_block_list(BlockListType::Committed, None)
            .await
            .and_then(|response| response.into_model())
            .map_err(|e| blob_error(name, "list the blocks of", &e))?;
        for block in list.committed_blocks.unwrap_or_default() {
            let id = block.name.unwrap_or_default();
            if let Ok(fixed) = <[u8; 32]>::try_from(id.as_slice()) {
                part.ids.insert(fixed);
            }
            part.committed.push(id);
        }
        Ok(part)
    }
}

/// One blob of an hour, as far as this process has committed or read it.
pub struct Part {
    pub name: String,
    client: BlockBlobClient,
    /// In blob order, as the service listed them plus what this process committed.
    committed: Vec<Vec<u8>>,
    ids: HashSet<[u8; 32]>,
    /// None: the blob did not exist when listed.
    etag: Option<Etag>,
}

impl Part {
    pub fn holds(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }

    pub fn blocks(&self) -> usize {
        self.committed.len()
    }

    /// Stages a block (uncommitted until [`Part::commit`]; the service discards staged blocks
    /// nobody commits within a week).
    pub async fn stage(&self, id: &[u8; 32], gzip: Bytes) -> Result<(), ArchiveError> {
        let length = gzip.len() as u64;
        self.client
            .stage_block(id, length, gzip.into(), None)
            .await
            .map(|_| ())
            .map_err(|e| blob_error(&self.name, "stage a block of", &e))
    }

    /// Appends `ids` (staged) to the blob. Fails with [`ArchiveError::Conflict`] when the blob
    /// changed since it was listed: reload it and stage again.
    pub async fn commit(&mut self, ids: &[[u8; 32]]) -> Result<(), ArchiveError> {
        let list = BlockLookupList {
            committed: Some(self.committed.clone()),
            uncommitted: Some(ids.iter().map(|id| id.to_vec()).collect()),
            ..BlockLookupList::default()
        };
        let mut options = BlockBlobClientCommitBlockListOptions {
            blob_content_type: Some("application/x-ndjson".into()),
            blob_content_encoding: None,
            ..BlockBlobClientCommitBlockListOptions::default()
        };
        match &self.etag {
            Some(etag) => options.if_match = Some(etag.clone()),
            None => options.if_none_match = Some(Etag::from("*")),
        }
        let body = list
            .try_into()
            .map_err(|e| blob_error(&self.name, "encode the block list of", &e))?;
        let response = match self.client.commit_block_list(body, Some(options)).await {
            Ok(response) => response,
            Err(e)
                if matches!(
                    e.http_status(),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) =>
            {
                return Err(ArchiveError::Conflict {
                    blob: self.name.clone(),
                });
            }
            Err(e) => return Err(blob_error(&self.name, "commit the block list of", &e)),
        };
        self.etag = response
            .etag()
            .map_err(|e| blob_error(&self.name, "read the ETag of", &e))?;
        for id in ids {
            self.committed.push(id.to_vec());
            self.ids.insert(*id);
        }
        Ok(())
    }
}

/// The token in a SAS file (the part after `?`).
fn read_sas(path: &std::path::Path) -> Result<String, ArchiveError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ArchiveError::Config(format!(
            "archive.sas_file {}: {e}; mount the SAS token's secret there",
            path.display()
        ))
    })?;
    let token = text.trim().trim_start_matches('?').to_string();
    if !token.contains("sig=") {
        return Err(ArchiveError::Config(format!(
            "archive.sas_file {} holds no SAS token (no sig=); write the token the portal's \"Generate SAS\" shows",
            path.display()
        )));
    }
    Ok(token)
}

fn blob_error(blob: &str, operation: &'static str, error: &azure_core::Error) -> ArchiveError {
    // The causes too: a transport error's own text is only "failed to execute request".
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    ArchiveError::Blob {
        blob: blob.to_string(),
        operation,
        status: error.http_status().map(u16::from),
        detail: without_signature(&detail),
    }
}

/// `sig=…` in a text (a URL an error quotes) replaced, so a SAS never reaches a log.
pub fn without_signature(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("REDACTED");
        rest = &rest[at + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::without_signature;

    #[test]
    fn a_sas_signature_never_survives_into_a_message() {
        assert_eq!(
            without_signature("PUT https://a/c/b?sv=2022&sig=abc%2Bdef&se=x failed sig=zz"),
            "PUT https://a/c/b?sv=2022&sig=REDACTED&se=x failed sig=REDACTED"
        );
    }
}
