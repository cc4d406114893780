//! Pulled sources: streams whose origin fetches their media (an IP camera over RTSP) instead
//! of waiting for a publisher to push it.
//!
//! A pull is created through the API and replicated through Raft as a [`PullSpec`]; the node
//! the cluster places it on runs it and reports a [`PullStatus`]. Everything here is a value
//! or a pure decision: parsing and redacting the source address, the reconnect backoff, and
//! whether an on-demand pull should run now.

use std::time::Duration;

use crate::ProtocolError;

/// How RTP reaches us from the camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullTransport {
    /// Interleaved on the RTSP TCP connection: crosses NAT and firewalls, never reorders.
    #[default]
    Tcp,
    /// RTP/RTCP on their own UDP ports: for LAN cameras that cannot interleave.
    Udp,
}

/// What a pull asks for, as the API took it and Raft replicates it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullSpec {
    /// `rtsp://[user:pass@]host[:port]/path`, credentials included (they are needed by
    /// whichever node pulls; the API shows the address redacted).
    pub source: String,
    /// TCP interleaved (default) or UDP.
    #[serde(default)]
    pub transport: PullTransport,
    /// Pull only while something consumes the stream.
    #[serde(default)]
    pub on_demand: bool,
}

/// A parsed source address: the URL without credentials, and the credentials apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspSource {
    /// The address to connect to, without user or password.
    pub url: url::Url,
    /// `(user, password)`, percent-decoded, when the address carried them.
    pub credentials: Option<(String, String)>,
}

impl RtspSource {
    /// Parses `rtsp://[user[:pass]@]host[:port]/path`.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let bad = |why: &str| ProtocolError::InvalidPullSource(format!("{}: {why}", redact(text)));
        let mut url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "rtsp" {
            return Err(bad("only rtsp:// sources can be pulled"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the address names no host"));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let credentials = (!url.username().is_empty()).then(|| {
            (
                decode(url.username()),
                url.password().map(decode).unwrap_or_default(),
            )
        });
        // Infallible for a URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Self { url, credentials })
    }
}

/// The source address as logs and the API show it: the password replaced by `***`.
pub fn redact(source: &str) -> String {
    match url::Url::parse(source) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        // Not a URL: nothing of it is shown, in case it holds a secret.
        Err(_) => "(an address that is not a URL)".to_owned(),
    }
}

/// Where a pull is, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    /// On demand and nobody consumes the stream: not connected.
    Idle,
    /// First connection attempt in progress.
    Connecting,
    /// Media is flowing.
    Live,
    /// The source dropped or refused us; waiting to try again.
    Reconnecting,
}

/// A running pull as its node reports it (soft state, in load reports).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullStatus {
    /// Its stream.
    pub stream: String,
    /// Connecting, live, reconnecting or idle.
    pub state: PullState,
    /// Why the last attempt or session ended, if one did.
    pub last_error: Option<String>,
    /// Attempts that failed since media last flowed.
    pub failures: u32,
}

/// The first wait after a failure; each further failure doubles it up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts: a camera that comes back is pulled within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long to wait before the next attempt after `failures` consecutive failures (1 = the
/// first). `jitter` in `[0, 1)` spreads cameras that dropped together (one switch rebooting)
/// over up to a quarter of the wait.
pub fn reconnect_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF);
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 4.0)
}

/// How long an on-demand pull keeps running after its last consumer left: a viewer who
/// reloads the page finds it still live.
pub const ON_DEMAND_LINGER: Duration = Duration::from_secs(10);

/// Whether a pull should run now: always, unless it is on demand, nothing consumes the
/// stream and the last consumer left more than [`ON_DEMAND_LINGER`] ago (`idle_for`: how
/// long nothing has consumed it).
pub fn should_pull(on_demand: bool, consumers: usize, idle_for: Duration) -> bool {
    !on_demand || consumers > 0 || idle_for < ON_DEMAND_LINGER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_split_into_address_and_credentials_and_only_rtsp_is_accepted() {
        let s = RtspSource::parse("rtsp://admin:p%40ss@10.0.0.5:554/Streaming/101").unwrap();
        assert_eq!(s.url.as_str(), "rtsp://10.0.0.5:554/Streaming/101");
        assert_eq!(s.credentials, Some(("admin".into(), "p@ss".into())));
        let s = RtspSource::parse("rtsp://cam.local/live").unwrap();
        assert_eq!(s.credentials, None);
        for bad in ["http://cam/live", "rtsp:///nohost", "not a url", ""] {
            let e = RtspSource::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid pull source"), "{bad}: {e}");
        }
        let e = RtspSource::parse("rtmp://u:secret@cam/live")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_redacted_source_never_shows_the_password() {
        assert_eq!(
            redact("rtsp://admin:hunter2@cam:554/s"),
            "rtsp://admin:***@cam:554/s"
        );
        assert_eq!(redact("rtsp://cam/s"), "rtsp://cam/s");
        assert!(!redact("rtsp//admin:hunter2@cam").contains("hunter2"));
    }

    #[test]
    fn reconnects_back_off_from_half_a_second_to_ten() {
        let cases = [
            (1, 500),
            (2, 1000),
            (3, 2000),
            (4, 4000),
            (5, 8000),
            (6, 10_000),
            (60, 10_000),
        ];
        for (failures, ms) in cases {
            assert_eq!(
                reconnect_delay(failures, 0.0),
                Duration::from_millis(ms),
                "{failures}"
            );
        }
        assert_eq!(reconnect_delay(1, 0.999).as_millis(), 624);
        assert_eq!(reconnect_delay(0, 0.0), FIRST_BACKOFF);
    }

    #[test]
    fn an_on_demand_pull_runs_while_consumed_and_lingers_after_the_last_consumer() {
        let cases = [
            (false, 0, Duration::from_secs(3600), true),
            (true, 1, Duration::ZERO, true),
            (true, 0, Duration::from_secs(3), true),
            (true, 0, ON_DEMAND_LINGER, false),
            (true, 0, Duration::from_secs(3600), false),
        ];
        for (on_demand, consumers, idle_for, expected) in cases {
            assert_eq!(
                should_pull(on_demand, consumers, idle_for),
                expected,
                "{on_demand} {consumers} {idle_for:?}"
            );
        }
    }

    #[test]
    fn a_spec_without_transport_or_on_demand_defaults_to_tcp_always_on() {
        let spec: PullSpec = serde_json::from_str(r#"{"source":"rtsp://cam/s"}"#).unwrap();
        assert_eq!(spec.transport, PullTransport::Tcp);
        assert!(!spec.on_demand);
        let spec: PullSpec =
            serde_json::from_str(r#"{"source":"rtsp://cam/s","transport":"udp","on_demand":true}"#)
                .unwrap();
        assert_eq!(spec.transport, PullTransport::Udp);
        assert!(spec.on_demand);
    }
}
