//! The virtio-vsock packet (virtio 1.2 §5.10.6): a 44-byte little-endian header, then `len`
//! bytes of data for `VIRTIO_VSOCK_OP_RW`, spread over a descriptor chain in any layout
//! (Linux sends the header and the data in separate buffers and, since 6.3, receives both
//! in one buffer per chain).
//!
//! Every chain comes from the guest and is checked before a byte moves: transmitted packets
//! must be device-readable, terminated and inside guest RAM, with at most
//! [`MAX_PACKET_DATA`] bytes of data; receive buffers must be device-writable, terminated and
//! inside guest RAM before anything is read from the host for them.

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Bytes in `struct virtio_vsock_hdr`.
pub(crate) const HEADER_LEN: usize = 44;
/// The most data one packet carries (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub(crate) const MAX_PACKET_DATA: usize = 64 * 1024;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type offered.
pub(crate) const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_OP_REQUEST`: connect.
pub(crate) const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`: the connection is accepted.
pub(crate) const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`: the connection is refused or torn down.
pub(crate) const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`: the sender will receive and/or send no more.
pub(crate) const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`: stream data.
pub(crate) const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`: the sender's buffer space, unasked.
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`: asks the peer for a credit update.
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;
/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// A packet header, in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) src_cid: u64,
    pub(crate) dst_cid: u64,
    pub(crate) src_port: u32,
    pub(crate) dst_port: u32,
    pub(crate) len: u32,
    pub(crate) kind: u16,
    pub(crate) op: u16,
    pub(crate) flags: u32,
    pub(crate) buf_alloc: u32,
    pub(crate) fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian wire form.
    pub(crate) fn parse(raw: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let u32_at =
            |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The little-endian wire form.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        raw[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        raw[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        raw[24..28].copy_from_slice(&self.len.to_le_bytes());
        raw[28..30].copy_from_slice(&self.kind.to_le_bytes());
        raw[30..32].copy_from_slice(&self.op.to_le_bytes());
        raw[32..36].copy_from_slice(&self.flags.to_le_bytes());
        raw[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        raw[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        raw
    }
}

/// A descriptor chain that cannot carry a packet as the driver built it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    /// Fewer than 44 bytes before the chain ends.
    #[error("Descriptor chain too short for a packet header")]
    ShortHeader,
    /// A transmitted packet in a device-writable buffer.
    #[error("Device-writable buffer in a transmitted packet")]
    WriteOnly,
    /// A receive buffer the device may only read.
    #[error("Device-readable buffer in a receive chain")]
    ReadOnly,
    /// A buffer outside guest RAM.
    #[error("Buffer outside guest memory")]
    OutOfMemory,
    /// The chain loops or is longer than its table.
    #[error("Descriptor chain does not end")]
    Unterminated,
    /// An RW packet whose `len` is above the maximum or beyond its buffers.
    #[error("Packet length {0} larger than its buffers or the maximum")]
    Length(u32),
}

/// A transmitted chain that is not a packet: why, and the header if it could be read (the
/// connection it names gets a reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxError {
    pub(crate) header: Option<Header>,
    pub(crate) reason: PacketError,
}

/// Reads the packet the driver transmitted in `chain`: its header, and for `OP_RW` its data
/// into `data` (cleared first; `len` bytes on success).
pub(crate) fn read_tx(
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    data: &mut Vec<u8>,
) -> Result<Header, TxError> {
    data.clear();
    let mut raw = [0u8; HEADER_LEN];
    let mut header_bytes = 0usize;
    let mut header: Option<Header> = None;
    let mut last: Option<Descriptor> = None;
    let fail = |header, reason| Err(TxError { header, reason });
    // The iterator ends on its own after as many descriptors as the (indirect) table holds,
    // so a looping chain ends too; `last` then still has NEXT set.
    for desc in chain.by_ref() {
        last = Some(desc);
        if desc.is_write_only() {
            return fail(header, PacketError::WriteOnly);
        }
        let len = desc.len() as usize;
        let mut offset = 0usize;
        if header_bytes < HEADER_LEN {
            let take = (HEADER_LEN - header_bytes).min(len);
            if memory
                .read_slice(&mut raw[header_bytes..header_bytes + take], desc.addr())
                .is_err()
            {
                return fail(None, PacketError::OutOfMemory);
            }
            header_bytes += take;
            offset = take;
            if header_bytes == HEADER_LEN {
                let parsed = Header::parse(&raw);
                if parsed.op == OP_RW && parsed.len as usize > MAX_PACKET_DATA {
                    return fail(Some(parsed), PacketError::Length(parsed.len));
                }
                header = Some(parsed);
            }
        }
        let Some(parsed) = header else { continue };
        if parsed.op != OP_RW {
            continue;
        }
        let wanted = parsed.len as usize - data.len();
        let take = wanted.min(len - offset);
        if take == 0 {
            continue;
        }
        let Some(at) = desc.addr().checked_add(offset as u64) else {
            return fail(header, PacketError::OutOfMemory);
        };
        let start = data.len();
        data.resize(start + take, 0);
        if memory.read_slice(&mut data[start..], at).is_err() {
            data.clear();
            return fail(header, PacketError::OutOfMemory);
        }
    }
    if last.is_none_or(|desc| desc.has_next()) {
        return fail(header, PacketError::Unterminated);
    }
    let Some(parsed) = header else {
        return fail(None, PacketError::ShortHeader);
    };
    if parsed.op == OP_RW && data.len() < parsed.len as usize {
        return fail(header, PacketError::Length(parsed.len));
    }
    Ok(parsed)
}

/// A receive chain checked to be device-writable, terminated and inside guest RAM, up to a
/// header and [`MAX_PACKET_DATA`] bytes.
#[derive(Debug)]
pub(crate) struct RxBuffer {
    /// The usable part of each buffer, in order.
    parts: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

impl RxBuffer {
    /// Checks the chain the driver offered for receiving.
    pub(crate) fn from_chain(
        chain: &mut DescriptorChain<&GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
    ) -> Result<Self, PacketError> {
        const MAX: usize = HEADER_LEN + MAX_PACKET_DATA;
        let mut parts = Vec::new();
        let mut capacity = 0usize;
        let mut last: Option<Descriptor> = None;
        for desc in chain.by_ref() {
            last = Some(desc);
            if !desc.is_write_only() {
                return Err(PacketError::ReadOnly);
            }
            let take = (desc.len() as usize).min(MAX - capacity);
            if take == 0 {
                continue;
            }
            if !memory.check_range(desc.addr(), take) {
                return Err(PacketError::OutOfMemory);
            }
            parts.push((desc.addr(), take));
            capacity += take;
        }
        if last.is_none_or(|desc| desc.has_next()) {
            return Err(PacketError::Unterminated);
        }
        if capacity < HEADER_LEN {
            return Err(PacketError::ShortHeader);
        }
        Ok(Self { parts, capacity })
    }

    /// The data bytes a packet in this buffer can carry.
    pub(crate) fn data_room(&self) -> usize {
        self.capacity - HEADER_LEN
    }

    /// Writes `header` and `data` (at most [`RxBuffer::data_room`] bytes) into the buffers;
    /// returns the bytes written, the used length.
    pub(crate) fn write(
        &self,
        memory: &GuestMemoryMmap,
        header: &Header,
        data: &[u8],
    ) -> Result<u32, PacketError> {
        let raw = header.to_bytes();
        let data = &data[..data.len().min(self.data_room())];
        let mut sources = [&raw[..], data];
        let mut written = 0usize;
        for &(addr, len) in &self.parts {
            let mut offset = 0usize;
            while offset < len {
                let Some(source) = sources.iter_mut().find(|source| !source.is_empty()) else {
                    return Ok(written as u32);
                };
                let take = source.len().min(len - offset);
                let at = addr
                    .checked_add(offset as u64)
                    .ok_or(PacketError::OutOfMemory)?;
                memory
                    .write_slice(&source[..take], at)
                    .map_err(|_| PacketError::OutOfMemory)?;
                *source = &source[take..];
                offset += take;
                written += take;
            }
        }
        Ok(written as u32)
    }
}
