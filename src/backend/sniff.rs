//! Go's `http.DetectContentType`, for responses that have no Content-Type from the config or the request:
//! the classic watchdog never sets one then, and Go's `net/http` sniffs the first 512 bytes of the body.

/// The media type Go's `net/http` would give a response body that starts with `data`.
pub fn detect_content_type(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(512)];
    let trimmed = {
        let start = data.iter().position(|b| !matches!(b, b'\t' | b'\n' | 0x0c | b'\r' | b' ')).unwrap_or(data.len());
        &data[start..]
    };
    const HTML_TAGS: &[&[u8]] = &[
        b"<!DOCTYPE HTML",
        b"<HTML",
        b"<HEAD",
        b"<SCRIPT",
        b"<IFRAME",
        b"<H1",
        b"<DIV",
        b"<FONT",
        b"<TABLE",
        b"<A",
        b"<STYLE",
        b"<TITLE",
        b"<B",
        b"<BODY",
        b"<BR",
        b"<P",
        b"<!--",
    ];
    for tag in HTML_TAGS {
        if trimmed.len() > tag.len()
            && trimmed[..tag.len()].eq_ignore_ascii_case(tag)
            && matches!(trimmed[tag.len()], b' ' | b'>')
        {
            return "text/html; charset=utf-8";
        }
    }
    if trimmed.starts_with(b"<?xml") {
        return "text/xml; charset=utf-8";
    }
    const EXACT: &[(&[u8], &str)] = &[
        (b"%PDF-", "application/pdf"),
        (b"%!PS-Adobe-", "application/postscript"),
        (b"\xFE\xFF", "text/plain; charset=utf-16be"),
        (b"\xFF\xFE", "text/plain; charset=utf-16le"),
        (b"\xEF\xBB\xBF", "text/plain; charset=utf-8"),
        (b"\x00\x00\x01\x00", "image/x-icon"),
        (b"\x00\x00\x02\x00", "image/x-icon"),
        (b"BM", "image/bmp"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
        (b"\xFF\xD8\xFF", "image/jpeg"),
        (b".snd", "audio/basic"),
        (b"OggS\x00", "application/ogg"),
        (b"MThd\x00\x00\x00\x06", "audio/midi"),
        (b"ID3", "audio/mpeg"),
        (b"\x1A\x45\xDF\xA3", "video/webm"),
        (b"Rar!\x1A\x07\x00", "application/x-rar-compressed"),
        (b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1F\x8B\x08", "application/x-gzip"),
        (b"\x00\x61\x73\x6D", "application/wasm"),
        (b"wOFF", "font/woff"),
        (b"wOF2", "font/woff2"),
    ];
    for (signature, media_type) in EXACT {
        if data.starts_with(signature) {
            return media_type;
        }
    }
    if data.len() >= 12 && &data[..4] == b"RIFF" {
        match &data[8..12] {
            b"WEBP" if data.len() >= 14 && &data[12..14] == b"VP" => return "image/webp",
            b"WAVE" => return "audio/wave",
            b"AVI " => return "video/avi",
            _ => {}
        }
    }
    if data.len() >= 12 && &data[4..8] == b"ftyp" && data[8..11] == *b"mp4" {
        return "video/mp4";
    }
    let binary =
        data.iter().any(|&b| b <= 0x08 || b == 0x0B || (0x0E..=0x1A).contains(&b) || (0x1C..=0x1F).contains(&b));
    if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    }
}

#[cfg(test)]
mod tests {
    use super::detect_content_type;

    #[test]
    fn like_go() {
        assert_eq!(detect_content_type(b"hello world\n"), "text/plain; charset=utf-8");
        assert_eq!(detect_content_type(b"{\"a\":1}"), "text/plain; charset=utf-8");
        assert_eq!(detect_content_type(b"exit status 1\n"), "text/plain; charset=utf-8");
        assert_eq!(detect_content_type(b"  <html><body>"), "text/html; charset=utf-8");
        assert_eq!(detect_content_type(b"<?xml version"), "text/xml; charset=utf-8");
        assert_eq!(detect_content_type(b"\x89PNG\r\n\x1a\n...."), "image/png");
        assert_eq!(detect_content_type(b"\x00\x01\x02"), "application/octet-stream");
        assert_eq!(detect_content_type(b"\x1f\x8b\x08\x00"), "application/x-gzip");
        assert_eq!(detect_content_type("héllo".as_bytes()), "text/plain; charset=utf-8");
    }
}
