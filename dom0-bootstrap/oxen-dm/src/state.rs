//! A device's [`TransportState`] as bytes: what a save stream's `DEVICE` record carries after
//! its index and kind (docs/migration.md), so that a device model on the restoring host can go on
//! serving the driver where the saved one stopped ([`crate::MmioTransport::resume`]).
//!
//! The queues' positions are not in it: `resume` takes them from the used rings in the guest's
//! memory, which the same stream carries. That is right only for a device model that finished
//! every request it took before the state was read (the domain paused, nothing in flight).
//!
//! Layout, all little endian, 192 bytes:
//! - magic `OXVT`, version `u32` (1);
//! - device type `u32`, device features `u64`, driver features `u64`;
//! - device features select, driver features select, queue select, status, interrupt status,
//!   config generation (`u32` each);
//! - flags `u32`: bit 0 the driver set a feature bank past 63, bit 1 the device was activated;
//!   no other bit;
//! - queue count `u32` (at most [`STATE_QUEUES`]), then 4 bytes of zero;
//! - the configuration space, [`STATE_CONFIG`] bytes;
//! - [`STATE_QUEUES`] queues, 32 bytes each: maximum size `u16`, size `u16`, ready `u32` (0 or
//!   1), descriptor table, driver (available) ring and device (used) ring addresses `u64`.
//!   Queues past the count are all zero.
//!
//! [`decode`] refuses anything else with a [`StateError`] and never panics.

use crate::mmio::{QueueState, TransportState, STATE_CONFIG, STATE_QUEUES};

/// `OXVT`: an Oxen virtio transport.
pub const MAGIC: [u8; 4] = *b"OXVT";
/// The version [`encode`] writes and the only one [`decode`] reads.
pub const VERSION: u32 = 1;
const QUEUE_LEN: usize = 32;
const HEAD_LEN: usize = 64;
/// The encoding's length.
pub const STATE_LEN: usize = HEAD_LEN + STATE_CONFIG + STATE_QUEUES * QUEUE_LEN;

const FLAG_FEATURES_HIGH: u32 = 1 << 0;
const FLAG_ACTIVATED: u32 = 1 << 1;

/// Why bytes are not a transport state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Not [`STATE_LEN`] bytes.
    Length(usize),
    BadMagic,
    /// A version this code does not read.
    Version(u32),
    /// A flag bit that has no meaning.
    Flags(u32),
    /// The reserved bytes after the queue count are not zero.
    Reserved,
    /// More queues than a state holds.
    QueueCount(u32),
    /// Queue `index`: ready neither 0 nor 1, or a queue past the count that is not all zero.
    Queue(usize),
    /// Not an `OXDS` set (`oxen_abi::save_stream::DeviceSet::parse`'s reason).
    Set(oxen_abi::save_stream::StreamError),
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length(n) => write!(f, "a device state is {STATE_LEN} bytes, this one {n}"),
            Self::BadMagic => f.write_str("not a virtio transport's state (no OXVT magic)"),
            Self::Version(v) => write!(f, "device state version {v}, this device model reads {VERSION}"),
            Self::Flags(b) => write!(f, "device state flags {b:#x} have bits with no meaning"),
            Self::Reserved => f.write_str("the device state's reserved bytes are not zero"),
            Self::QueueCount(n) => write!(f, "{n} queues in a device state, at most {STATE_QUEUES}"),
            Self::Queue(i) => write!(f, "queue {i} of the device state is malformed"),
            Self::Set(e) => write!(f, "not a set of device states: {e}"),
        }
    }
}

impl std::error::Error for StateError {}

/// `state` as [`STATE_LEN`] bytes.
pub fn encode(state: &TransportState) -> Vec<u8> {
    let mut b = Vec::with_capacity(STATE_LEN);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&state.device_type.to_le_bytes());
    b.extend_from_slice(&state.device_features.to_le_bytes());
    b.extend_from_slice(&state.driver_features.to_le_bytes());
    for v in [
        state.device_features_sel,
        state.driver_features_sel,
        state.queue_sel,
        state.status,
        state.interrupt_status,
        state.config_generation,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let flags = if state.driver_features_high { FLAG_FEATURES_HIGH } else { 0 } | if state.activated { FLAG_ACTIVATED } else { 0 };
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&u32::from(state.queue_count).to_le_bytes());
    b.resize(HEAD_LEN, 0);
    b.extend_from_slice(&state.config);
    for (i, q) in state.queues.iter().enumerate() {
        // Queues past the count are written as zero, whatever the value holds.
        let q = if i < usize::from(state.queue_count) { *q } else { QueueState::default() };
        b.extend_from_slice(&q.max_size.to_le_bytes());
        b.extend_from_slice(&q.size.to_le_bytes());
        b.extend_from_slice(&u32::from(q.ready).to_le_bytes());
        b.extend_from_slice(&q.desc.to_le_bytes());
        b.extend_from_slice(&q.driver.to_le_bytes());
        b.extend_from_slice(&q.device.to_le_bytes());
    }
    b
}

/// The states of one device model's devices, disks then vifs, as an `OXDS` set
/// (`oxen_abi::save_stream::device_set_join`): what `oxen-dm` writes for `oxl save`
/// (`--state-file`) and reads back on restore (`--resume`). oxl carries each device's bytes
/// as they are, one `DEVICE` record each.
pub fn encode_set(states: &[TransportState]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = states.iter().map(encode).collect();
    let mut b = Vec::new();
    oxen_abi::save_stream::device_set_join(encoded.iter().map(Vec::as_slice), |p| b.extend_from_slice(p));
    b
}

/// The states of a set, each checked by [`decode`].
pub fn decode_set(b: &[u8]) -> Result<Vec<TransportState>, StateError> {
    let set = oxen_abi::save_stream::DeviceSet::parse(b).map_err(StateError::Set)?;
    set.iter().map(decode).collect()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// The state `b` encodes, checked as the module's text says.
pub fn decode(b: &[u8]) -> Result<TransportState, StateError> {
    if b.len() != STATE_LEN {
        return Err(StateError::Length(b.len()));
    }
    if b[0..4] != MAGIC {
        return Err(StateError::BadMagic);
    }
    let version = u32_at(b, 4);
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let flags = u32_at(b, 52);
    if flags & !(FLAG_FEATURES_HIGH | FLAG_ACTIVATED) != 0 {
        return Err(StateError::Flags(flags));
    }
    if b[60..HEAD_LEN] != [0; 4] {
        return Err(StateError::Reserved);
    }
    let count = u32_at(b, 56);
    let queue_count = u8::try_from(count).ok().filter(|&n| usize::from(n) <= STATE_QUEUES).ok_or(StateError::QueueCount(count))?;
    let mut config = [0u8; STATE_CONFIG];
    config.copy_from_slice(&b[HEAD_LEN..HEAD_LEN + STATE_CONFIG]);
    let mut queues = [QueueState::default(); STATE_QUEUES];
    for (i, q) in queues.iter_mut().enumerate() {
        let at = HEAD_LEN + STATE_CONFIG + i * QUEUE_LEN;
        let raw = &b[at..at + QUEUE_LEN];
        let ready = match u32_at(raw, 4) {
            0 => false,
            1 => true,
            _ => return Err(StateError::Queue(i)),
        };
        if i >= usize::from(queue_count) && raw.iter().any(|&x| x != 0) {
            return Err(StateError::Queue(i));
        }
        *q = QueueState { max_size: u16_at(raw, 0), size: u16_at(raw, 2), ready, desc: u64_at(raw, 8), driver: u64_at(raw, 16), device: u64_at(raw, 24) };
    }
    Ok(TransportState {
        device_type: u32_at(b, 8),
        device_features: u64_at(b, 12),
        driver_features: u64_at(b, 20),
        device_features_sel: u32_at(b, 28),
        driver_features_sel: u32_at(b, 32),
        queue_sel: u32_at(b, 36),
        status: u32_at(b, 40),
        interrupt_status: u32_at(b, 44),
        config_generation: u32_at(b, 48),
        driver_features_high: flags & FLAG_FEATURES_HIGH != 0,
        activated: flags & FLAG_ACTIVATED != 0,
        queue_count,
        config,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TransportState {
        let mut config = [0u8; STATE_CONFIG];
        for (i, c) in config.iter_mut().enumerate() {
            *c = i as u8 ^ 0x5a;
        }
        TransportState {
            device_type: 1,
            device_features: 0x1_0000_0020,
            config,
            queue_count: 2,
            queues: [
                QueueState { max_size: 256, size: 128, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 },
                QueueState { max_size: 256, size: 64, ready: false, desc: 0x4000_0000_1000, driver: 7, device: u64::MAX },
            ],
            device_features_sel: 1,
            driver_features_sel: 0,
            driver_features: 0x1_0000_0000,
            driver_features_high: true,
            queue_sel: 1,
            status: 0xf,
            interrupt_status: 1,
            config_generation: 3,
            activated: true,
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let s = sample();
        let b = encode(&s);
        assert_eq!(b.len(), STATE_LEN);
        assert_eq!(decode(&b), Ok(s));
        let one = TransportState { queue_count: 1, activated: false, driver_features_high: false, ..s };
        let back = decode(&encode(&one)).unwrap();
        assert_eq!(back.queues[1], QueueState::default(), "a queue past the count is not carried");
        assert_eq!((back.queue_count, back.activated, back.driver_features_high), (1, false, false));
        assert_eq!(back.queues[0], s.queues[0]);
    }

    #[test]
    fn every_malformation_is_refused() {
        let good = encode(&sample());
        assert_eq!(decode(&good[..STATE_LEN - 1]), Err(StateError::Length(STATE_LEN - 1)));
        assert_eq!(decode(&[good.as_slice(), &[0]].concat()), Err(StateError::Length(STATE_LEN + 1)));
        let with = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            decode(&b)
        };
        assert_eq!(with(0, b"OXVS"), Err(StateError::BadMagic));
        assert_eq!(with(4, &2u32.to_le_bytes()), Err(StateError::Version(2)));
        assert_eq!(with(52, &4u32.to_le_bytes()), Err(StateError::Flags(4)));
        assert_eq!(with(60, &[1]), Err(StateError::Reserved));
        assert_eq!(with(56, &3u32.to_le_bytes()), Err(StateError::QueueCount(3)));
        assert_eq!(with(56, &0x100u32.to_le_bytes()), Err(StateError::QueueCount(0x100)));
        let q1 = HEAD_LEN + STATE_CONFIG + QUEUE_LEN;
        assert_eq!(with(q1 + 4, &2u32.to_le_bytes()), Err(StateError::Queue(1)));
        // One queue: the second must be all zero.
        let mut one = encode(&TransportState { queue_count: 1, ..sample() });
        assert!(decode(&one).is_ok());
        one[q1 + 31] = 1;
        assert_eq!(decode(&one), Err(StateError::Queue(1)));
    }

    #[test]
    fn a_set_reads_back_and_a_bad_state_in_it_is_refused() {
        let mut one = TransportState { queue_count: 1, ..sample() };
        one.queues[1] = QueueState::default();
        let set = encode_set(&[sample(), one]);
        assert_eq!(decode_set(&set), Ok(vec![sample(), one]));
        assert_eq!(decode_set(&encode_set(&[])), Ok(vec![]));
        assert!(matches!(decode_set(&set[..set.len() - 1]), Err(StateError::Set(_))));
        let mut bad = set.clone();
        bad[8 + 4] = b'X';
        assert_eq!(decode_set(&bad), Err(StateError::BadMagic), "the first state's own magic");
    }

    #[test]
    fn no_byte_flip_panics() {
        let good = encode(&sample());
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[at] ^= 1 << bit;
                let _ = decode(&b);
            }
        }
    }
}
