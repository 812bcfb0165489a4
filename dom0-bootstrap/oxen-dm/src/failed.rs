//! What a device becomes when its device model died (issue 11: "if a domU's device model dies,
//! that domU's I/O fails with errors inside the guest").
//!
//! [`Failed`] shows the driver the same device (type, features, configuration space, queues: it
//! is built from the dead one's [`TransportState`]) and completes every buffer the driver makes
//! available without doing anything: a disk's requests end with `VIRTIO_BLK_S_IOERR`, which
//! Linux reports as I/O errors; a network device's transmitted frames are used unsent and its
//! receive buffers are never filled (a cable pulled). `oxen-dm`'s warden serves them
//! (`crate::warden`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET};
use virtio_queue::{Queue, QueueT};

use crate::mmio::{copy_config, ActivateError, TransportState, VirtioDevice, STATE_CONFIG};
use crate::GuestMemoryMmap;

/// virtio-net's receive queue (§5.1.2): the one queue a failed device leaves alone.
const NET_RX: u16 = 0;

/// A dead device model's device, failing every request.
pub struct Failed {
    device_type: u32,
    features: u64,
    config: [u8; STATE_CONFIG],
    queue_sizes: Vec<u16>,
    active: Option<(Arc<GuestMemoryMmap>, Vec<Queue>)>,
    failed: Arc<AtomicU64>,
}

impl Failed {
    /// The device `state` was taken from, failing.
    pub fn new(state: &TransportState) -> Self {
        let count = usize::from(state.queue_count).min(state.queues.len());
        Self {
            device_type: state.device_type,
            features: state.device_features,
            config: state.config,
            queue_sizes: state.queues[..count].iter().map(|q| q.max_size).collect(),
            active: None,
            failed: Arc::default(),
        }
    }

    /// How many buffers it completed (failed), readable after the transport took it.
    pub fn count(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failed)
    }
}

impl VirtioDevice for Failed {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.active = Some((mem, queues));
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> bool {
        if self.device_type == VIRTIO_ID_NET && index == NET_RX {
            return false;
        }
        let block = self.device_type == VIRTIO_ID_BLOCK;
        let Some((mem, queues)) = self.active.as_mut() else {
            return false;
        };
        let Some(queue) = queues.get_mut(usize::from(index)).filter(|q| q.ready()) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&**mem) {
            let head = chain.head_index();
            let len = if block { crate::block::fail_request(mem, chain) } else { 0 };
            if queue.add_used(&**mem, head, len).is_ok() {
                used = true;
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        used && queue.needs_notification(&**mem).unwrap_or(true)
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
