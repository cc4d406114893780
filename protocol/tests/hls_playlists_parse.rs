//! Our LL-HLS playlists read by an independent parser: Python's `m3u8` (PyPI, which knows
//! the low-latency tags), installed by `scripts/install-deps.sh test` into `.venv-interop`.
//! What it reads must be what we meant: parts and their flags, server control, the preload
//! hint, rendition reports, skipped segments, and the multivariant playlist's variants.

use std::path::PathBuf;
use std::process::Command;

use cascade_protocol::hls::playlist::{
    AudioRendition, MediaPlaylist, Multivariant, Part, RenditionReport, Segment, Variant,
    render_media, render_multivariant,
};

/// Runs `script` with the playlist text on stdin; returns what it printed.
fn python(script: &str, playlist: &str) -> String {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-interop/bin/python");
    let mut child = Command::new(&venv)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run ({e}): run scripts/install-deps.sh test (it makes .venv-interop with m3u8)",
                venv.display()
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(playlist.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "m3u8 could not parse:\n{playlist}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn live(segments: u64, partial: u64) -> MediaPlaylist {
    let part = |msn: u64, i: u64| Part {
        duration: 1.0 / 3.0,
        uri: format!("part{msn}.{i}.m4s"),
        independent: i == 0,
    };
    MediaPlaylist {
        part_target: 1.0 / 3.0,
        discontinuity_sequence: 1,
        map_uri: "init.mp4".into(),
        segments: (10..10 + segments)
            .map(|msn| Segment {
                msn,
                duration: 2.0,
                uri: format!("seg{msn}.m4s"),
                program_date_time_ms: 1_796_125_000_000 + msn * 2000,
                discontinuity: msn == 12,
                parts: (0..6).map(|i| part(msn, i)).collect(),
                map_uri: (msn >= 12).then(|| "init-b.mp4".into()),
            })
            .collect(),
        partial: (0..partial).map(|i| part(10 + segments, i)).collect(),
        preload_hint: Some(format!("part{}.{partial}.m4s", 10 + segments)),
        rendition_reports: vec![RenditionReport {
            uri: "../180p/index.m3u8".into(),
            last_msn: 10 + segments,
            last_part: 1,
        }],
        ended: false,
        partial_discontinuity: false,
        partial_map_uri: None,
    }
}

const MEDIA: &str = r#"
import sys, m3u8
p = m3u8.loads(sys.stdin.read())
sc = p.server_control
print("block", sc.can_block_reload, "hold", sc.part_hold_back, "skip_until", sc.can_skip_until)
print("part_target", p.part_inf.part_target, "target", p.target_duration)
print("sequence", p.media_sequence, "discontinuity_sequence", p.discontinuity_sequence)
print("segments", len(p.segments), "skipped", p.skip.skipped_segments if p.skip else 0)
for s in p.segments:
    print("segment", s.uri, s.duration, s.discontinuity, s.program_date_time.isoformat() if s.program_date_time else None,
          [(x.uri, round(x.duration, 5), bool(x.independent)) for x in s.parts], "init", s.init_section.uri if s.init_section else None)
print("hint", p.preload_hint.hint_type, p.preload_hint.uri)
for r in p.rendition_reports:
    print("report", r.uri, r.last_msn, r.last_part)
"#;

#[test]
fn an_independent_parser_reads_our_live_playlist_as_we_meant_it() {
    let out = python(MEDIA, &render_media(&live(3, 2), false));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "block YES hold 1.0 skip_until 12.0", "{out}");
    assert_eq!(lines[1], "part_target 0.33333 target 2", "{out}");
    assert_eq!(lines[2], "sequence 10 discontinuity_sequence 1", "{out}");
    assert_eq!(
        lines[3], "segments 4 skipped 0",
        "three complete, one partial: {out}"
    );
    assert!(
        lines[4].starts_with("segment seg10.m4s 2.0 False 2026-12-01T11:37:00+00:00 [('part10.0.m4s', 0.33333, True), ('part10.1.m4s', 0.33333, False)"),
        "{out}"
    );
    assert!(lines[6].starts_with("segment seg12.m4s 2.0 True"), "{out}");
    assert!(lines[4].ends_with("init init.mp4"), "{out}");
    assert!(
        lines[6].ends_with("init init-b.mp4"),
        "a segment after new parameter sets has its own init segment: {out}"
    );
    assert!(
        lines[7].contains("[('part13.0.m4s', 0.33333, True), ('part13.1.m4s', 0.33333, False)]"),
        "the segment being written is listed by its parts: {out}"
    );
    assert_eq!(lines[8], "hint PART part13.2.m4s", "{out}");
    assert_eq!(lines[9], "report ../180p/index.m3u8 13 1", "{out}");
}

#[test]
fn an_independent_parser_reads_our_delta_update_with_its_skipped_segments() {
    let out = python(MEDIA, &render_media(&live(20, 1), true));
    assert!(out.contains("segments 7 skipped 14"), "{out}");
    assert!(out.contains("segment seg24.m4s"), "{out}");
    assert!(!out.contains("segment seg23.m4s"), "{out}");
}

#[test]
fn an_independent_parser_reads_our_multivariant_playlist() {
    let text = render_multivariant(&Multivariant {
        variants: vec![Variant {
            uri: "360p/index.m3u8".into(),
            bandwidth: 900_000,
            average_bandwidth: 800_000,
            codecs: "avc1.42c01e,mp4a.40.2".into(),
            resolution: (640, 360),
            frame_rate: 30.0,
            audio_group: Some("aac".into()),
        }],
        audio: vec![AudioRendition {
            group: "aac".into(),
            name: "main".into(),
            uri: "aac/index.m3u8".into(),
            channels: 2,
        }],
    });
    let out = python(
        r#"
import sys, m3u8
p = m3u8.loads(sys.stdin.read())
assert p.is_variant
for v in p.playlists:
    i = v.stream_info
    print("variant", v.uri, i.bandwidth, i.average_bandwidth, i.codecs, i.resolution, i.frame_rate, i.audio)
for m in p.media:
    print("media", m.type, m.group_id, m.name, m.default, m.channels, m.uri)
"#,
        &text,
    );
    assert!(
        out.contains(
            "variant 360p/index.m3u8 900000 800000 avc1.42c01e,mp4a.40.2 (640, 360) 30.0 aac"
        ),
        "{out}"
    );
    assert!(
        out.contains("media AUDIO aac main YES 2 aac/index.m3u8"),
        "{out}"
    );
}
