//! The virtio-mmio transport, version 2 (virtio spec v1.2 §4.2).
//!
//! [`MmioTransport`] is the register file a domU's driver sees at a device's MMIO window. It owns
//! the device ([`VirtioDevice`]), negotiates features, collects each queue's configuration and, on
//! DRIVER_OK, hands the device its [`Queue`]s and the guest memory. It does no I/O itself: a
//! register write returns an [`Effect`] telling the caller (the ioreq loop in dom0) what to do, so
//! that a QueueNotify can be answered at once and processed after the vCPU has been resumed
//! (issue 11: notifications do not make the vCPU wait for dom0).
//!
//! Every value read from a write is guest-controlled. Accesses the spec forbids (§4.2.2.2: control
//! registers are 32-bit and aligned) read as 0 and are ignored on write; nothing here panics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::GuestMemoryMmap;

/// "virt" in little endian (§4.2.2, MagicValue).
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The non-legacy interface (§4.2.2, Version; 1 is the legacy one of §4.2.4).
pub const VERSION: u32 = 2;
/// VendorID: "OXEN". Drivers match on DeviceID only; the value just names who built the device.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"OXEN");
/// Size of the MMIO window a transport answers for: registers up to 0x100, config space after.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// InterruptStatus bit: the device used a buffer in a queue (§4.2.2, InterruptStatus).
const INT_VRING: u32 = VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration (or DEVICE_NEEDS_RESET) changed.
const INT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// The largest split queue the spec allows (§2.7: Queue Size ≤ 32768, a power of 2).
const MAX_QUEUE_SIZE: u16 = 32768;

/// What the caller of [`MmioTransport::write`] or [`MmioTransport::process_queue`] must do next.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the access is complete.
    None,
    /// The driver notified this queue (QueueNotify): call [`MmioTransport::process_queue`]
    /// with it, after resuming the vCPU if possible.
    QueueNotify(u16),
    /// Set the device's (level-triggered) interrupt line into the domU: `true` raise, `false`
    /// lower. Raising an already raised line is harmless and may be repeated.
    Interrupt(bool),
}

/// Why a device refused to start at DRIVER_OK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs was not made ready by the driver.
    QueueNotReady(usize),
    /// The device cannot work with what was negotiated or configured.
    Invalid(&'static str),
}

/// Copies `data.len()` bytes of a device's configuration space `config` from
/// `offset` into `data`; bytes past its end read as 0 (a driver may read any
/// offset the transport lets through).
pub fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}

/// A virtio device behind a transport: what virtio-mmio needs from it (§4.2.3) and the one
/// operation after start, processing a notified queue.
pub trait VirtioDevice: Send {
    /// Virtio device ID (§5: 2 for a block device).
    fn device_type(&self) -> u32;
    /// The feature bits offered to the driver, transport bits (VERSION_1, …) included.
    fn features(&self) -> u64;
    /// Maximum size of each queue; their number is the device's number of queues. Each must be a
    /// power of 2 no larger than 32768 (§2.7).
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; read-only fields ignore the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device at DRIVER_OK with the negotiated features, the queues (one per
    /// `queue_max_sizes` entry, ready or not, in order) and the guest's memory.
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// Processes the buffers the driver made available in queue `index` (< the number of queues;
    /// only called on an activated device). Returns whether the driver must be interrupted.
    fn process_queue(&mut self, index: u16) -> bool;
    /// Returns the device to its initial state (§2.4): queues and guest memory dropped.
    fn reset(&mut self);
    /// A descriptor the serving loop should wait on for this device (a network backend's), or
    /// `None` while the device wants no input (not started, or nowhere to put it yet). Devices
    /// without a backend to watch (a disk) keep the default.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The descriptor of [`VirtioDevice::backend_fd`] is readable: take what the backend has into
    /// the guest. Returns whether the driver must be interrupted.
    fn backend_ready(&mut self) -> bool {
        false
    }
}

/// The transport's record of one queue's registers before DRIVER_OK (§4.2.2, Queue*).
#[derive(Clone, Copy, Debug)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Builds the `virtio-queue` queue these registers describe, or `None` if they are not a
    /// valid split queue in `mem` (size, alignment §2.7, rings inside guest RAM). The checks are
    /// virtio-queue's own (`try_set_*`, `is_valid`), so what is accepted here is what it can run.
    fn to_queue(self, mem: &GuestMemoryMmap) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }
}

/// The most queues a [`TransportState`] holds: what any device here has (virtio-net: receive and
/// transmit).
pub const STATE_QUEUES: usize = 2;
/// Bytes of a device's configuration space a [`TransportState`] keeps (virtio-blk's 36, net's 6).
pub const STATE_CONFIG: usize = 64;

/// One queue's registers in a [`TransportState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// A transport as a value: its registers, and what its device showed the driver (type, features,
/// configuration space). Enough to go on serving the driver with another device behind the same
/// registers ([`MmioTransport::resume`]): what `oxen-dm`'s warden does when the device model
/// dies (`crate::warden`). Plain data (no pointers), so it can sit in memory shared between
/// processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportState {
    pub device_type: u32,
    pub device_features: u64,
    pub config: [u8; STATE_CONFIG],
    /// How many of `queues` the device has.
    pub queue_count: u8,
    pub queues: [QueueState; STATE_QUEUES],
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub driver_features_high: bool,
    pub queue_sel: u32,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub activated: bool,
}

/// Why [`MmioTransport::resume`] could not take a [`TransportState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeError {
    /// The device is not the one the state was taken from (type or queues differ).
    OtherDevice,
    /// A queue the state has ready is not valid in this guest memory (`index`).
    BadQueue(usize),
    /// The device refused to start with the state's queues and features.
    Activate(ActivateError),
}

/// A virtio-mmio version 2 device: the register file of §4.2.2 around a [`VirtioDevice`].
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver set a bit in a feature bank past 63 (none is ever offered).
    driver_features_high: bool,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    status: u32,
    interrupt_status: InterruptStatus,
    config_generation: u32,
    activated: bool,
}

/// Where a transport's InterruptStatus register lives.
#[derive(Debug)]
enum InterruptStatus {
    /// Here: the driver's reads of it and its acknowledgements are requests to this process.
    Own(u32),
    /// In the ioreq page (`IoreqPage::interrupt_status`, ABI 1.10), where the hypervisor answers
    /// the driver's reads and clears what it acknowledges, lowering the line when nothing is
    /// left; this side only sets bits (atomically) and raises the line.
    Shared(&'static AtomicU32),
}

impl InterruptStatus {
    fn get(&self) -> u32 {
        match self {
            Self::Own(v) => *v,
            Self::Shared(w) => w.load(Ordering::SeqCst),
        }
    }

    /// Sets `bits`; returns whether the line must be raised. A shared word that already had a bit
    /// set has its line up (whoever set that bit raised it) or being raised again by the
    /// hypervisor, which reads the word after it lowers the line (`vm::ioreq`).
    fn raise(&mut self, bits: u32) -> bool {
        match self {
            Self::Own(v) => {
                *v |= bits;
                true
            }
            Self::Shared(w) => w.fetch_or(bits, Ordering::SeqCst) == 0,
        }
    }

    /// Clears `bits`; returns whether that cleared the last one (the line goes down).
    fn clear(&mut self, bits: u32) -> bool {
        let was = match self {
            Self::Own(v) => std::mem::replace(v, *v & !bits),
            Self::Shared(w) => w.fetch_and(!bits, Ordering::SeqCst),
        };
        was != 0 && was & !bits == 0
    }
}

/// Why a transport could not be built (a device bug, never a guest action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewError {
    /// The device's queue `index` has a maximum size that is 0, not a power of 2 or > 32768.
    BadQueueMaxSize(usize),
}

impl MmioTransport {
    /// A transport for `device` whose driver lives in the guest whose RAM is `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: Arc<GuestMemoryMmap>) -> Result<Self, NewError> {
        let mut queues = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            if max == 0 || !max.is_power_of_two() || max > MAX_QUEUE_SIZE {
                return Err(NewError::BadQueueMaxSize(i));
            }
            queues.push(QueueRegs::new(max));
        }
        Ok(Self {
            device,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_high: false,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: InterruptStatus::Own(0),
            config_generation: 0,
            activated: false,
        })
    }

    /// The transport as a value; `None` for a device with more than [`STATE_QUEUES`] queues.
    pub fn state(&self) -> Option<TransportState> {
        if self.queues.len() > STATE_QUEUES {
            return None;
        }
        let mut queues = [QueueState::default(); STATE_QUEUES];
        for (q, r) in queues.iter_mut().zip(&self.queues) {
            *q = QueueState {
                max_size: r.max_size,
                size: r.size,
                ready: r.ready,
                desc: r.desc,
                driver: r.driver,
                device: r.device,
            };
        }
        let mut config = [0u8; STATE_CONFIG];
        self.device.read_config(0, &mut config);
        Some(TransportState {
            device_type: self.device.device_type(),
            device_features: self.device.features(),
            config,
            queue_count: self.queues.len() as u8,
            queues,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            driver_features_high: self.driver_features_high,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt_status.get(),
            config_generation: self.config_generation,
            activated: self.activated,
        })
    }

    /// A transport with `state`'s registers around `device`, which must be of the same type with
    /// the same queues. If the state was started (DRIVER_OK), the device is started with its
    /// queues, each going on from the used ring's index in `mem`: right for a device that
    /// completes every buffer it takes before taking the next (ours do), whose taken-but-unused
    /// buffers are then taken again.
    pub fn resume(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        state: &TransportState,
    ) -> Result<Self, ResumeError> {
        let mut t = Self::new(device, mem).map_err(|_| ResumeError::OtherDevice)?;
        let count = usize::from(state.queue_count);
        let same = t.device.device_type() == state.device_type
            && count == t.queues.len()
            && t.queues.iter().zip(&state.queues).all(|(r, s)| r.max_size == s.max_size);
        if !same {
            return Err(ResumeError::OtherDevice);
        }
        for (r, s) in t.queues.iter_mut().zip(&state.queues) {
            *r = QueueRegs { max_size: r.max_size, size: s.size, ready: s.ready, desc: s.desc, driver: s.driver, device: s.device };
        }
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.driver_features_high = state.driver_features_high;
        t.queue_sel = state.queue_sel;
        t.status = state.status;
        t.interrupt_status = InterruptStatus::Own(state.interrupt_status);
        t.config_generation = state.config_generation;
        if state.activated {
            let event_idx = state.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            let mut queues = Vec::with_capacity(count);
            for (i, r) in t.queues.iter().enumerate() {
                let q = if r.ready {
                    let mut q = r.to_queue(&t.mem).ok_or(ResumeError::BadQueue(i))?;
                    let used = q.used_idx(&*t.mem, Ordering::Acquire).map_err(|_| ResumeError::BadQueue(i))?;
                    q.set_next_avail(used.0);
                    q.set_next_used(used.0);
                    q.set_event_idx(event_idx);
                    q
                } else {
                    Queue::new(r.max_size).map_err(|_| ResumeError::BadQueue(i))?
                };
                queues.push(q);
            }
            t.device
                .activate(Arc::clone(&t.mem), queues, t.driver_features)
                .map_err(ResumeError::Activate)?;
            t.activated = true;
        }
        Ok(t)
    }

    /// The device status register (§2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// How many queues the device has.
    pub fn queue_count(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Whether the device was started (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The features the driver acknowledged (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the interrupt line should be up now (InterruptStatus ≠ 0). The line is level-
    /// triggered: it stays up until the driver acknowledges every bit (§4.2.2, InterruptACK).
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status.get() != 0
    }

    /// From now on InterruptStatus lives in `word`, a word of the ioreq page the hypervisor answers
    /// the driver's InterruptStatus reads and InterruptACK writes from (the device's window
    /// registered with `FLAG_INTERRUPT_STATUS`, ABI 1.10). The word takes the register's value now.
    pub fn share_interrupt_status(&mut self, word: &'static AtomicU32) {
        word.store(self.interrupt_status.get(), Ordering::SeqCst);
        self.interrupt_status = InterruptStatus::Shared(word);
    }

    /// Whether InterruptStatus lives in the ioreq page ([`MmioTransport::share_interrupt_status`]):
    /// the hypervisor lowers the line behind this process's back, so a raise must always be made.
    pub fn interrupt_status_shared(&self) -> bool {
        matches!(self.interrupt_status, InterruptStatus::Shared(_))
    }

    /// A guest read of `size` bytes at `offset` in the MMIO window. Bad accesses read as 0.
    /// Reads have no side effects (none of §4.2.2's registers clears on read).
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            return self.read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), size);
        }
        // §4.2.2.2: the driver MUST use 32-bit wide, aligned accesses for control registers.
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        // Below 0x100 here: the cast is exact.
        let v: u32 = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                // §4.2.2: feature bits past 63 do not exist: the bank reads as 0.
                _ => 0,
            },
            // §4.2.2: QueueNumMax reads 0 for a queue that is not available.
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.sel_queue().map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => self.sel_queue().map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.get(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: §4.2.2 has a non-existent region read a length of -1.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // Write-only and reserved registers.
            _ => 0,
        };
        u64::from(v)
    }

    /// A guest write of `size` bytes of `value` at `offset` in the MMIO window. Bad accesses
    /// are ignored ([`Effect::None`]).
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> Effect {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), size, value);
            return Effect::None;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return Effect::None;
        }
        // Control registers are 32 bits: the upper half of a wider value is not written.
        let v = value as u32;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                // Kept as written; checked (≤ max, power of 2) when QueueReady is set.
                if let Some(q) = self.sel_queue_cfg() {
                    q.size = v.try_into().unwrap_or(0);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.set_queue_addr(v, false, |q| &mut q.desc),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.set_queue_addr(v, true, |q| &mut q.desc),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.set_queue_addr(v, false, |q| &mut q.driver),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.set_queue_addr(v, true, |q| &mut q.driver),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.set_queue_addr(v, false, |q| &mut q.device),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.set_queue_addr(v, true, |q| &mut q.device),
            // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.2).
            VIRTIO_MMIO_QUEUE_NOTIFY if self.activated && (v as usize) < self.queues.len() => {
                return Effect::QueueNotify(v as u16);
            }
            VIRTIO_MMIO_INTERRUPT_ACK => {
                let last = self.interrupt_status.clear(v);
                return if last { Effect::Interrupt(false) } else { Effect::None };
            }
            VIRTIO_MMIO_STATUS => return self.write_status(v),
            // Reserved, read-only and SHMSel (no regions): ignored.
            _ => {}
        }
        Effect::None
    }

    /// Processes queue `index` after an [`Effect::QueueNotify`]; returns whether to raise the
    /// interrupt. A stale index (the device was reset meanwhile) does nothing.
    pub fn process_queue(&mut self, index: u16) -> Effect {
        if !self.activated || usize::from(index) >= self.queues.len() {
            return Effect::None;
        }
        if self.device.process_queue(index) {
            return self.raise(INT_VRING);
        }
        Effect::None
    }

    /// The descriptor the serving loop waits on for this device now ([`VirtioDevice::backend_fd`];
    /// `None` before DRIVER_OK).
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd().filter(|_| self.activated)
    }

    /// The device's backend descriptor is readable: as [`MmioTransport::process_queue`], returns
    /// whether to raise the interrupt.
    pub fn backend_ready(&mut self) -> Effect {
        if self.activated && self.device.backend_ready() {
            return self.raise(INT_VRING);
        }
        Effect::None
    }

    fn raise(&mut self, bits: u32) -> Effect {
        if self.interrupt_status.raise(bits) {
            Effect::Interrupt(true)
        } else {
            Effect::None
        }
    }

    fn sel_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    /// The selected queue's registers, if they may still be written: §4.2.3.2 has the driver
    /// configure a queue before setting QueueReady, and nothing changes after DRIVER_OK.
    fn sel_queue_cfg(&mut self) -> Option<&mut QueueRegs> {
        if self.activated {
            return None;
        }
        let q = self.queues.get_mut(usize::try_from(self.queue_sel).ok()?)?;
        (!q.ready).then_some(q)
    }

    fn set_queue_addr(&mut self, v: u32, high: bool, field: fn(&mut QueueRegs) -> &mut u64) {
        if let Some(q) = self.sel_queue_cfg() {
            let f = field(q);
            *f = if high {
                (*f & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*f & !0xffff_ffff) | u64::from(v)
            };
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        if self.activated {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        match v {
            0 => q.ready = false,
            // A configuration virtio-queue would refuse (bad size, misaligned ring, ring outside
            // RAM) leaves QueueReady at 0: the driver reading it back sees the queue unusable,
            // and DRIVER_OK without the queue fails activation (DEVICE_NEEDS_RESET).
            1 => q.ready = q.to_queue(&mem).is_some(),
            _ => {}
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        // §3.1.1: features are negotiated before FEATURES_OK; afterwards they are fixed.
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            // Bits past 63 are never offered: a driver asking for one cannot have FEATURES_OK.
            _ => self.driver_features_high |= v != 0,
        }
    }

    /// Status writes (§2.1, §3.1.1, §4.2.3.1): 0 resets; otherwise the driver only adds bits, in
    /// the order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK. A write that clears a bit is ignored.
    fn write_status(&mut self, v: u32) -> Effect {
        if v == 0 {
            return if self.reset() { Effect::Interrupt(false) } else { Effect::None };
        }
        let v = v & 0xff;
        if v & self.status != self.status {
            return Effect::None;
        }
        let added = v & !self.status;
        // FEATURES_OK is only kept if the driver accepted a subset of what was offered and, on a
        // version 2 transport, VERSION_1 (§6.1: the device MAY fail a driver without it).
        let mut new =
            self.status | (added & !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK));
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.features_acceptable() {
            new |= VIRTIO_CONFIG_S_FEATURES_OK;
        }
        let mut effect = Effect::None;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let ready_to_go = new & VIRTIO_CONFIG_S_FEATURES_OK != 0
                && new & VIRTIO_CONFIG_S_DRIVER != 0
                && new & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0
                && new & VIRTIO_CONFIG_S_FAILED == 0;
            if ready_to_go {
                new |= VIRTIO_CONFIG_S_DRIVER_OK;
                self.status = new;
                if let Err(()) = self.activate() {
                    effect = self.needs_reset();
                }
                return effect;
            }
        }
        self.status = new;
        effect
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        !self.driver_features_high
            && self.driver_features & !offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) -> Result<(), ()> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for regs in &self.queues {
            let q = if regs.ready {
                // Checked when QueueReady was set and unchanged since; checked again because
                // the device must only ever get queues virtio-queue accepts.
                regs.to_queue(&self.mem).ok_or(())?
            } else {
                Queue::new(regs.max_size).map_err(|_| ())?
            };
            queues.push(q);
        }
        self.device
            .activate(Arc::clone(&self.mem), queues, self.driver_features)
            .map_err(|_| ())?;
        self.activated = true;
        Ok(())
    }

    /// §2.1.2: on an error it cannot recover from, the device sets DEVICE_NEEDS_RESET and, as
    /// DRIVER_OK is set, sends a configuration change notification.
    fn needs_reset(&mut self) -> Effect {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(INT_CONFIG)
    }

    /// Device reset (§2.4, §4.2.3.1: writing 0 to Status): everything back to the initial state.
    /// Returns whether an interrupt was pending (the line goes down).
    fn reset(&mut self) -> bool {
        self.device.reset();
        self.activated = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_high = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.status = 0;
        self.interrupt_status.clear(u32::MAX)
    }

    /// Config space access sizes (§4.2.2.2): 1, 2, 4 (and 8, which a 64-bit field may use on
    /// some drivers), naturally aligned; others read 0.
    fn config_access_ok(offset: u64, size: u8) -> bool {
        matches!(size, 1 | 2 | 4 | 8)
            && offset.is_multiple_of(u64::from(size))
            && offset
                .checked_add(u64::from(size))
                .is_some_and(|end| end <= MMIO_WINDOW_SIZE - u64::from(VIRTIO_MMIO_CONFIG))
    }

    fn read_config(&self, offset: u64, size: u8) -> u64 {
        if !Self::config_access_ok(offset, size) {
            return 0;
        }
        let mut buf = [0u8; 8];
        self.device
            .read_config(offset, &mut buf[..usize::from(size)]);
        u64::from_le_bytes(buf)
    }

    fn write_config(&mut self, offset: u64, size: u8, value: u64) {
        if !Self::config_access_ok(offset, size) {
            return;
        }
        let buf = value.to_le_bytes();
        self.device.write_config(offset, &buf[..usize::from(size)]);
    }
}
