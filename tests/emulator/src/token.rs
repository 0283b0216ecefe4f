//! Entra ID's v2 token endpoint, client credentials grant with a client secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Form;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::Shared;

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": code, "error_description": description });
    (status, Json(body)).into_response()
}

pub(crate) async fn issue(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let config = &shared.config;
    // The workspace's tenant, or a tenant of the Management API with a secret of its own.
    let secret = if tenant == config.tenant_id {
        config.client_secret.clone()
    } else {
        match shared.state().mgmt.secret_of(&tenant) {
            Some(s) => s.to_string(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant",
                    "AADSTS90002: Tenant not found.",
                );
            }
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003",
        );
    }
    if form.get("client_id") != Some(&config.client_id) {
        return error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found.",
        );
    }
    let authenticated = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(given), None) => given == &secret,
        (None, Some(assertion)) => {
            form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && config.client_certificate_pem.as_deref().is_some_and(|pem| {
                    crate::certificate::assertion_is_valid(
                        assertion,
                        pem,
                        &config.client_id,
                        &tenant,
                    )
                })
        }
        _ => false,
    };
    if !authenticated {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret or assertion provided.",
        );
    }
    if !form.get("scope").is_some_and(|s| s.ends_with("/.default")) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: scope must end in /.default",
        );
    }
    let token = format!(
        "emulated-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let expires_in = config.token_lifetime.as_secs();
    shared.state().issued_tokens.push(crate::Issued {
        token: token.clone(),
        tenant: tenant.clone(),
        scope: form.get("scope").cloned().unwrap_or_default(),
        expires: Instant::now() + config.token_lifetime,
    });
    Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": token,
    }))
    .into_response()
}
