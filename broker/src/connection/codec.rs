//! The packet codec: MQTT 3.1.1 frames read from and written to the device's TLS
//! stream.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{self, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

use super::CLOSE_TIMEOUT;
use crate::stats::{Counters, Refusal};

/// Read buffer space reserved before each read once a packet has begun.
const READ_CHUNK: usize = 2048;

/// The first read after an empty buffer goes to this much stack space: an idle device waits
/// for its next packet without a read buffer.
const FIRST_READ: usize = 64;

/// A device's TLS stream, boxed: moved from phase to phase of a connection, it is not copied
/// into each phase's future (1.2 KiB each).
pub(super) type Stream = Box<TlsStream<TcpStream>>;

/// Closes a TLS stream politely (close_notify), without waiting long.
pub(super) async fn close(mut stream: Stream) {
    let _ = timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// The device side: the TLS stream, the packet reader and a write buffer.
pub(super) struct DeviceIo {
    stream: Stream,
    reader: PacketReader,
    write_buffer: BytesMut,
    counters: Arc<Counters>,
}

impl DeviceIo {
    pub(super) fn new(stream: Stream, max_packet_size: usize, counters: Arc<Counters>) -> Self {
        Self {
            stream,
            reader: PacketReader::new(max_packet_size),
            write_buffer: BytesMut::new(),
            counters,
        }
    }

    /// Changes the largest packet the reader accepts from now on.
    pub(super) fn set_max_packet_size(&mut self, max_packet_size: usize) {
        self.reader.max_packet_size = max_packet_size;
    }

    /// Reads the next packet (cancel safe: partial input stays in the reader).
    pub(super) async fn read_packet(&mut self) -> Result<(Packet, RawHeader), ReadError> {
        let before = self.reader.bytes_read;
        let read = self.reader.next(&mut self.stream).await;
        self.counters
            .bytes_received(self.reader.bytes_read - before);
        read
    }

    /// A complete packet already read, if there is one: no I/O.
    pub(super) fn buffered_packet(&mut self) -> Result<Option<(Packet, RawHeader)>, ReadError> {
        self.reader.buffered()
    }

    /// Encodes packets as MQTT 3.1.1 and writes them in one go.
    pub(super) async fn write_packets(
        &mut self,
        packets: impl IntoIterator<Item = Packet>,
    ) -> io::Result<()> {
        for packet in packets {
            V4.write(strip_properties(packet), &mut self.write_buffer)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        }
        let result = self.stream.write_all(&self.write_buffer).await;
        if result.is_ok() {
            self.counters.bytes_sent(self.write_buffer.len() as u64);
        }
        // Freed, not cleared: an idle device keeps no write buffer.
        self.write_buffer = BytesMut::new();
        result?;
        self.stream.flush().await
    }

    /// Closes the connection politely, without waiting long.
    pub(super) async fn close(self) {
        close(self.stream).await;
    }
}

/// Drops MQTT 5 properties, which a 3.1.1 encoder cannot write (rumqttd's v4 encoder
/// panics on them).
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(puback, _) => Packet::PubAck(puback, None),
        Packet::SubAck(suback, _) => Packet::SubAck(suback, None),
        Packet::UnsubAck(unsuback, _) => Packet::UnsubAck(unsuback, None),
        Packet::PubRec(pubrec, _) => Packet::PubRec(pubrec, None),
        Packet::PubRel(pubrel, _) => Packet::PubRel(pubrel, None),
        Packet::PubComp(pubcomp, _) => Packet::PubComp(pubcomp, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other => other,
    }
}

/// What the session needs from a packet's raw bytes beyond what rumqttd's `Packet` shows.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawHeader {
    /// The fixed header's first byte (a PUBLISH's QoS is in it).
    pub(super) first_byte: u8,
    /// A QoS 1 or 2 PUBLISH's packet id (0 otherwise): rumqttd keeps the field crate-private.
    pub(super) publish_pkid: u16,
}

impl RawHeader {
    /// Reads the header of the complete packet at the start of `raw`.
    fn of(raw: &[u8]) -> Self {
        let first_byte = raw[0];
        let is_publish = first_byte >> 4 == 3;
        let qos = (first_byte >> 1) & 0b11;
        let publish_pkid = if is_publish && qos > 0 {
            publish_pkid(raw).unwrap_or(0)
        } else {
            0
        };
        Self {
            first_byte,
            publish_pkid,
        }
    }
}

/// The packet id of a QoS 1/2 PUBLISH: after the fixed header (1 byte, 1 to 4 of remaining
/// length) and the topic (2 bytes of length, then the topic).
fn publish_pkid(raw: &[u8]) -> Option<u16> {
    let length_bytes = raw.get(1..5)?.iter().position(|byte| byte & 0x80 == 0)? + 1;
    let topic_at = 1 + length_bytes;
    let topic_len = u16::from_be_bytes([*raw.get(topic_at)?, *raw.get(topic_at + 1)?]);
    let pkid_at = topic_at + 2 + usize::from(topic_len);
    Some(u16::from_be_bytes([
        *raw.get(pkid_at)?,
        *raw.get(pkid_at + 1)?,
    ]))
}

/// Why reading a packet failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The device closed the connection.
    Closed,
    /// The connection failed.
    Io(io::Error),
    /// The packet's announced length is above the limit.
    TooLarge,
    /// The bytes are not MQTT 3.1.1.
    Protocol(protocol::Error),
}

impl ReadError {
    pub(super) fn refusal(&self) -> Refusal {
        match self {
            Self::TooLarge => Refusal::PacketTooLarge,
            Self::Closed | Self::Io(_) | Self::Protocol(_) => Refusal::ProtocolError,
        }
    }
}

/// Frames MQTT 3.1.1 packets out of a byte stream, refusing oversize ones from their
/// fixed header, before their body is read.
struct PacketReader {
    buffer: BytesMut,
    max_packet_size: usize,
    /// Bytes read from the stream so far.
    bytes_read: u64,
}

impl PacketReader {
    fn new(max_packet_size: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_packet_size,
            bytes_read: 0,
        }
    }

    /// A complete packet already buffered, with its raw header.
    fn buffered(&mut self) -> Result<Option<(Packet, RawHeader)>, ReadError> {
        if self.buffer.is_empty() {
            // Nothing held between packets: an idle device keeps no read buffer.
            self.buffer = BytesMut::new();
            return Ok(None);
        }
        let header = RawHeader::of(&self.buffer);
        match V4.read_mut(&mut self.buffer, self.max_packet_size) {
            Ok(packet) => Ok(Some((packet, header))),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(protocol::Error::PayloadSizeLimitExceeded(_)) => Err(ReadError::TooLarge),
            Err(error) => Err(ReadError::Protocol(error)),
        }
    }

    /// The next packet, reading as needed. Cancel safe.
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(Packet, RawHeader), ReadError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            let read = if self.buffer.is_empty() {
                let mut first = [0u8; FIRST_READ];
                let read = stream.read(&mut first).await.map_err(ReadError::Io)?;
                self.buffer.extend_from_slice(&first[..read]);
                read
            } else {
                self.buffer.reserve(READ_CHUNK);
                stream
                    .read_buf(&mut self.buffer)
                    .await
                    .map_err(ReadError::Io)?
            };
            if read == 0 {
                return Err(ReadError::Closed);
            }
            self.bytes_read += read as u64;
        }
    }
}

/// Every complete packet of `bytes` (a 4 KiB packet limit), until the reader wants more or
/// refuses the rest: the reader as the fuzz target and the property test drive it.
#[cfg(any(test, fuzzing))]
pub(crate) fn read_all(bytes: &[u8]) -> (usize, Result<(), ReadError>) {
    let mut reader = PacketReader::new(4096);
    reader.buffer.extend_from_slice(bytes);
    let mut packets = 0;
    loop {
        match reader.buffered() {
            Ok(Some(_)) => packets += 1,
            Ok(None) => return (packets, Ok(())),
            Err(e) => return (packets, Err(e)),
        }
        assert!(packets <= bytes.len(), "more packets than bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversize_packet_is_refused_from_its_header() {
        // PUBLISH announcing 1,000,000 bytes, of which only the header arrives.
        let mut input: &[u8] = &[0x30, 0xc0, 0x84, 0x3d];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut input).await,
            Err(ReadError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_qos_1_publish_shows_its_packet_id() {
        // PUBLISH QoS 1, topic "a/b", packet id 0x1234, payload "x"; then PINGREQ.
        let mut input: &[u8] = &[
            0x32, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34, b'x', 0xc0, 0x00,
        ];
        let mut reader = PacketReader::new(1024);
        let (packet, header) = reader.next(&mut input).await.unwrap();
        assert!(matches!(packet, Packet::Publish(..)));
        assert_eq!((header.first_byte, header.publish_pkid), (0x32, 0x1234));
        let (packet, header) = reader.next(&mut input).await.unwrap();
        assert!(matches!(packet, Packet::PingReq(_)));
        assert_eq!(header.publish_pkid, 0);
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_and_eof_is_closed() {
        let mut garbage: &[u8] = &[0xf0, 0x00];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut garbage).await,
            Err(ReadError::Protocol(_))
        ));
        let mut empty: &[u8] = &[];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut empty).await,
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn every_seed_of_the_packet_corpus_reads_as_packets() {
        for seed in corpus::seeds("mqtt_packet") {
            let (packets, end) = read_all(&seed);
            assert!(packets >= 1 && end.is_ok(), "{seed:02x?}");
        }
    }

    corpus::proptest::proptest! {
        #![proptest_config(corpus::config())]

        /// The stable-toolchain fuzzing of the packet reader (seeds: corpus/seeds/mqtt_packet).
        #[test]
        fn mutated_packets_never_panic_the_reader(bytes in corpus::mutated("mqtt_packet")) {
            let _ = read_all(&bytes);
        }
    }
}
