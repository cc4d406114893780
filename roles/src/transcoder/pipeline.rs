//! The transcoder's GStreamer pipeline. It runs only in the `cascade transcode` child
//! process, never in the node: a codec that crashes takes down this process alone, and the
//! node's supervisor starts another.
//!
//! Source frames arrive on stdin and renditions leave on stdout, both as
//! [`PipeFrame`]s. Video: `appsrc ! h264parse ! avdec_h264 ! tee`, then per rung
//! `queue ! videoscale ! x264enc (zerolatency, no B-frames) ! h264parse ! appsink`. Audio:
//! decode, resample to 48 kHz stereo, encode Opus or AAC.
//!
//! **Aligned keyframes.** A probe after the decoder sends a force-key-unit event, without a
//! running time, in front of every picture that was a keyframe in the source: every rung
//! then starts a group at exactly the source's group boundaries, with the source's
//! timestamps (x264's own keyframes are pushed out of the way: scene cuts off, a very long
//! maximum interval). Events with a running time fire once and never again in 1.22, so
//! they are not used.
//!
//! **Just in time.** Each video rung has a `valve` after its queue, closed until the node
//! says something consumes the rung, and opened or closed only at a source keyframe. Its
//! sink is `async=false`: a rung that never gets a buffer must not hold the pipeline's
//! state change to PLAYING (every other sink would then wait in preroll).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use cascade_protocol::media::{Codec, TrackInfo};
use cascade_protocol::relay::RelayFrame;
use cascade_protocol::timeline::rescale;
use cascade_protocol::transcode::{
    INPUT_AUDIO, INPUT_GATES, INPUT_VIDEO, Output, PipeDecoder, PipeFrame, TranscodeJob,
};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::RoleError;

/// x264enc (through GstVideoEncoder) may shift output times by this much to keep decode
/// times positive; an output that far ahead of every input is brought back onto the
/// source's clock. (Source clocks themselves may be past 1000 hours: only a time beyond
/// what was fed counts as shifted.)
const ENCODER_TIME_OFFSET: u64 = 1000 * 3600 * 1_000_000_000;
/// Source keyframe times remembered for the alignment probe (a few groups of decode delay).
const PENDING_KEYFRAMES: usize = 64;

/// Runs `job` over stdin and stdout until stdin ends (clean exit) or the pipeline fails.
pub fn run(job: &TranscodeJob) -> Result<(), RoleError> {
    gst::init().map_err(|e| failure(format!("GStreamer did not start: {e}")))?;
    let description = describe(job)?;
    tracing::debug!(%description, "transcoder pipeline");
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| failure(format!("cannot build the pipeline: {e}")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| failure("the pipeline description is not a pipeline"))?;
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let latest_input = Arc::new(AtomicU64::new(0));
    for (index, output) in job.outputs.iter().enumerate() {
        let sink = app_sink(&pipeline, &format!("out{index}"))?;
        attach_output(
            &sink,
            index as u64,
            output,
            Arc::clone(&stdout),
            Arc::clone(&latest_input),
        );
    }
    let video_src = job
        .video_source
        .as_ref()
        .map(|_| app_src(&pipeline, "vsrc"))
        .transpose()?;
    let audio_src = job
        .audio_source
        .as_ref()
        .map(|_| app_src(&pipeline, "asrc"))
        .transpose()?;
    let keyframes = Arc::new(Mutex::new(VecDeque::new()));
    // Every video rung starts idle: the node says which are consumed (just in time).
    let gates: Vec<(usize, gst::Element, Arc<AtomicBool>)> = job
        .video_outputs()
        .map(|(index, _)| {
            pipeline
                .by_name(&format!("gate{index}"))
                .map(|valve| (index, valve, Arc::new(AtomicBool::new(false))))
                .ok_or_else(|| failure(format!("no gate{index} in the pipeline")))
        })
        .collect::<Result<_, _>>()?;
    let wanted: Vec<(usize, Arc<AtomicBool>)> =
        gates.iter().map(|(i, _, w)| (*i, Arc::clone(w))).collect();
    if job.video_source.is_some() {
        align_keyframes(&pipeline, Arc::clone(&keyframes), gates)?;
    }
    for (index, output) in job.video_outputs() {
        if let Output::Video { fps: Some(fps), .. } = output {
            cap_frame_rate(&pipeline, index, *fps)?;
        }
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| failure(format!("the pipeline does not play: {e}")))?;

    let feeder = {
        let (video_src, audio_src) = (video_src.clone(), audio_src.clone());
        let video_timescale = job.video_source.as_ref().map_or(90_000, |t| t.timescale);
        let audio_timescale = job.audio_source.as_ref().map_or(48_000, |t| t.timescale);
        std::thread::spawn(move || {
            let result = feed(
                std::io::stdin().lock(),
                video_src.as_ref().map(|s| (s, video_timescale)),
                audio_src.as_ref().map(|s| (s, audio_timescale)),
                &keyframes,
                &latest_input,
                &wanted,
            );
            for src in [video_src, audio_src].into_iter().flatten() {
                let _ = src.end_of_stream();
            }
            result
        })
    };

    let bus = pipeline
        .bus()
        .ok_or_else(|| failure("the pipeline has no bus"))?;
    let outcome = loop {
        let Some(message) = bus.timed_pop(gst::ClockTime::NONE) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => {
                break Err(failure(format!(
                    "{} (from {})",
                    e.error(),
                    e.src().map(|s| s.path_string()).unwrap_or_default()
                )));
            }
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    match feeder.join() {
        Ok(Err(e)) => Err(e),
        _ => outcome,
    }
}

fn failure(message: impl Into<String>) -> RoleError {
    RoleError::Transcoder(message.into())
}

/// The `gst-launch` description of `job`'s pipeline.
fn describe(job: &TranscodeJob) -> Result<String, RoleError> {
    let mut parts = Vec::new();
    if let Some(source) = &job.video_source {
        let (caps, parse, decoder) = match source.codec {
            Codec::H264 => ("video/x-h264", "h264parse", "avdec_h264"),
            Codec::H265 => ("video/x-h265", "h265parse", "avdec_h265"),
            other => return Err(failure(format!("cannot decode {}", other.name()))),
        };
        parts.push(format!(
            "appsrc name=vsrc format=time is-live=true block=true max-bytes=8388608 \
             caps=\"{caps},stream-format=byte-stream,alignment=au\" \
             ! {parse} ! {decoder} name=vdec ! tee name=vt"
        ));
    }
    if let Some(source) = &job.audio_source {
        parts.push(format!(
            "appsrc name=asrc format=time is-live=true block=true max-bytes=1048576 \
             caps=\"{}\" ! {} ! audioconvert ! audioresample \
             ! audio/x-raw,rate=48000,channels=2 ! tee name=at",
            audio_caps(source)?,
            audio_decoder(source.codec)?
        ));
    }
    for (index, output) in job.outputs.iter().enumerate() {
        match output {
            Output::Video {
                width,
                height,
                bitrate_kbps,
                fps,
                ..
            } => {
                // A capped rung thins its pictures in a probe (see `cap_frame_rate`).
                let rate = fps
                    .map(|_| format!(" ! identity name=rate{index}"))
                    .unwrap_or_default();
                parts.push(format!(
                    "vt. ! queue max-size-buffers=8 max-size-time=0 max-size-bytes=0 \
                     ! valve name=gate{index} drop=true drop-mode=forward-sticky-events \
                     ! videoscale ! videoconvert \
                     ! video/x-raw,format=I420,width={width},height={height},pixel-aspect-ratio=1/1{rate} \
                     ! x264enc tune=zerolatency speed-preset=veryfast bitrate={bitrate_kbps} \
                     bframes=0 key-int-max=100000 option-string=scenecut=0 \
                     ! video/x-h264,profile=constrained-baseline \
                     ! h264parse config-interval=-1 \
                     ! video/x-h264,stream-format=byte-stream,alignment=au \
                     ! appsink name=out{index} sync=false async=false max-buffers=64"
                ));
            }
            Output::Audio {
                codec,
                bitrate_kbps,
                ..
            } => {
                let encoder = match codec {
                    Codec::Opus => format!(
                        "opusenc bitrate={} frame-size=20 ! audio/x-opus",
                        bitrate_kbps * 1000
                    ),
                    Codec::Aac => format!(
                        "avenc_aac bitrate={} ! aacparse ! audio/mpeg,stream-format=raw",
                        bitrate_kbps * 1000
                    ),
                    other => return Err(failure(format!("cannot encode {}", other.name()))),
                };
                parts.push(format!(
                    "at. ! queue max-size-buffers=64 max-size-time=0 max-size-bytes=0 \
                     ! {encoder} ! appsink name=out{index} sync=false async=false max-buffers=256"
                ));
            }
        }
    }
    Ok(parts.join("  "))
}

fn audio_caps(source: &TrackInfo) -> Result<String, RoleError> {
    let rate = source.sample_rate.unwrap_or(48_000);
    let channels = source.channels.unwrap_or(2);
    match source.codec {
        Codec::Aac => {
            let config = source
                .config
                .as_deref()
                .ok_or_else(|| failure("the AAC source has no AudioSpecificConfig"))?;
            Ok(format!(
                "audio/mpeg,mpegversion=4,stream-format=raw,rate={rate},channels={channels},\
                 codec_data=(buffer){config}"
            ))
        }
        Codec::Opus => Ok(format!(
            "audio/x-opus,channel-mapping-family=0,rate=48000,channels={channels}"
        )),
        other => Err(failure(format!("cannot decode {}", other.name()))),
    }
}

fn audio_decoder(codec: Codec) -> Result<&'static str, RoleError> {
    match codec {
        Codec::Aac => Ok("aacparse ! avdec_aac"),
        Codec::Opus => Ok("opusdec"),
        other => Err(failure(format!("cannot decode {}", other.name()))),
    }
}

fn app_src(pipeline: &gst::Pipeline, name: &str) -> Result<gst_app::AppSrc, RoleError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| failure(format!("no {name} in the pipeline")))
}

fn app_sink(pipeline: &gst::Pipeline, name: &str) -> Result<gst_app::AppSink, RoleError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| failure(format!("no {name} in the pipeline")))
}

/// Sends each of `sink`'s samples to stdout as output `index`, on the output's clock.
fn attach_output(
    sink: &gst_app::AppSink,
    index: u64,
    output: &Output,
    stdout: Arc<Mutex<std::io::Stdout>>,
    latest_input: Arc<AtomicU64>,
) {
    let timescale = output.track_info().timescale;
    let mut encoded = BytesMut::new();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let Some(pts) = buffer.pts() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut nanos = pts.nseconds();
                let fed = latest_input.load(Ordering::Relaxed);
                if nanos >= ENCODER_TIME_OFFSET && nanos > fed + ENCODER_TIME_OFFSET / 2 {
                    nanos -= ENCODER_TIME_OFFSET;
                }
                let frame = PipeFrame {
                    index,
                    frame: RelayFrame {
                        timestamp: nanos_to_ticks(nanos, timescale),
                        composition_offset: 0,
                        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        payload: Bytes::copy_from_slice(map.as_slice()),
                    },
                };
                encoded.clear();
                frame.encode(&mut encoded);
                let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
                // The node closed the pipe: it is restarting or ending us.
                out.write_all(&encoded)
                    .and_then(|()| out.flush())
                    .map_err(|_| gst::FlowError::Eos)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Forces a keyframe in every rung wherever the source had one, and opens or closes each
/// rung's gate there (so a rung that starts begins with an aligned keyframe, and one that
/// stops ends with a whole group).
fn align_keyframes(
    pipeline: &gst::Pipeline,
    keyframes: Arc<Mutex<VecDeque<u64>>>,
    gates: Vec<(usize, gst::Element, Arc<AtomicBool>)>,
) -> Result<(), RoleError> {
    let decoder = pipeline
        .by_name("vdec")
        .ok_or_else(|| failure("no decoder in the pipeline"))?;
    let pad = decoder
        .static_pad("src")
        .ok_or_else(|| failure("the decoder has no src pad"))?;
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let pts = pts.nseconds();
        let is_source_keyframe = {
            let mut pending = keyframes.lock().unwrap_or_else(|p| p.into_inner());
            while pending.front().is_some_and(|&k| k < pts) {
                pending.pop_front();
            }
            let hit = pending.front() == Some(&pts);
            if hit {
                pending.pop_front();
            }
            hit
        };
        if is_source_keyframe {
            for (_, valve, wanted) in &gates {
                let drop = !wanted.load(Ordering::Relaxed);
                if valve.property::<bool>("drop") != drop {
                    tracing::debug!(gate = %valve.name(), encoding = !drop, "rung gate");
                    valve.set_property("drop", drop);
                }
            }
            let event = gstreamer_video::DownstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            pad.push_event(event);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Keeps at most `fps` pictures a second of rung `index`, and always the picture a source
/// keyframe forced (so the capped rung's groups still start where the source's do).
/// `videorate` is not used: it passed every picture of a source without a declared frame
/// rate, and it may drop the very picture that had to become a keyframe.
fn cap_frame_rate(pipeline: &gst::Pipeline, index: usize, fps: u32) -> Result<(), RoleError> {
    let pad = pipeline
        .by_name(&format!("rate{index}"))
        .and_then(|e| e.static_pad("sink"))
        .ok_or_else(|| failure(format!("no rate{index} in the pipeline")))?;
    let period = 1_000_000_000 / u64::from(fps.max(1));
    // Source frame times jitter by a millisecond or so (FLV): a picture this early still
    // counts as on time, yet one a whole source frame early does not.
    let slack = (period / 10).min(20_000_000);
    // The probe runs on the rung's streaming thread only; atomics just satisfy `Fn`.
    let next_due = AtomicU64::new(0);
    let forced = AtomicBool::new(false);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if let Some(event) = info.event() {
                if gstreamer_video::DownstreamForceKeyUnitEvent::parse(event).is_ok() {
                    forced.store(true, Ordering::Relaxed);
                }
                return gst::PadProbeReturn::Ok;
            }
            let Some(pts) = info.buffer().and_then(|b| b.pts()).map(|t| t.nseconds()) else {
                return gst::PadProbeReturn::Ok;
            };
            if forced.swap(false, Ordering::Relaxed) || pts >= next_due.load(Ordering::Relaxed) {
                next_due.store(pts + period - slack, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            } else {
                gst::PadProbeReturn::Drop
            }
        },
    );
    Ok(())
}

/// Reads source frames from `input` into the pipeline until the node closes the pipe.
fn feed(
    mut input: impl Read,
    video: Option<(&gst_app::AppSrc, u32)>,
    audio: Option<(&gst_app::AppSrc, u32)>,
    keyframes: &Mutex<VecDeque<u64>>,
    latest_input: &AtomicU64,
    wanted: &[(usize, Arc<AtomicBool>)],
) -> Result<(), RoleError> {
    let mut decoder = PipeDecoder::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = input
            .read(&mut chunk)
            .map_err(|e| failure(format!("reading the node's pipe: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        decoder.push(&chunk[..read]);
        while let Some(PipeFrame { index, frame }) = decoder
            .next_frame()
            .map_err(|e| failure(format!("the node's pipe: {e}")))?
        {
            if index == INPUT_GATES {
                tracing::debug!(gates = ?&frame.payload[..], "rungs wanted");
                for (output, flag) in wanted {
                    let on = frame.payload.get(*output).is_some_and(|b| *b != 0);
                    flag.store(on, Ordering::Relaxed);
                }
                continue;
            }
            let (src, timescale) = match index {
                INPUT_VIDEO => match video {
                    Some(v) => v,
                    None => continue,
                },
                INPUT_AUDIO => match audio {
                    Some(a) => a,
                    None => continue,
                },
                _ => continue,
            };
            let pts = rescale(frame.timestamp, timescale, NANOS);
            let dts = rescale(
                frame
                    .timestamp
                    .saturating_sub(u64::from(frame.composition_offset)),
                timescale,
                NANOS,
            );
            latest_input.fetch_max(pts, Ordering::Relaxed);
            if index == INPUT_VIDEO && frame.keyframe {
                let mut pending = keyframes.lock().unwrap_or_else(|p| p.into_inner());
                if pending.len() == PENDING_KEYFRAMES {
                    pending.pop_front();
                }
                pending.push_back(pts);
            }
            let mut buffer = gst::Buffer::from_slice(frame.payload);
            {
                let buffer = buffer.get_mut().expect("a new buffer has one owner");
                buffer.set_pts(gst::ClockTime::from_nseconds(pts));
                buffer.set_dts(gst::ClockTime::from_nseconds(dts));
                if !frame.keyframe {
                    buffer.set_flags(gst::BufferFlags::DELTA_UNIT);
                }
            }
            if src.push_buffer(buffer).is_err() {
                // The pipeline stopped; the bus says why.
                return Ok(());
            }
        }
    }
}

/// GStreamer's clock rate.
const NANOS: u32 = 1_000_000_000;

/// Back from nanoseconds, rounded (unlike [`rescale`]), so that a source time survives the
/// trip through GStreamer exactly.
fn nanos_to_ticks(nanos: u64, timescale: u32) -> u64 {
    ((u128::from(nanos) * u128::from(timescale) + u128::from(NANOS / 2)) / u128::from(NANOS)) as u64
}
