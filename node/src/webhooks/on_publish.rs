//! The publish callback (`--on-publish-url`): before a publisher is admitted (WHIP, RTMP,
//! SRT) the node POSTs who it is, signed like every webhook, and admits it only on a 2xx
//! within `--on-publish-timeout`. A callback that does not answer (timeout, connection
//! refused, 5xx) is decided by `--on-publish-fail-open`: closed (refuse) by default.

use std::net::SocketAddr;
use std::time::Duration;

use cascade_protocol::StreamId;

use super::delivery::signed_post;

/// The default time the callback has to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The callback's settings.
#[derive(Debug, Clone)]
pub struct OnPublishConfig {
    /// Where to ask.
    pub url: String,
    /// How long to wait for the answer.
    pub timeout: Duration,
    /// Admit when the callback cannot answer.
    pub fail_open: bool,
}

/// What came of asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// An HTTP status.
    Answered(u16),
    /// No answer within the timeout.
    TimedOut,
    /// No connection, or a broken one.
    Unreachable,
}

/// Why the callback's answer refuses a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The callback said no (a 4xx).
    Denied(u16),
    /// The callback could not answer and the policy is fail-closed.
    NoAnswer(String),
}

/// Admit or refuse on an outcome: 2xx admits, 4xx refuses, anything else (3xx, 5xx, no
/// answer) follows the fail-open policy.
pub fn decide(outcome: &CallOutcome, fail_open: bool) -> Result<(), Refusal> {
    match outcome {
        CallOutcome::Answered(status) if (200..300).contains(status) => Ok(()),
        CallOutcome::Answered(status) if (400..500).contains(status) => {
            Err(Refusal::Denied(*status))
        }
        _ if fail_open => Ok(()),
        CallOutcome::Answered(status) => Err(Refusal::NoAnswer(format!("answered {status}"))),
        CallOutcome::TimedOut => Err(Refusal::NoAnswer("no answer in time".into())),
        CallOutcome::Unreachable => Err(Refusal::NoAnswer("unreachable".into())),
    }
}

/// The publish callback of a node.
pub struct OnPublish {
    config: OnPublishConfig,
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
}

impl OnPublish {
    /// The callback, signing with the webhook secret if there is one.
    pub fn new(config: OnPublishConfig, secret: Option<&str>) -> OnPublish {
        OnPublish {
            config,
            client: super::delivery::client(),
            secret: secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    /// Asks whether a publisher of `stream` by `protocol` from `client` may publish;
    /// `claims` are its signed token's, if it presented one. Refusals are logged and counted
    /// (`cascade_on_publish_total{result}`).
    pub async fn ask(
        &self,
        stream: &StreamId,
        protocol: &'static str,
        client: Option<SocketAddr>,
        claims: Option<&crate::access::jwt::Claims>,
    ) -> Result<(), Refusal> {
        let body = serde_json::json!({
            "type": "publish.authorize",
            "stream": stream.as_str(),
            "protocol": protocol,
            "client": client.map(|a| a.to_string()),
            "claims": claims,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let request = signed_post(&self.client, &self.config.url, body, self.secret.as_deref())
            .timeout(self.config.timeout)
            .send();
        let outcome = match request.await {
            Ok(response) => CallOutcome::Answered(response.status().as_u16()),
            Err(e) if e.is_timeout() => CallOutcome::TimedOut,
            Err(_) => CallOutcome::Unreachable,
        };
        let decision = decide(&outcome, self.config.fail_open);
        let result = match (&decision, &outcome) {
            (Ok(()), CallOutcome::Answered(s)) if (200..300).contains(s) => "admitted",
            (Ok(()), _) => "admitted_fail_open",
            (Err(Refusal::Denied(_)), _) => "denied",
            (Err(Refusal::NoAnswer(_)), _) => "refused_fail_closed",
        };
        metrics::counter!("cascade_on_publish_total", "result" => result).increment(1);
        match &decision {
            Ok(()) if result == "admitted_fail_open" => tracing::warn!(
                %stream, protocol, ?outcome,
                "the publish callback did not answer; admitting the publisher (on-publish-fail-open)"
            ),
            Err(refusal) => tracing::info!(
                %stream, protocol, ?client, ?refusal,
                "the publish callback refused a publisher"
            ),
            Ok(()) => {}
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hundreds_admit_four_hundreds_refuse_and_the_rest_follow_the_policy() {
        assert_eq!(decide(&CallOutcome::Answered(204), false), Ok(()));
        assert_eq!(
            decide(&CallOutcome::Answered(403), true),
            Err(Refusal::Denied(403)),
            "a no is a no, fail-open or not"
        );
        for outcome in [
            CallOutcome::Answered(503),
            CallOutcome::TimedOut,
            CallOutcome::Unreachable,
        ] {
            assert_eq!(decide(&outcome, true), Ok(()), "{outcome:?} fail-open");
            assert!(
                matches!(decide(&outcome, false), Err(Refusal::NoAnswer(_))),
                "{outcome:?} fail-closed"
            );
        }
    }
}
