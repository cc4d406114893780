//! Who may publish and who may play: stream keys, node-wide tokens and signed tokens
//! ([`jwt`]), as a pure decision ([`AccessPolicy::check`]); [`AccessPolicy::authorize`]
//! adds the clock, and logs and counts each refusal with its reason (the client only hears
//! that its token is missing or not valid).

pub mod jwt;

use std::collections::HashMap;

use cascade_protocol::StreamId;
use cascade_protocol::secret::constant_time_eq;

use crate::config::StreamKeys;

/// Publish or play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// WHIP.
    Publish,
    /// WHEP.
    Play,
}

impl Action {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

/// The configured secrets.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Node-wide publish token.
    pub publish_token: Option<String>,
    /// Node-wide play token.
    pub play_token: Option<String>,
    /// Per-stream keys.
    pub streams: HashMap<String, StreamKeys>,
    /// Keys of signed tokens (`--jwt-secret`, `--jwt-public-key`); with any, every stream
    /// needs a token to publish and to play.
    pub jwt: jwt::JwtKeys,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token presented.
    MissingToken,
    /// A token that matches nothing configured for this stream and action, and is no JWT
    /// (or the node takes none).
    WrongToken,
    /// A signed token that does not allow this request.
    Token(jwt::TokenRefusal),
}

impl Denied {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Denied::MissingToken => "missing_token",
            Denied::WrongToken => "wrong_token",
            Denied::Token(refusal) => refusal.label(),
        }
    }
}

impl AccessPolicy {
    /// True when anybody may publish (said loudly at start).
    pub fn publish_is_open(&self) -> bool {
        self.publish_token.is_none()
            && self.jwt.is_empty()
            && self.streams.values().all(|k| k.publish_key.is_none())
    }

    /// True when anybody may play.
    pub fn play_is_open(&self) -> bool {
        self.play_token.is_none()
            && self.jwt.is_empty()
            && self.streams.values().all(|k| k.play_key.is_none())
    }

    /// The claims of `token` if it is a signed token that verifies (whatever it allows).
    pub fn claims(&self, token: Option<&str>) -> Option<jwt::Claims> {
        let token = token.filter(|t| !self.jwt.is_empty() && jwt::JwtKeys::looks_like_jwt(t))?;
        self.jwt.verify(token).ok()
    }

    /// [`AccessPolicy::check`] at the current time; a refusal is logged with its reason and
    /// counted in `cascade_access_refusals_total{action, reason, via}`. `via` names the
    /// door (whip, whep, hls, rtmp, srt, ...).
    pub fn authorize(
        &self,
        stream: &StreamId,
        action: Action,
        token: Option<&str>,
        via: &'static str,
    ) -> Result<(), Denied> {
        self.check(
            stream,
            action,
            token,
            cascade_protocol::clock::unix_seconds(),
        )
        .inspect_err(|denied| {
            metrics::counter!(
                "cascade_access_refusals_total",
                "action" => action.label(),
                "reason" => denied.label(),
                "via" => via,
            )
            .increment(1);
            tracing::info!(
                %stream,
                action = action.label(),
                via,
                reason = denied.label(),
                "refused a client: {}",
                match denied {
                    Denied::MissingToken => "it presented no token",
                    Denied::WrongToken => "its token matches no key or token of this stream",
                    Denied::Token(_) => "its signed token does not allow this",
                }
            );
        })
    }

    /// Decides a request for `action` on `stream` carrying `bearer`, at `now` (seconds
    /// since the epoch, for signed tokens).
    pub fn check(
        &self,
        stream: &StreamId,
        action: Action,
        bearer: Option<&str>,
        now: f64,
    ) -> Result<(), Denied> {
        let keys = self.streams.get(stream.as_str());
        let (stream_key, node_token) = match action {
            Action::Publish => (
                keys.and_then(|k| k.publish_key.as_deref()),
                self.publish_token.as_deref(),
            ),
            Action::Play => (
                keys.and_then(|k| k.play_key.as_deref()),
                self.play_token.as_deref(),
            ),
        };
        let accepted: Vec<&str> = stream_key.into_iter().chain(node_token).collect();
        if accepted.is_empty() && self.jwt.is_empty() {
            return Ok(());
        }
        let presented = bearer.ok_or(Denied::MissingToken)?;
        if accepted
            .iter()
            .any(|secret| constant_time_eq(secret.as_bytes(), presented.as_bytes()))
        {
            return Ok(());
        }
        if self.jwt.is_empty() || !jwt::JwtKeys::looks_like_jwt(presented) {
            return Err(Denied::WrongToken);
        }
        let claims = self.jwt.verify(presented).map_err(Denied::Token)?;
        claims.allow(stream, action, now).map_err(Denied::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_and_node_tokens_both_open_the_door() {
        let mut policy = AccessPolicy {
            publish_token: Some("node".into()),
            ..Default::default()
        };
        policy.streams.insert(
            "studio".into(),
            StreamKeys {
                publish_key: Some("studio-key".into()),
                ..Default::default()
            },
        );
        let studio = StreamId::parse("studio").unwrap();
        let other = StreamId::parse("other").unwrap();
        assert_eq!(
            policy.check(&studio, Action::Publish, Some("studio-key"), 0.0),
            Ok(())
        );
        assert_eq!(
            policy.check(&studio, Action::Publish, Some("node"), 0.0),
            Ok(())
        );
        assert_eq!(
            policy.check(&other, Action::Publish, Some("studio-key"), 0.0),
            Err(Denied::WrongToken)
        );
        assert_eq!(
            policy.check(&other, Action::Publish, None, 0.0),
            Err(Denied::MissingToken)
        );
        assert_eq!(
            policy.check(&other, Action::Play, None, 0.0),
            Ok(()),
            "play is open"
        );
        assert!(!policy.publish_is_open());
        assert!(policy.play_is_open());
    }

    #[test]
    fn with_a_jwt_key_every_stream_needs_a_token_and_static_keys_still_work() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let mut policy = AccessPolicy {
            jwt: jwt::JwtKeys::new(Some("secret"), None).unwrap(),
            ..Default::default()
        };
        policy.streams.insert(
            "studio".into(),
            StreamKeys {
                play_key: Some("studio-play".into()),
                ..Default::default()
            },
        );
        assert!(!policy.publish_is_open() && !policy.play_is_open());
        let now = 1_800_000_000.0;
        let token = |stream: &str, exp: f64| {
            let claims = jwt::Claims {
                stream: stream.into(),
                ops: vec!["play".into()],
                exp,
                nbf: None,
            };
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"secret"),
            )
            .unwrap()
        };
        let show1 = StreamId::parse("show1").unwrap();
        let studio = StreamId::parse("studio").unwrap();
        let play = |stream: &StreamId, bearer: Option<&str>| {
            policy.check(stream, Action::Play, bearer, now)
        };
        assert_eq!(play(&show1, Some(&token("show*", now + 60.0))), Ok(()));
        assert_eq!(play(&show1, None), Err(Denied::MissingToken));
        assert_eq!(
            play(&show1, Some(&token("show*", now - 3600.0))),
            Err(Denied::Token(jwt::TokenRefusal::Expired))
        );
        assert_eq!(
            play(&studio, Some(&token("show*", now + 60.0))),
            Err(Denied::Token(jwt::TokenRefusal::WrongStream))
        );
        assert_eq!(play(&studio, Some("studio-play")), Ok(()), "the stream key");
        assert_eq!(play(&show1, Some("guess")), Err(Denied::WrongToken));
    }
}
