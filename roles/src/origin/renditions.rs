//! An origin's renditions: it tells the cluster which of its streams need renditions (the
//! leader then assigns their transcoders, `plan_duty`), and for each whose transcoders
//! (active and standby) run on other nodes, it pulls their renditions into its broadcast
//! (`relay::renditions`), so that edges and viewers find them beside the source. It runs on
//! every node, whatever roles it may hold: an origin that may not transcode is exactly the
//! one whose renditions come from elsewhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_protocol::StreamId;

use super::StreamRegistry;
use crate::broadcast::Broadcast;
use crate::relay::{Relay, RenditionPull, RenditionTracks};
use crate::transcoder::{Ladders, TranscoderPlacement, every};

/// How often the origin compares its rendition pulls with the assignments.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// The rendition pulls of one stream.
struct StreamPulls {
    broadcast: Arc<Broadcast>,
    tracks: Arc<RenditionTracks>,
    /// Each transcoder's pull and its upstream number in the merge.
    pulls: HashMap<SocketAddr, (RenditionPull, u64)>,
    next_upstream: u64,
}

type Feeds = Arc<Mutex<HashMap<StreamId, StreamPulls>>>;

/// Which transcoder feeds each rendition of this node's streams now (for the API). Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct RenditionFeeds(Feeds);

impl RenditionFeeds {
    /// Each rendition track of `stream` made elsewhere, with the relay address of the
    /// transcoder whose frames it takes now.
    pub fn feeding(&self, stream: &StreamId) -> BTreeMap<String, SocketAddr> {
        let streams = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pulls) = streams.get(stream) else {
            return BTreeMap::new();
        };
        pulls
            .tracks
            .current_upstreams()
            .into_iter()
            .filter_map(|(track, upstream)| {
                let upstream = upstream?;
                let addr = pulls
                    .pulls
                    .iter()
                    .find(|(_, (_, id))| *id == upstream)
                    .map(|(addr, _)| *addr)?;
                Some((track, addr))
            })
            .collect()
    }
}

/// Asks for this node's streams' transcoders and feeds them the renditions made elsewhere.
pub struct OriginRenditions {
    registry: StreamRegistry,
    relay: Relay,
    placement: Arc<dyn TranscoderPlacement>,
    ladders: Ladders,
    /// Streams that needed renditions: still asked for while present without a publisher
    /// (reconnecting), so that its transcoder waits for the publisher's return.
    asked: Mutex<HashSet<StreamId>>,
    streams: Feeds,
}

impl OriginRenditions {
    /// Starts asking for and feeding `registry`'s streams, until the node stops.
    pub fn run(
        registry: StreamRegistry,
        relay: Relay,
        placement: Arc<dyn TranscoderPlacement>,
        ladders: Ladders,
    ) -> RenditionFeeds {
        let feeds = RenditionFeeds::default();
        let this = OriginRenditions {
            registry,
            relay,
            placement,
            ladders,
            asked: Mutex::new(HashSet::new()),
            streams: Arc::clone(&feeds.0),
        };
        let this = Arc::new(this);
        every(RECONCILE_EVERY, move || {
            let this = Arc::clone(&this);
            async move { this.reconcile().await }
        });
        feeds
    }

    async fn reconcile(&self) {
        let mut wanted: HashMap<StreamId, (Arc<Broadcast>, Vec<SocketAddr>)> = HashMap::new();
        let mut present = HashSet::new();
        let mut asked = BTreeSet::new();
        for stream in self.registry.list().await {
            let publisher = stream.publisher.as_ref().map(|p| p.protocol);
            if publisher == Some("relay") {
                continue;
            }
            present.insert(stream.id.clone());
            let needs = self
                .registry
                .broadcast(&stream.id)
                .is_some_and(|broadcast| self.ladders.job_for(&broadcast).is_some());
            let mut asked_before = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            if needs || (publisher.is_none() && asked_before.contains(&stream.id)) {
                asked.insert(stream.id.as_str().to_owned());
                asked_before.insert(stream.id.clone());
            }
            drop(asked_before);
            let transcoders = self.placement.transcoders_elsewhere(&stream.id);
            if transcoders.is_empty() {
                continue;
            }
            if let Some(broadcast) = self.registry.broadcast(&stream.id) {
                wanted.insert(stream.id, (broadcast, transcoders));
            }
        }
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| present.contains(id));
        self.placement.wanted(asked.into_iter().collect());
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        // A stream whose broadcast was replaced (it ended and came back) starts afresh.
        streams.retain(|id, pulls| {
            wanted
                .get(id)
                .is_some_and(|(broadcast, _)| Arc::ptr_eq(broadcast, &pulls.broadcast))
        });
        for (id, (broadcast, transcoders)) in wanted {
            let stream = streams.entry(id).or_insert_with(|| StreamPulls {
                tracks: RenditionTracks::new(Arc::clone(&broadcast)),
                broadcast,
                pulls: HashMap::new(),
                next_upstream: 0,
            });
            stream.pulls.retain(|addr, _| transcoders.contains(addr));
            for addr in transcoders {
                if stream.pulls.contains_key(&addr) {
                    continue;
                }
                stream.next_upstream += 1;
                let upstream = stream.next_upstream;
                let pull = self
                    .relay
                    .pull_renditions(Arc::clone(&stream.tracks), addr, upstream);
                stream.pulls.insert(addr, (pull, upstream));
            }
        }
    }
}
