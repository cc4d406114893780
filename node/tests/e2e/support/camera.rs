//! An IP camera: GStreamer's RTSP server (`node/tests/interop/rtsp_camera.py`) on its own
//! port of 127.0.0.1, serving a recording of known access units at its real pace.
//!
//! Not on an address of its own like the nodes: gst-rtsp-server sends RTP over UDP from a
//! wildcard socket, so on a 127.x address its packets would leave from 127.0.0.1, and a
//! client that (rightly) takes RTP only from the camera's address would drop them. A real
//! camera has one address.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::media::{encode_h264, scratch_file};

/// The camera's credentials in the tests; the `@` must be percent-encoded in a URL.
pub const USER: &str = "admin";
pub const PASSWORD: &str = "p@ss word";

/// A running camera, stopped when dropped.
pub struct Camera {
    child: Option<Child>,
    /// Its RTSP port on 127.0.0.1.
    pub port: u16,
    recording: PathBuf,
    /// The access units it sends, in order, as a viewer must receive them.
    pub units: Vec<Vec<u8>>,
}

impl Camera {
    /// A camera sending `seconds` of 640x360 H.264 at 30 fps with a keyframe every `gop`
    /// frames, to every client (one shared encoder), requiring [`USER`] and [`PASSWORD`].
    pub async fn start(seconds: u32, gop: u32) -> Camera {
        // A free port, kept across power cycles.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let units = encode_h264(seconds, gop);
        let raw = scratch_file(&format!("camera-{seconds}s-gop{gop}.h264"));
        std::fs::write(&raw, units.concat()).unwrap();
        // Matroska carries each frame's time, so the server sends at the real pace.
        let recording = scratch_file(&format!("camera-{seconds}s-gop{gop}.mkv"));
        let status = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-framerate", "30", "-i"])
            .arg(&raw)
            .args(["-c", "copy"])
            .arg(&recording)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success(), "ffmpeg wrote the camera's recording");
        let _ = std::fs::remove_file(&raw);
        let mut camera = Camera {
            child: None,
            port,
            recording,
            units,
        };
        camera.power_on().await;
        camera
    }

    /// `rtsp://admin:p%40ss%20word@127.0.0.1:port/stream`.
    pub fn url(&self) -> String {
        format!("rtsp://{USER}:p%40ss%20word@127.0.0.1:{}/stream", self.port)
    }

    /// The same address with a wrong password.
    pub fn url_with_wrong_password(&self) -> String {
        format!("rtsp://{USER}:wrong@127.0.0.1:{}/stream", self.port)
    }

    /// Starts the server (again) and waits until it listens.
    pub async fn power_on(&mut self) {
        assert!(self.child.is_none(), "the camera is already on");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/rtsp_camera.py");
        let launch = format!(
            "( filesrc location={} ! matroskademux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            self.recording.display()
        );
        // Debian's Python: GStreamer's bindings (python3-gi) are installed for it.
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([
                "127.0.0.1",
                &self.port.to_string(),
                "/stream",
                &launch,
                USER,
                PASSWORD,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the RTSP camera starts (python3-gi, gir1.2-gst-rtsp-server-1.0)");
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).ok();
            line
        });
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), ready)
            .await
            .expect("the camera starts within 20 s")
            .unwrap();
        assert_eq!(line.trim(), "ready", "the camera listens");
        self.child = Some(child);
    }

    /// Kills the server, as a camera that loses power.
    pub fn power_off(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.power_off();
        let _ = std::fs::remove_file(&self.recording);
    }
}
