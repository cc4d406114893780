//! Who may publish and who may play: stream keys and node-wide tokens, as a pure decision.

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

/// The configured secrets.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Node-wide publish token.
    pub publish_token: Option<String>,
    /// Node-wide play token.
    pub play_token: Option<String>,
    /// Per-stream keys.
    pub streams: HashMap<String, StreamKeys>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// A token that matches nothing configured for this stream and action.
    WrongToken,
}

impl AccessPolicy {
    /// True when anybody may publish (said loudly at start).
    pub fn publish_is_open(&self) -> bool {
        self.publish_token.is_none() && self.streams.values().all(|k| k.publish_key.is_none())
    }

    /// True when anybody may play.
    pub fn play_is_open(&self) -> bool {
        self.play_token.is_none() && self.streams.values().all(|k| k.play_key.is_none())
    }

    /// Decides a request for `action` on `stream` carrying `bearer`.
    pub fn check(
        &self,
        stream: &StreamId,
        action: Action,
        bearer: Option<&str>,
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
        if accepted.is_empty() {
            return Ok(());
        }
        let presented = bearer.ok_or(Denied::MissingToken)?;
        if accepted
            .iter()
            .any(|secret| constant_time_eq(secret.as_bytes(), presented.as_bytes()))
        {
            Ok(())
        } else {
            Err(Denied::WrongToken)
        }
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
            policy.check(&studio, Action::Publish, Some("studio-key")),
            Ok(())
        );
        assert_eq!(policy.check(&studio, Action::Publish, Some("node")), Ok(()));
        assert_eq!(
            policy.check(&other, Action::Publish, Some("studio-key")),
            Err(Denied::WrongToken)
        );
        assert_eq!(
            policy.check(&other, Action::Publish, None),
            Err(Denied::MissingToken)
        );
        assert_eq!(
            policy.check(&other, Action::Play, None),
            Ok(()),
            "play is open"
        );
        assert!(!policy.publish_is_open());
        assert!(policy.play_is_open());
    }
}
