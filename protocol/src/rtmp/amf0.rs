//! AMF0 (Adobe's Action Message Format 0), the encoding of RTMP commands: decoding whatever
//! a client sends, with its depth and sizes bounded by the bytes actually present, and
//! encoding the few values a server answers with.

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0 {
    /// A double.
    Number(f64),
    /// A boolean.
    Boolean(bool),
    /// A string (short or long form).
    String(String),
    /// An anonymous object, an ECMA array or a typed object: ordered key-value pairs.
    Object(Vec<(String, Amf0)>),
    /// `null`.
    Null,
    /// `undefined`, and the markers we read past without a value (references, unsupported).
    Undefined,
    /// A strict array.
    Array(Vec<Amf0>),
}

/// Why bytes are not AMF0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    /// A value announces more bytes than there are.
    #[error("AMF0 value truncated")]
    Truncated,
    /// A type marker AMF0 does not have, or one we refuse (AMF3 switch, movie clips).
    #[error("unsupported AMF0 type marker {0:#04x}")]
    Marker(u8),
    /// Objects nested deeper than anyone needs.
    #[error("AMF0 values nested too deep")]
    TooDeep,
}

/// Deepest nesting accepted: RTMP commands use two or three levels.
const MAX_DEPTH: usize = 16;

impl Amf0 {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if it is one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Amf0> {
        match self {
            Amf0::Object(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Decodes every value in `bytes`.
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Amf0>, Amf0Error> {
    let mut values = Vec::new();
    while !bytes.is_empty() {
        values.push(decode(&mut bytes, 0)?);
    }
    Ok(values)
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], Amf0Error> {
    if bytes.len() < n {
        return Err(Amf0Error::Truncated);
    }
    let (taken, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(taken)
}

fn u16_at(bytes: &mut &[u8]) -> Result<usize, Amf0Error> {
    let b = take(bytes, 2)?;
    Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
}

fn u32_at(bytes: &mut &[u8]) -> Result<usize, Amf0Error> {
    let b = take(bytes, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn utf8(bytes: &mut &[u8], len: usize) -> Result<String, Amf0Error> {
    Ok(String::from_utf8_lossy(take(bytes, len)?).into_owned())
}

fn pairs(bytes: &mut &[u8], depth: usize) -> Result<Vec<(String, Amf0)>, Amf0Error> {
    let mut pairs = Vec::new();
    loop {
        let len = u16_at(bytes)?;
        if len == 0 && bytes.first() == Some(&0x09) {
            *bytes = &bytes[1..];
            return Ok(pairs);
        }
        let key = utf8(bytes, len)?;
        let value = decode(bytes, depth + 1)?;
        pairs.push((key, value));
    }
}

fn decode(bytes: &mut &[u8], depth: usize) -> Result<Amf0, Amf0Error> {
    if depth > MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    let marker = take(bytes, 1)?[0];
    Ok(match marker {
        0x00 => {
            let b = take(bytes, 8)?;
            Amf0::Number(f64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        }
        0x01 => Amf0::Boolean(take(bytes, 1)?[0] != 0),
        0x02 => {
            let len = u16_at(bytes)?;
            Amf0::String(utf8(bytes, len)?)
        }
        0x03 => Amf0::Object(pairs(bytes, depth)?),
        0x05 => Amf0::Null,
        0x06 => Amf0::Undefined,
        0x07 => {
            take(bytes, 2)?; // a reference to an earlier object: not followed
            Amf0::Undefined
        }
        0x08 => {
            take(bytes, 4)?; // the count is a hint; the pairs end with the end marker
            Amf0::Object(pairs(bytes, depth)?)
        }
        0x0a => {
            let count = u32_at(bytes)?;
            // Each value takes at least one byte: a count beyond what is left is a lie.
            if count > bytes.len() {
                return Err(Amf0Error::Truncated);
            }
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                values.push(decode(bytes, depth + 1)?);
            }
            Amf0::Array(values)
        }
        0x0b => {
            take(bytes, 10)?; // a date: milliseconds and a time zone nobody uses
            Amf0::Undefined
        }
        0x0c | 0x0f => {
            let len = u32_at(bytes)?;
            Amf0::String(utf8(bytes, len)?)
        }
        0x10 => {
            let len = u16_at(bytes)?;
            take(bytes, len)?; // the class name of a typed object
            Amf0::Object(pairs(bytes, depth)?)
        }
        other => return Err(Amf0Error::Marker(other)),
    })
}

/// Appends the encoding of `value` to `out`.
pub fn encode(value: &Amf0, out: &mut Vec<u8>) {
    match value {
        Amf0::Number(n) => {
            out.push(0x00);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0::Boolean(b) => out.extend_from_slice(&[0x01, u8::from(*b)]),
        Amf0::String(s) => {
            let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.push(0x02);
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        Amf0::Object(pairs) => {
            out.push(0x03);
            for (key, value) in pairs {
                let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(key);
                encode(value, out);
            }
            out.extend_from_slice(&[0, 0, 0x09]);
        }
        Amf0::Null => out.push(0x05),
        Amf0::Undefined => out.push(0x06),
        Amf0::Array(values) => {
            out.push(0x0a);
            out.extend_from_slice(&(values.len() as u32).to_be_bytes());
            for value in values {
                encode(value, out);
            }
        }
    }
}

/// The body of an AMF0 command message: its name, transaction id and values.
pub fn command(name: &str, transaction: f64, values: &[Amf0]) -> Vec<u8> {
    let mut payload = Vec::new();
    encode(&Amf0::String(name.to_owned()), &mut payload);
    encode(&Amf0::Number(transaction), &mut payload);
    for value in values {
        encode(value, &mut payload);
    }
    payload
}

/// Shorthand for an object from string keys.
pub fn object(pairs: &[(&str, Amf0)]) -> Amf0 {
    Amf0::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_command_round_trips() {
        let values = vec![
            Amf0::String("connect".into()),
            Amf0::Number(1.0),
            object(&[
                ("app", Amf0::String("live".into())),
                ("tcUrl", Amf0::String("rtmp://h/live".into())),
                ("fpad", Amf0::Boolean(false)),
                ("nested", object(&[("x", Amf0::Null)])),
            ]),
            Amf0::Array(vec![Amf0::Undefined, Amf0::Number(2.5)]),
        ];
        let mut bytes = Vec::new();
        for v in &values {
            encode(v, &mut bytes);
        }
        let decoded = decode_all(&bytes).unwrap();
        assert_eq!(decoded, values);
        assert_eq!(decoded[2].get("app").and_then(Amf0::as_str), Some("live"));
    }

    #[test]
    fn lies_about_sizes_and_deep_nesting_are_errors() {
        assert_eq!(
            decode_all(&[0x02, 0xff, 0xff, b'a']),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(
            decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05]),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(decode_all(&[0x11]), Err(Amf0Error::Marker(0x11)));
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x03, 0, 1, b'k']);
        }
        assert_eq!(decode_all(&deep), Err(Amf0Error::TooDeep));
        assert_eq!(decode_all(&[0x03, 0, 0]), Err(Amf0Error::Truncated));
    }
}
