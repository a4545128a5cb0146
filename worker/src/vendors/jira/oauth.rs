//! OAuth 1.0a (RSA-SHA1) request signing for JIRA Server / Data Center, used
//! when the JIRA SourceConfig's AuthInfo has `PrivateKey` (PEM, PKCS#1 or
//! PKCS#8) and `ConsumerKey`; `Token` holds the access token as the original
//! stored it, `{"Token": "…", "TokenSecret": "…"}`. The interactive "oob"
//! dance that obtains a token is not part of a job: run it once and store the
//! token.

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use reqwest::{Method, Url};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha1::Sha1;

/// RFC 5849 §3.6: everything but unreserved characters is percent-encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// Signs requests for one consumer and access token.
pub struct OAuthSigner {
    consumer_key: String,
    token: String,
    key: SigningKey<Sha1>,
}

impl OAuthSigner {
    /// `token_json` is AuthInfo's `Token`: `{"Token": "…", "TokenSecret": "…"}`
    /// (a bare token string is accepted too).
    pub fn new(
        consumer_key: &str,
        private_key_pem: &str,
        token_json: &str,
    ) -> Result<OAuthSigner, String> {
        let pem = private_key_pem.trim();
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|e| {
                format!("PrivateKey is not a PEM RSA private key (PKCS#1 or PKCS#8): {e}")
            })?;
        let token = match serde_json::from_str::<serde_json::Value>(token_json) {
            Ok(v) => v
                .get("Token")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
            Err(_) => token_json.trim().to_string(),
        };
        if token.is_empty() {
            return Err(
                "OAuth needs an access token in Token ({\"Token\":\"…\",\"TokenSecret\":\"…\"}); \
                        obtain one with JIRA's OAuth dance first"
                    .into(),
            );
        }
        Ok(OAuthSigner {
            consumer_key: consumer_key.to_string(),
            token,
            key: SigningKey::<Sha1>::new(key),
        })
    }

    /// The `Authorization` header value for `method url` (query parameters
    /// are part of the signature; a JSON body is not, per RFC 5849).
    pub fn header(&self, method: &Method, url: &Url) -> String {
        let nonce: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            .to_string();
        self.header_with(method, url, &nonce, &timestamp)
    }

    fn header_with(&self, method: &Method, url: &Url, nonce: &str, timestamp: &str) -> String {
        let oauth = [
            ("oauth_consumer_key", self.consumer_key.as_str()),
            ("oauth_nonce", nonce),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", timestamp),
            ("oauth_token", self.token.as_str()),
            ("oauth_version", "1.0"),
        ];
        let signature = base64::engine::general_purpose::STANDARD.encode(
            self.key
                .sign(base_string(method, url, &oauth).as_bytes())
                .to_bytes(),
        );
        let mut parts: Vec<String> = oauth
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", enc(v)))
            .collect();
        parts.push(format!("oauth_signature=\"{}\"", enc(&signature)));
        parts.sort();
        format!("OAuth {}", parts.join(", "))
    }
}

/// RFC 5849 §3.4.1: METHOD & base URL & sorted, encoded parameters.
fn base_string(method: &Method, url: &Url, oauth: &[(&str, &str)]) -> String {
    let mut params: Vec<(String, String)> =
        url.query_pairs().map(|(k, v)| (enc(&k), enc(&v))).collect();
    params.extend(oauth.iter().map(|(k, v)| (enc(k), enc(v))));
    params.sort();
    let normalized = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut base = format!(
        "{}://{}",
        url.scheme(),
        url.host_str().unwrap_or_default().to_lowercase()
    );
    if let Some(port) = url.port() {
        base.push_str(&format!(":{port}"));
    }
    base.push_str(url.path());
    format!(
        "{}&{}&{}",
        method.as_str().to_uppercase(),
        enc(&base),
        enc(&normalized)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;

    #[test]
    fn the_base_string_follows_rfc_5849() {
        let url = Url::parse("https://JIRA.example.com:8443/rest/api/2/user?username=j%20doe&b=2")
            .unwrap();
        let s = base_string(
            &Method::GET,
            &url,
            &[("oauth_nonce", "n"), ("oauth_consumer_key", "aegis")],
        );
        assert_eq!(
            s,
            "GET&https%3A%2F%2Fjira.example.com%3A8443%2Frest%2Fapi%2F2%2Fuser&b%3D2%26oauth_consumer_key%3Daegis%26oauth_nonce%3Dn%26username%3Dj%2520doe"
        );
    }

    #[test]
    fn headers_carry_a_verifiable_rsa_sha1_signature() {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let signer =
            OAuthSigner::new("aegis", &pem, r#"{"Token":"tok","TokenSecret":"s"}"#).unwrap();
        let url = Url::parse("http://127.0.0.1:8080/rest/api/2/search").unwrap();
        let header = signer.header_with(&Method::POST, &url, "abc", "1700000000");
        assert!(
            header.starts_with(
                "OAuth oauth_consumer_key=\"aegis\", oauth_nonce=\"abc\", oauth_signature=\""
            ),
            "{header}"
        );
        assert!(
            header.contains("oauth_token=\"tok\"")
                && header.contains("oauth_signature_method=\"RSA-SHA1\"")
        );
        let sig = header
            .split("oauth_signature=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let sig = percent_encoding::percent_decode_str(sig)
            .decode_utf8()
            .unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sig.as_bytes())
            .unwrap();
        let oauth = [
            ("oauth_consumer_key", "aegis"),
            ("oauth_nonce", "abc"),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", "1700000000"),
            ("oauth_token", "tok"),
            ("oauth_version", "1.0"),
        ];
        let verifying = VerifyingKey::<Sha1>::new(key.to_public_key());
        let signature = Signature::try_from(bytes.as_slice()).unwrap();
        verifying
            .verify(
                base_string(&Method::POST, &url, &oauth).as_bytes(),
                &signature,
            )
            .expect("valid signature");
    }

    #[test]
    fn a_missing_token_or_key_is_a_clear_error() {
        let Err(e) = OAuthSigner::new("c", "not a key", "{}") else {
            panic!("accepted a bad key")
        };
        assert!(e.contains("PrivateKey"), "{e}");
    }
}
