//! What an SRT caller's `streamid` asks for: `publish:show` (the short form MediaMTX and
//! SRS users know), or the SRT access-control form `#!::r=show,m=publish[,t=TOKEN]`. A token
//! may also ride as `?key=TOKEN` on the short form, as on RTMP stream keys.

/// A caller's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtRequest {
    /// The resource (stream) name, unvalidated.
    pub resource: String,
    /// Whether it publishes (the only mode a node takes over SRT today).
    pub publish: bool,
    /// A publish token, if it carried one.
    pub token: Option<String>,
}

/// Why a `streamid` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtStreamIdError {
    /// No streamid at all.
    #[error("the SRT caller sent no streamid; use streamid=publish:<stream>")]
    Missing,
    /// The access-control form without `r=`.
    #[error("the streamid names no resource; use #!::r=<stream>,m=publish")]
    NoResource,
    /// Neither form.
    #[error("unreadable streamid {0:?}; use publish:<stream> or #!::r=<stream>,m=publish")]
    Unreadable(String),
}

/// Reads a caller's `streamid`.
pub fn parse(stream_id: Option<&str>) -> Result<SrtRequest, SrtStreamIdError> {
    let raw = stream_id.ok_or(SrtStreamIdError::Missing)?.trim();
    // FFmpeg passes a URL-escaped `#` through as it is.
    let access_control = raw
        .strip_prefix("#!::")
        .or_else(|| raw.strip_prefix("%23!::"));
    if let Some(fields) = access_control {
        let mut request = SrtRequest {
            resource: String::new(),
            publish: false,
            token: None,
        };
        for field in fields.split(',') {
            match field.split_once('=') {
                Some(("r", value)) => request.resource = value.to_owned(),
                Some(("m", value)) => request.publish = value == "publish",
                Some(("t", value)) if !value.is_empty() => request.token = Some(value.to_owned()),
                _ => {}
            }
        }
        if request.resource.is_empty() {
            return Err(SrtStreamIdError::NoResource);
        }
        return Ok(request);
    }
    let (mode, rest) = raw
        .split_once(':')
        .ok_or_else(|| SrtStreamIdError::Unreadable(raw.chars().take(80).collect()))?;
    let (resource, token) = crate::stream_id::split_key(rest);
    Ok(SrtRequest {
        resource: resource.to_owned(),
        publish: mode == "publish",
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_name_the_stream_and_the_mode() {
        assert_eq!(
            parse(Some("publish:show")).unwrap(),
            SrtRequest {
                resource: "show".into(),
                publish: true,
                token: None
            }
        );
        assert_eq!(
            parse(Some("#!::r=show,m=publish")).unwrap(),
            parse(Some("publish:show")).unwrap()
        );
        assert_eq!(
            parse(Some("%23!::m=publish,r=show,t=abc"))
                .unwrap()
                .token
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            parse(Some("publish:show?key=k1")).unwrap().token.as_deref(),
            Some("k1")
        );
        assert!(!parse(Some("read:show")).unwrap().publish);
        assert!(!parse(Some("#!::r=show,m=request")).unwrap().publish);
    }

    #[test]
    fn missing_or_unreadable_stream_ids_say_what_to_send() {
        assert_eq!(parse(None), Err(SrtStreamIdError::Missing));
        assert_eq!(
            parse(Some("#!::m=publish")),
            Err(SrtStreamIdError::NoResource)
        );
        assert!(matches!(
            parse(Some("show")),
            Err(SrtStreamIdError::Unreadable(_))
        ));
    }
}
