//! Signed tokens (JWT) that an integrator's backend issues per show: HS256 with a secret
//! shared with the node (`--jwt-secret`), ES256 with the node holding only the public key
//! (`--jwt-public-key`). A token says what it allows:
//!
//! ```json
//! {"stream": "show*", "ops": ["play"], "exp": 1767225600, "nbf": 1767222000}
//! ```
//!
//! `stream` is a stream name, or a prefix ending in `*`; `ops` holds `publish`, `play` or
//! both; `exp` is required, `nbf` optional (seconds since the epoch, with [`LEEWAY_SECS`] of
//! clock skew allowed). Verifying is a pure function of the token, the keys and `now`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::Action;
use cascade_protocol::StreamId;

/// Clock skew tolerated between the token's issuer and the node, on `exp` and `nbf`.
pub const LEEWAY_SECS: f64 = 30.0;

/// The keys tokens are verified with; empty when the node takes no signed tokens.
#[derive(Clone, Default)]
pub struct JwtKeys {
    hs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("hs256", &self.hs256.is_some())
            .field("es256", &self.es256.is_some())
            .finish()
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    /// The public key file is not a PEM EC P-256 public key.
    #[error("not a PEM-encoded EC (P-256) public key: {0}")]
    PublicKey(jsonwebtoken::errors::Error),
}

/// Why a token was refused. Logged and counted by the node, never told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a JWT, or its claims are missing or of the wrong type.
    Malformed,
    /// Signed with an algorithm the node has no key for.
    UnknownAlgorithm,
    /// The signature does not verify with the node's key.
    BadSignature,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Its `stream` does not cover the stream asked for.
    WrongStream,
    /// Its `ops` do not include what was asked (publish or play).
    WrongOperation,
}

impl TokenRefusal {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::UnknownAlgorithm => "unknown_algorithm",
            TokenRefusal::BadSignature => "bad_signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::WrongStream => "wrong_stream",
            TokenRefusal::WrongOperation => "wrong_operation",
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Claims {
    /// A stream name, or a prefix ending in `*`.
    pub stream: String,
    /// `publish`, `play`.
    pub ops: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: f64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
}

impl Claims {
    /// Whether the claims cover `action` on `stream` at `now` (seconds since the epoch).
    pub fn allow(&self, stream: &StreamId, action: Action, now: f64) -> Result<(), TokenRefusal> {
        if now > self.exp + LEEWAY_SECS {
            return Err(TokenRefusal::Expired);
        }
        if self.nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
            return Err(TokenRefusal::NotYetValid);
        }
        let covers = match self.stream.strip_suffix('*') {
            Some(prefix) => stream.as_str().starts_with(prefix),
            None => self.stream == stream.as_str(),
        };
        if !covers {
            return Err(TokenRefusal::WrongStream);
        }
        let op = match action {
            Action::Publish => "publish",
            Action::Play => "play",
        };
        if !self.ops.iter().any(|o| o == op) {
            return Err(TokenRefusal::WrongOperation);
        }
        Ok(())
    }
}

impl JwtKeys {
    /// Keys from the shared secret and the public key (PEM), either or both.
    pub fn new(secret: Option<&str>, public_key_pem: Option<&[u8]>) -> Result<Self, JwtKeyError> {
        Ok(JwtKeys {
            hs256: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            es256: public_key_pem
                .map(DecodingKey::from_ec_pem)
                .transpose()
                .map_err(JwtKeyError::PublicKey)?,
        })
    }

    /// True when the node takes no signed tokens.
    pub fn is_empty(&self) -> bool {
        self.hs256.is_none() && self.es256.is_none()
    }

    /// Whether `token` may be a JWT at all (three base64url parts): anything else is a
    /// static token that did not match.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// Verifies `token`'s signature and returns its claims, not yet checked against a
    /// request ([`Claims::allow`]).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        }
        .ok_or(TokenRefusal::UnknownAlgorithm)?;
        // Times are checked by `Claims::allow`, against the caller's clock.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => {
                    TokenRefusal::BadSignature
                }
                ErrorKind::InvalidAlgorithm => TokenRefusal::UnknownAlgorithm,
                _ => TokenRefusal::Malformed,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const NOW: f64 = 1_800_000_000.0;

    fn claims(stream: &str, ops: &[&str], exp: f64) -> Claims {
        Claims {
            stream: stream.into(),
            ops: ops.iter().map(|s| s.to_string()).collect(),
            exp,
            nbf: None,
        }
    }

    fn hs256(claims: &Claims, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn id(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    #[test]
    fn a_prefix_token_covers_the_streams_it_names_for_its_operations_only() {
        let play_shows = claims("show*", &["play"], NOW + 60.0);
        assert_eq!(play_shows.allow(&id("show1"), Action::Play, NOW), Ok(()));
        assert_eq!(
            play_shows.allow(&id("other"), Action::Play, NOW),
            Err(TokenRefusal::WrongStream)
        );
        assert_eq!(
            play_shows.allow(&id("show1"), Action::Publish, NOW),
            Err(TokenRefusal::WrongOperation)
        );
        let exact = claims("show", &["publish", "play"], NOW + 60.0);
        assert_eq!(exact.allow(&id("show"), Action::Publish, NOW), Ok(()));
        assert_eq!(
            exact.allow(&id("show1"), Action::Play, NOW),
            Err(TokenRefusal::WrongStream),
            "without `*` the name is exact"
        );
        assert_eq!(
            claims("*", &["play"], NOW + 60.0).allow(&id("any"), Action::Play, NOW),
            Ok(())
        );
    }

    #[test]
    fn expiry_and_not_before_allow_for_half_a_minute_of_clock_skew() {
        let token = claims("s", &["play"], NOW);
        assert_eq!(token.allow(&id("s"), Action::Play, NOW + 29.0), Ok(()));
        assert_eq!(
            token.allow(&id("s"), Action::Play, NOW + 31.0),
            Err(TokenRefusal::Expired)
        );
        let early = Claims {
            nbf: Some(NOW),
            ..claims("s", &["play"], NOW + 600.0)
        };
        assert_eq!(early.allow(&id("s"), Action::Play, NOW - 29.0), Ok(()));
        assert_eq!(
            early.allow(&id("s"), Action::Play, NOW - 31.0),
            Err(TokenRefusal::NotYetValid)
        );
    }

    #[test]
    fn an_hs256_token_verifies_with_its_secret_and_not_with_another() {
        let keys = JwtKeys::new(Some("the secret"), None).unwrap();
        let issued = claims("show*", &["play"], NOW);
        assert_eq!(
            keys.verify(&hs256(&issued, "the secret")),
            Ok(issued.clone())
        );
        assert_eq!(
            keys.verify(&hs256(&issued, "another secret")),
            Err(TokenRefusal::BadSignature)
        );
        assert_eq!(keys.verify("a.b.c"), Err(TokenRefusal::Malformed));
        assert_eq!(keys.verify("static-token"), Err(TokenRefusal::Malformed));
    }

    #[test]
    fn an_es256_token_verifies_with_the_public_key_and_hs256_is_refused_without_a_secret() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let keys = JwtKeys::new(None, Some(pair.public_key_pem().as_bytes())).unwrap();
        let issued = claims("cam", &["publish"], NOW);
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &issued, &signing).unwrap();
        assert_eq!(keys.verify(&token), Ok(issued.clone()));
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert_eq!(keys.verify(&forged), Err(TokenRefusal::BadSignature));
        assert_eq!(
            keys.verify(&hs256(&issued, "guess")),
            Err(TokenRefusal::UnknownAlgorithm),
            "an HS256 token is not checked against the public key"
        );
    }

    #[test]
    fn claims_of_the_wrong_shape_are_malformed() {
        let keys = JwtKeys::new(Some("k"), None).unwrap();
        let no_exp = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"stream": "s", "ops": ["play"]}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(keys.verify(&no_exp), Err(TokenRefusal::Malformed));
        let ops_not_a_list = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"stream": "s", "ops": "play", "exp": NOW}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(keys.verify(&ops_not_a_list), Err(TokenRefusal::Malformed));
    }

    #[test]
    fn a_public_key_file_that_is_not_an_ec_key_is_refused_at_start() {
        assert!(JwtKeys::new(None, Some(b"-----BEGIN NONSENSE-----")).is_err());
    }
}
