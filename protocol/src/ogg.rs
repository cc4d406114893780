//! Ogg pages to packets (RFC 3533), enough to read Opus files: the load tester's audio source.
//!
//! Bytes come from files a user hands us, so a truncated or corrupt page ends the read instead
//! of panicking.

/// The packets of an Ogg stream in order (single logical stream; continued packets joined).
/// Reading stops at the first truncated or unrecognisable page.
pub fn packets(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut current = Vec::new();
    while bytes.len() >= 27 && &bytes[..4] == b"OggS" {
        let segments = usize::from(bytes[26]);
        let Some(table) = bytes.get(27..27 + segments) else {
            break;
        };
        let body_len: usize = table.iter().map(|&l| usize::from(l)).sum();
        let Some(body) = bytes.get(27 + segments..27 + segments + body_len) else {
            break;
        };
        let mut offset = 0;
        for &lace in table {
            let lace = usize::from(lace);
            current.extend_from_slice(&body[offset..offset + lace]);
            offset += lace;
            if lace < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        bytes = &bytes[27 + segments + body_len..];
    }
    packets
}

/// Opus packets of an Ogg Opus file: every packet after the `OpusHead` and `OpusTags` headers.
pub fn opus_packets(bytes: &[u8]) -> Vec<Vec<u8>> {
    packets(bytes)
        .into_iter()
        .skip_while(|p| !p.starts_with(b"OpusHead"))
        .skip(2)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(laces: &[u8], body: &[u8]) -> Vec<u8> {
        let mut page = b"OggS".to_vec();
        page.extend_from_slice(&[0; 22]);
        page.push(laces.len() as u8);
        page.extend_from_slice(laces);
        page.extend_from_slice(body);
        page
    }

    #[test]
    fn packets_spanning_laces_and_pages_are_joined() {
        let mut stream = page(&[3, 255], &[[1u8; 3].as_slice(), &[2u8; 255]].concat());
        stream.extend(page(&[2], &[2, 2]));
        let packets = packets(&stream);
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0], vec![1; 3]);
        assert_eq!(packets[1].len(), 257);
    }

    #[test]
    fn a_truncated_page_ends_the_read_without_panicking() {
        let mut stream = page(&[3], &[1, 1, 1]);
        stream.extend(page(&[200], &[0; 10]));
        assert_eq!(packets(&stream), vec![vec![1, 1, 1]]);
        assert!(packets(b"OggS").is_empty());
    }

    #[test]
    fn opus_headers_are_skipped() {
        let mut stream = page(&[8], b"OpusHead");
        stream.extend(page(&[8], b"OpusTags"));
        stream.extend(page(&[1], &[0xfc]));
        assert_eq!(opus_packets(&stream), vec![vec![0xfc]]);
    }
}
