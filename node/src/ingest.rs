//! What the node decides for publishers that arrive by RTMP or SRT: the access rules (the
//! same tokens and stream keys as WHIP, carried in the stream key or streamid), SRT
//! passphrases, and the cluster's placement (this node becomes the stream's origin, unless it
//! is live elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cascade_protocol::StreamId;
use cascade_roles::RoleError;
use cascade_roles::origin::ingest::{PublishAttempt, PublishGate};
use cascade_roles::origin::srt::SrtPassphrases;
use cascade_roles::relay::Relay;

use crate::access::{AccessPolicy, Action, Denied};
use crate::cluster::{Cluster, RouteError, format_id};

/// The node's [`PublishGate`].
pub struct NodePublishGate {
    /// Who may publish.
    pub access: Arc<AccessPolicy>,
    /// Where streams are placed.
    pub cluster: Cluster,
    /// This node's relay pulls (one of the stream is released: it is published here now).
    pub relay: Relay,
    /// The integrator's publish callback, if any.
    pub on_publish: Option<Arc<crate::webhooks::on_publish::OnPublish>>,
}

impl PublishGate for NodePublishGate {
    fn authorize<'a>(
        &'a self,
        attempt: PublishAttempt<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send + 'a>> {
        Box::pin(async move {
            let stream = attempt.stream;
            self.access
                .authorize(stream, Action::Publish, attempt.token, attempt.protocol)
                .map_err(|denied| RoleError::NotAuthorized {
                    stream: stream.clone(),
                    // Why a token is not valid is in the node's log and metrics, not here.
                    why: match denied {
                        Denied::MissingToken => {
                            "this stream needs a token: publish to <stream>?key=<token>"
                        }
                        Denied::WrongToken | Denied::Token(_) => {
                            "the token is not valid for this stream"
                        }
                    },
                })?;
            if let Some(callback) = &self.on_publish {
                let claims = self.access.claims(attempt.token);
                callback
                    .ask(
                        stream,
                        attempt.protocol,
                        Some(attempt.peer),
                        claims.as_ref(),
                    )
                    .await
                    .map_err(|_| RoleError::NotAuthorized {
                        stream: stream.clone(),
                        why: "the platform did not authorise this publisher",
                    })?;
            }
            self.cluster
                .claim_origin(stream)
                .await
                .map_err(|e| match e {
                    RouteError::LiveElsewhere(node) => RoleError::LiveElsewhere {
                        stream: stream.clone(),
                        node: format_id(node),
                    },
                    RouteError::NotLive => {
                        RoleError::Unavailable("the stream cannot be placed".into())
                    }
                    RouteError::Unavailable(why) => RoleError::Unavailable(why),
                    // The camera is its publisher.
                    RouteError::Pulled => RoleError::PublisherAlreadyLive(stream.clone()),
                })?;
            // Viewers of a pull of this stream stay and watch the publisher here.
            self.relay.release(stream).await;
            Ok(())
        })
    }
}

impl SrtPassphrases for AccessPolicy {
    fn passphrase(&self, stream: &StreamId) -> Option<String> {
        self.streams
            .get(stream.as_str())
            .and_then(|keys| keys.srt_passphrase.clone())
    }
}

/// The gate of pulls this node runs: the cluster placed the pull here, so the only checks
/// are that it still does, and that a relay pull of the stream (this node was an edge of it)
/// gives way to the camera.
pub struct PullGate {
    /// Where streams are placed.
    pub cluster: Cluster,
    /// This node's relay pulls.
    pub relay: Relay,
}

impl PublishGate for PullGate {
    fn authorize<'a>(
        &'a self,
        attempt: PublishAttempt<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send + 'a>> {
        Box::pin(async move {
            let stream = attempt.stream;
            if !self.cluster.placed_here(stream) {
                return Err(RoleError::Unavailable(
                    "the cluster moved this pull to another node".into(),
                ));
            }
            self.relay.release(stream).await;
            Ok(())
        })
    }
}
