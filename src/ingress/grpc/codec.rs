//! gRPC message codecs: the watchdog's own services' protobuf codec, a codec that neither decodes nor encodes
//! (passthrough hands the function the bytes as they came), and gRPC's own 5-byte message framing, which
//! streaming calls use on the function's stdin and stdout.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::too_large;

/// Length of gRPC's message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// The first size of a call's message buffers. tonic's default, 8 KiB for the request's and again for the
/// answer's, made those two buffers the largest allocations of a small call, each past the allocator's
/// per-thread cache; the buffers grow for a larger message.
const FIRST_BUFFER_BYTES: usize = 1024;

/// How much encoded output tonic gathers before it sends (its default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// tonic-prost's protobuf codec with smaller first buffers; the generated `watchdog.v1` services and clients
/// use it (`codec_path` in `build.rs`).
#[derive(Debug)]
pub struct MessageCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for MessageCodec<T, U> {
    fn default() -> Self {
        MessageCodec(PhantomData)
    }
}

impl<T, U> Codec for MessageCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::new(buffer_settings())
    }
}

/// A codec for messages as raw bytes, enforcing `grpc_max_message_bytes` in both directions itself (tonic's own
/// limit would answer OUT_OF_RANGE).
#[derive(Debug, Clone, Copy)]
pub struct RawCodec {
    max: usize,
}

impl RawCodec {
    /// A codec accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> RawCodec {
        RawCodec { max }
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        *self
    }

    fn decoder(&mut self) -> RawCodec {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if item.len() > self.max {
            return Err(too_large("response", self.max));
        }
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        if src.remaining() > self.max {
            return Err(too_large("request", self.max));
        }
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// One message with gRPC's 5-byte prefix (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Splits a byte stream of 5-byte-prefixed messages (a function's streaming output) back into messages.
#[derive(Debug)]
pub struct Deframer {
    buf: BytesMut,
    max: usize,
}

impl Deframer {
    /// A deframer accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Deframer {
        Deframer { buf: BytesMut::new(), max }
    }

    /// Adds bytes as they arrive.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, `None` until one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::internal("the function wrote a compressed message, which is not supported"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(too_large("response", self.max));
        }
        if self.buf.len() < PREFIX + len {
            return Ok(None);
        }
        self.buf.advance(PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// `Ok` when nothing is left over (the output ended between messages).
    pub fn finish(&self) -> Result<(), Status> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(Status::internal(format!("the function's output ended inside a message ({n} bytes left over)"))),
        }
    }
}

/// The messages in a stream of output pieces; a failure of the pieces or a broken frame ends it with a status.
pub fn messages(
    pieces: BoxStream<'static, Result<Bytes, Status>>,
    max: usize,
) -> BoxStream<'static, Result<Bytes, Status>> {
    let state = Some((pieces, Deframer::new(max)));
    futures_util::stream::unfold(state, |state| async move {
        let (mut pieces, mut deframer) = state?;
        loop {
            match deframer.next_message() {
                Err(status) => return Some((Err(status), None)),
                Ok(Some(message)) => return Some((Ok(message), Some((pieces, deframer)))),
                Ok(None) => {}
            }
            match pieces.next().await {
                Some(Ok(piece)) => deframer.push(&piece),
                Some(Err(status)) => return Some((Err(status), None)),
                None => return deframer.finish().err().map(|status| (Err(status), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let mut stream = Vec::new();
        for message in [&b"hello"[..], b"", b"world!"] {
            stream.extend_from_slice(&frame(message));
        }
        for split in 0..stream.len() {
            let mut d = Deframer::new(100);
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.push(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, vec![&b"hello"[..], b"", b"world!"], "split at {split}");
        }
    }

    #[test]
    fn broken_frames_are_statuses() {
        let mut d = Deframer::new(3);
        d.push(&frame(b"toolong"));
        assert_eq!(d.next_message().unwrap_err().code(), Code::ResourceExhausted);
        let mut d = Deframer::new(100);
        d.push(&[1, 0, 0, 0, 1, 9]);
        assert_eq!(d.next_message().unwrap_err().code(), Code::Internal);
        let mut d = Deframer::new(100);
        d.push(&[0, 0, 0]);
        assert!(d.next_message().unwrap().is_none());
        assert_eq!(d.finish().unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn message_stream_ends_with_the_pieces_status() {
        let mut data = frame(b"a").to_vec();
        data.extend_from_slice(&frame(b"bc"));
        let pieces = futures_util::stream::iter(vec![
            Ok(Bytes::copy_from_slice(&data[..3])),
            Ok(Bytes::copy_from_slice(&data[3..])),
            Err(Status::unavailable("worker gone")),
        ])
        .boxed();
        let out: Vec<_> = messages(pieces, 100).collect().await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().unwrap(), &b"a"[..]);
        assert_eq!(out[1].as_ref().unwrap(), &b"bc"[..]);
        assert_eq!(out[2].as_ref().unwrap_err().code(), Code::Unavailable);
    }
}
