//! How a node's tracks map onto relay tracks and groups.
//!
//! Track names: the broadcast's own (`video/source`, `audio/source`, renditions), and
//! `catalog` (a JSON list of the broadcast's [`TrackInfo`](cascade_protocol::media::TrackInfo),
//! sent once per subscription; a track name never equals it, names of media tracks have a `/`).
//! Groups: a video group starts at each keyframe, so dropping a late group skips exactly
//! to the next decodable point; audio has no dependencies between frames, so its frames are
//! grouped by count only to keep the number of QUIC streams down.

use cascade_protocol::media::{Frame, MediaKind};

/// The catalog track's name.
pub const CATALOG_TRACK: &str = "catalog";
/// Audio frames per group: 25 Opus frames of 20 ms is half a second.
pub const AUDIO_FRAMES_PER_GROUP: u64 = 25;

/// Numbers the groups of one served track.
#[derive(Debug)]
pub struct GroupCounter {
    kind: MediaKind,
    group: u64,
    frames_in_group: u64,
    started: bool,
}

impl GroupCounter {
    /// A counter for a track of `kind`; the first frame starts group 0.
    pub fn new(kind: MediaKind) -> Self {
        Self {
            kind,
            group: 0,
            frames_in_group: 0,
            started: false,
        }
    }

    /// The group `frame` belongs to.
    pub fn group_of(&mut self, frame: &Frame) -> u64 {
        let starts_group = match self.kind {
            MediaKind::Video => frame.keyframe,
            MediaKind::Audio => self.frames_in_group >= AUDIO_FRAMES_PER_GROUP,
        };
        if self.started && starts_group {
            self.group += 1;
            self.frames_in_group = 0;
        }
        self.started = true;
        self.frames_in_group += 1;
        self.group
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(keyframe: bool) -> Frame {
        Frame {
            seq: 0,
            timestamp: 0,
            composition_offset: 0,
            keyframe,
            payload: Arc::from(vec![0u8]),
        }
    }

    #[test]
    fn video_groups_start_at_keyframes_and_audio_groups_by_count() {
        let mut video = GroupCounter::new(MediaKind::Video);
        let groups: Vec<u64> = [true, false, false, true, false, true]
            .into_iter()
            .map(|k| video.group_of(&frame(k)))
            .collect();
        assert_eq!(groups, vec![0, 0, 0, 1, 1, 2]);

        let mut audio = GroupCounter::new(MediaKind::Audio);
        let groups: Vec<u64> = (0..AUDIO_FRAMES_PER_GROUP * 2 + 1)
            .map(|_| audio.group_of(&frame(true)))
            .collect();
        assert_eq!(groups[0], 0);
        assert_eq!(groups[AUDIO_FRAMES_PER_GROUP as usize - 1], 0);
        assert_eq!(groups[AUDIO_FRAMES_PER_GROUP as usize], 1);
        assert_eq!(groups[2 * AUDIO_FRAMES_PER_GROUP as usize], 2);
    }

    #[test]
    fn a_subscriber_joining_mid_group_starts_group_zero_there() {
        let mut video = GroupCounter::new(MediaKind::Video);
        assert_eq!(video.group_of(&frame(false)), 0);
        assert_eq!(video.group_of(&frame(true)), 1);
    }
}
