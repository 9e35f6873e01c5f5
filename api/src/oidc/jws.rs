//! ID token signatures: a compact JWS (RFC 7515) checked against the provider's JWKS (RFC 7517)
//! with ring, the project's one crypto library.
//!
//! Only asymmetric algorithms are accepted ([`ALLOWED_ALGORITHMS`]): `none` and the HMAC family
//! (`HS*`, which would make the client secret a signing key anyone holding it can use) are
//! refused by name before any key is looked at. A key is used only for its own family (an RSA key
//! never verifies an ES256 token), and only if its `alg` and `use`, when given, agree. Header
//! parameters marked critical (`crit`) are refused: none is understood.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The algorithms an ID token may be signed with.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// Why a token's signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Not three base64url parts, or a header or payload that is not a JSON object.
    #[error("the ID token is not a well-formed JWS: {0}")]
    Malformed(&'static str),
    /// `none`, an HMAC algorithm, or one not supported.
    #[error("the ID token is signed with {0:?}, which is not accepted")]
    AlgorithmNotAllowed(String),
    /// The JWKS holds no key for this token (its `kid`, or its algorithm's key type).
    #[error("the provider's keys hold none for this ID token (kid {0:?})")]
    UnknownKey(Option<String>),
    /// A key was found and the signature does not verify with it.
    #[error("the ID token's signature does not verify")]
    BadSignature,
}

/// A provider's key set, as its `jwks_uri` serves it. Keys of unknown types are kept and never
/// match.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One public key of a [`JwkSet`].
#[derive(Clone, Debug, Deserialize)]
pub struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

impl JwkSet {
    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Verifies `token`'s signature with a key of `keys`; returns its claims.
pub fn verify(token: &str, keys: &JwkSet) -> Result<Map<String, Value>, JwsError> {
    let (header, payload, signature) = split(token)?;
    if !ALLOWED_ALGORITHMS.contains(&header.alg.as_str()) {
        return Err(JwsError::AlgorithmNotAllowed(header.alg));
    }
    if header.crit.is_some() {
        return Err(JwsError::Malformed(
            "critical header parameters are not supported",
        ));
    }
    let signed = token
        .rsplit_once('.')
        .map(|(signed, _)| signed.as_bytes())
        .ok_or(JwsError::Malformed("no signature"))?;
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.fits(&header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(JwsError::UnknownKey(header.kid));
    }
    if !candidates
        .iter()
        .any(|key| key.verifies(&header.alg, signed, &signature))
    {
        return Err(JwsError::BadSignature);
    }
    let claims: Value = serde_json::from_slice(&payload)
        .map_err(|_| JwsError::Malformed("the payload is not JSON"))?;
    match claims {
        Value::Object(claims) => Ok(claims),
        _ => Err(JwsError::Malformed("the payload is not a JSON object")),
    }
}

fn split(token: &str) -> Result<(Header, Vec<u8>, Vec<u8>), JwsError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("not three dot-separated parts"));
    };
    let decode = |part: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwsError::Malformed(what))
    };
    let header_bytes = decode(header, "the header is not base64url")?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| JwsError::Malformed("the header is not a JSON object with an alg"))?;
    Ok((
        header,
        decode(payload, "the payload is not base64url")?,
        decode(signature, "the signature is not base64url")?,
    ))
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    fn fits(&self, alg: &str) -> bool {
        let family = match alg.get(..2) {
            Some("RS" | "PS") => "RSA",
            Some("ES") => "EC",
            _ => return false,
        };
        let curve_ok = match alg {
            "ES256" => self.crv.as_deref() == Some("P-256"),
            "ES384" => self.crv.as_deref() == Some("P-384"),
            _ => true,
        };
        self.kty == family
            && curve_ok
            && self.alg.as_deref().is_none_or(|a| a == alg)
            && self.usage.as_deref().is_none_or(|u| u == "sig")
    }

    fn verifies(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        let field = |value: &Option<String>| {
            value
                .as_deref()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        };
        if self.kty == "RSA" {
            let (Some(n), Some(e)) = (field(&self.n), field(&self.e)) else {
                return false;
            };
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            return RsaPublicKeyComponents { n, e }
                .verify(params, signed, sig)
                .is_ok();
        }
        let (Some(x), Some(y)) = (field(&self.x), field(&self.y)) else {
            return false;
        };
        let params = match alg {
            "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
            "ES384" => &signature::ECDSA_P384_SHA384_FIXED,
            _ => return false,
        };
        // The uncompressed point: 0x04, then x and y.
        let mut point = vec![4u8];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        UnparsedPublicKey::new(params, point)
            .verify(signed, sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key made here, its JWK, and tokens it signs.
    struct Signer {
        pair: signature::EcdsaKeyPair,
        jwk: Jwk,
    }

    impl Signer {
        fn new(kid: &str) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
            use signature::KeyPair;
            let point = pair.public_key().as_ref();
            let jwk = Jwk {
                kty: "EC".into(),
                kid: Some(kid.into()),
                alg: None,
                usage: Some("sig".into()),
                n: None,
                e: None,
                crv: Some("P-256".into()),
                x: Some(b64(&point[1..33])),
                y: Some(b64(&point[33..])),
            };
            Self { pair, jwk }
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let signed = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let rng = ring::rand::SystemRandom::new();
            let sig = self.pair.sign(&rng, signed.as_bytes()).unwrap();
            format!("{signed}.{}", b64(sig.as_ref()))
        }
    }

    fn claims() -> Value {
        serde_json::json!({ "sub": "alice" })
    }

    #[test]
    fn a_token_verifies_with_its_key_and_not_with_another() {
        let signer = Signer::new("k1");
        let other = Signer::new("k1");
        let token = signer.sign(&serde_json::json!({"alg": "ES256", "kid": "k1"}), &claims());
        let keys = JwkSet {
            keys: vec![signer.jwk.clone()],
        };
        assert_eq!(verify(&token, &keys).unwrap()["sub"], "alice");
        let wrong = JwkSet {
            keys: vec![other.jwk.clone()],
        };
        assert_eq!(verify(&token, &wrong), Err(JwsError::BadSignature));
        // A changed payload under the same signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!("{head}.{}.{sig}", b64(br#"{"sub":"mallory"}"#));
        assert_eq!(verify(&forged, &keys), Err(JwsError::BadSignature));
    }

    #[test]
    fn none_hmac_unknown_keys_and_wrong_families_are_refused() {
        let signer = Signer::new("k1");
        let keys = JwkSet {
            keys: vec![signer.jwk.clone()],
        };
        for alg in ["none", "HS256", "HS512", "EdDSA"] {
            let token = format!(
                "{}.{}.",
                b64(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#).as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            assert_eq!(
                verify(&token, &keys),
                Err(JwsError::AlgorithmNotAllowed(alg.into())),
                "{alg}"
            );
        }
        let token = signer.sign(&serde_json::json!({"alg": "ES256", "kid": "k2"}), &claims());
        assert_eq!(
            verify(&token, &keys),
            Err(JwsError::UnknownKey(Some("k2".into())))
        );
        // An EC key never verifies an RS256 token.
        let token = signer.sign(&serde_json::json!({"alg": "RS256", "kid": "k1"}), &claims());
        assert_eq!(
            verify(&token, &keys),
            Err(JwsError::UnknownKey(Some("k1".into())))
        );
        let token = signer.sign(
            &serde_json::json!({"alg": "ES256", "crit": ["exp"]}),
            &claims(),
        );
        assert!(matches!(verify(&token, &keys), Err(JwsError::Malformed(_))));
        for bad in ["a.b", "a.b.c.d", "!!.e30.", ""] {
            assert!(
                matches!(verify(bad, &keys), Err(JwsError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
