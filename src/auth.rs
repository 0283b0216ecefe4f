//! Credentials for Entra ID tokens, chosen explicitly in config (there is no "default" chain in
//! production: a connector must fail loudly, not fall back to whatever identity it finds). Tokens
//! come from azure_identity, which caches them and refreshes them before they expire.

use std::path::PathBuf;
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use serde::Deserialize;

/// Which Azure cloud: decides the login host and the token audiences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    #[default]
    Public,
    UsGovernment,
    China,
}

impl Cloud {
    pub fn authority_host(self) -> &'static str {
        match self {
            Self::Public => "https://login.microsoftonline.com",
            Self::UsGovernment => "https://login.microsoftonline.us",
            Self::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Host suffix of the legacy Data Collector API (`<workspace>.<suffix>`).
    pub fn data_collector_suffix(self) -> &'static str {
        match self {
            Self::Public => "ods.opinsights.azure.com",
            Self::UsGovernment => "ods.opinsights.azure.us",
            Self::China => "ods.opinsights.azure.cn",
        }
    }

    /// The Logs Ingestion API's token scope.
    pub fn monitor_scope(self) -> &'static str {
        match self {
            Self::Public => "https://monitor.azure.com/.default",
            Self::UsGovernment => "https://monitor.azure.us/.default",
            Self::China => "https://monitor.azure.cn/.default",
        }
    }

    /// The Log Analytics Query API (`/v1/workspaces/{id}/query`) and its token scope, per
    /// learn.microsoft.com/azure/azure-monitor/logs/api/access-api (sovereign clouds listed
    /// there).
    pub fn query_api(self) -> (&'static str, &'static str) {
        match self {
            Self::Public => (
                "https://api.loganalytics.io",
                "https://api.loganalytics.io/.default",
            ),
            Self::UsGovernment => (
                "https://api.loganalytics.us",
                "https://api.loganalytics.us/.default",
            ),
            Self::China => (
                "https://api.loganalytics.azure.cn",
                "https://api.loganalytics.azure.cn/.default",
            ),
        }
    }
}

/// How the connector proves who it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// An app registration's client secret, read from a file (a mounted Kubernetes Secret) or an
    /// environment variable; never written in the config itself.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        secret_file: Option<PathBuf>,
        #[serde(default)]
        secret_env: Option<String>,
    },
    /// An app registration's certificate: a PKCS#12 (.pfx) file holding the certificate and its
    /// RSA private key, with an optional password file.
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        certificate_file: PathBuf,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    /// AKS workload identity: the federated token file the webhook mounts. Unset fields fall back
    /// to AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE.
    WorkloadIdentity {
        #[serde(default)]
        tenant_id: Option<String>,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// The VM's or App Service's managed identity; `client_id` picks a user-assigned one.
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
    },
}

/// An Entra identity of a source (an event hub, a storage account), in its `auth` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraAuth {
    pub credential: CredentialConfig,
    #[serde(default)]
    pub cloud: Cloud,
    #[serde(default)]
    pub authority_host: Option<String>,
}

impl EntraAuth {
    /// The credential, its token requests going through `http` (proxy and CA settings).
    pub fn build(&self, http: &reqwest::Client) -> Result<Arc<dyn TokenCredential>, AuthError> {
        let transport = Transport::new(Arc::new(http.clone()));
        credential(
            &self.credential,
            self.cloud,
            self.authority_host.as_deref(),
            Some(transport),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credential: {0}")]
    Config(String),
    #[error("credential could not be created: {0}")]
    Create(String),
}

/// Builds the credential. `authority_host` overrides the cloud's login host (sovereign or
/// private clouds); `transport` is the HTTP client every token request goes through (the same
/// proxy and CA settings as the sinks).
pub fn credential(
    config: &CredentialConfig,
    cloud: Cloud,
    authority_host: Option<&str>,
    transport: Option<Transport>,
) -> Result<Arc<dyn TokenCredential>, AuthError> {
    let mut client_options = ClientOptions {
        transport,
        ..ClientOptions::default()
    };
    client_options.cloud = Some(Arc::new(match (cloud, authority_host) {
        (_, Some(host)) => {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.to_string();
            CloudConfiguration::Custom(custom)
        }
        (Cloud::Public, None) => CloudConfiguration::AzurePublic,
        (Cloud::UsGovernment, None) => CloudConfiguration::AzureGovernment,
        (Cloud::China, None) => CloudConfiguration::AzureChina,
    }));
    let create = |e: azure_core::Error| AuthError::Create(e.to_string());
    Ok(match config {
        CredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            secret_file,
            secret_env,
        } => {
            let secret = read_secret(secret_file.as_ref(), secret_env.as_deref())?;
            let options = azure_identity::ClientSecretCredentialOptions { client_options };
            azure_identity::ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret),
                Some(options),
            )
            .map_err(create)?
        }
        CredentialConfig::ClientCertificate {
            tenant_id,
            client_id,
            certificate_file,
            password_file,
        } => {
            let certificate = std::fs::read(certificate_file).map_err(|e| {
                AuthError::Config(format!(
                    "certificate_file {}: {e}",
                    certificate_file.display()
                ))
            })?;
            let password = match password_file {
                Some(path) => Some(Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            AuthError::Config(format!("password_file {}: {e}", path.display()))
                        })?
                        .trim()
                        .to_string(),
                )),
                None => None,
            };
            let options = azure_identity::ClientCertificateCredentialOptions {
                client_options,
                password,
            };
            azure_identity::ClientCertificateCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                azure_core::credentials::SecretBytes::new(certificate),
                Some(options),
            )
            .map_err(create)?
        }
        CredentialConfig::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => {
            let options = azure_identity::WorkloadIdentityCredentialOptions {
                credential_options: azure_identity::ClientAssertionCredentialOptions {
                    client_options,
                },
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file.clone(),
            };
            azure_identity::WorkloadIdentityCredential::new(Some(options)).map_err(create)?
        }
        CredentialConfig::ManagedIdentity { client_id } => {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
                client_options,
            };
            azure_identity::ManagedIdentityCredential::new(Some(options)).map_err(create)?
        }
    })
}

fn read_secret(file: Option<&PathBuf>, env: Option<&str>) -> Result<String, AuthError> {
    match (file, env) {
        (Some(path), None) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| AuthError::Config(format!("secret_file {}: {e}", path.display()))),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| AuthError::Config(format!("secret_env {var} is not set"))),
        _ => Err(AuthError::Config(
            "client_secret needs exactly one of secret_file and secret_env".into(),
        )),
    }
}
