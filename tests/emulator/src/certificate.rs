//! Client certificates: the test side makes one, the token endpoint checks assertions signed
//! with it (the JWT's x5t thumbprint, its claims, and its RS256 signature).

use base64::Engine as _;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use openssl::x509::{X509, X509NameBuilder};

/// A self-signed client certificate: (PKCS#12 DER protected by `password`, certificate PEM).
pub fn make_client_certificate(
    password: &str,
) -> Result<(Vec<u8>, String), openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "m365-sentinel test client")?;
    let name = name.build();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    builder.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    builder.set_not_after(Asn1Time::days_from_now(2)?.as_ref())?;
    builder.sign(&key, MessageDigest::sha256())?;
    let cert = builder.build();
    let pkcs12 = Pkcs12::builder()
        .name("client")
        .pkey(&key)
        .cert(&cert)
        .build2(password)?;
    Ok((
        pkcs12.to_der()?,
        String::from_utf8_lossy(&cert.to_pem()?).into_owned(),
    ))
}

fn json_part(part: &str) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `assertion` is a JWT for `client_id` at the token endpoint of `tenant`, signed with
/// the key of `cert_pem`, unexpired.
pub(crate) fn assertion_is_valid(
    assertion: &str,
    cert_pem: &str,
    client_id: &str,
    tenant: &str,
) -> bool {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return false;
    };
    let (Some(header_json), Some(claims_json)) = (json_part(header), json_part(claims)) else {
        return false;
    };
    let Ok(cert) = X509::from_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let thumbprint = cert.digest(MessageDigest::sha1()).map(|d| d.to_vec());
    // x5t is base64 of the SHA-1 digest; senders use either alphabet.
    let x5t = header_json["x5t"].as_str().and_then(|x| {
        let x = x.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(x)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x))
            .ok()
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims_ok = header_json["alg"] == "RS256"
        && thumbprint.is_ok_and(|t| x5t.as_deref() == Some(t.as_slice()))
        && claims_json["iss"] == client_id
        && claims_json["sub"] == client_id
        && claims_json["aud"]
            .as_str()
            .is_some_and(|aud| aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token")))
        && claims_json["exp"].as_i64().is_some_and(|exp| exp > now);
    if !claims_ok {
        return false;
    }
    let Ok(signature) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature.trim_end_matches('='))
    else {
        return false;
    };
    let Ok(key) = cert.public_key() else {
        return false;
    };
    let Ok(mut verifier) = Verifier::new(MessageDigest::sha256(), &key) else {
        return false;
    };
    verifier
        .update(format!("{header}.{claims}").as_bytes())
        .and_then(|()| verifier.verify(&signature))
        .unwrap_or(false)
}
