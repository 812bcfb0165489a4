//! A device model's death (issue 11): its transport's state taken as a value and a failed device
//! resumed behind it, as `oxen-dm`'s warden does. The driver sees the same device, registers and
//! queue; what it had made available and what it makes available afterwards completes with an
//! error.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use oxen_dm::failed::Failed;
use oxen_dm::mmio::{Effect, ResumeError};
use oxen_dm::MmioTransport;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::{Address, Bytes, GuestAddress};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn a_failed_disk_goes_on_from_the_registers_and_fails_every_request() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(64, 0x5a);
    let mut t = blk_up(&mem, &vq, file, false);
    assert_eq!(request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 0, 512, true), (513, OK));
    let features = offered(&mut t);
    let capacity = t.read(0x100, 8);

    // A request made available that the dead model never took, then the state as it published it.
    header(&mem, VIRTIO_BLK_T_IN, 1);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    vq.add_desc_chains(&[desc(HDR, 16, F_NEXT, 1), desc(DATA, 512, F_NEXT | F_WRITE, 2), desc(STATUS, 1, F_WRITE, 0)], 0);
    let state = t.state().unwrap();
    drop(t);

    let device = Failed::new(&state);
    let failed = device.count();
    let mut t = MmioTransport::resume(Box::new(device), Arc::clone(&mem), &state).unwrap();
    // The same device to the driver.
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_ALL);
    assert_eq!(offered(&mut t), features);
    assert_eq!(t.read(0x100, 8), capacity);
    assert_eq!(t.state().map(|s| s.queues), Some(state.queues));
    // The pending request fails (taking the queue up where the used ring is), and so does a new one.
    assert_eq!(t.process_queue(0), Effect::Interrupt(true));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), IOERR);
    let used: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 2, "the request the first model completed is not completed again");
    assert_eq!(wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING), Effect::Interrupt(false));
    assert_eq!(request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 2, 512, false), (1, IOERR));
    assert_eq!(request(&mut t, &mem, &vq, VIRTIO_BLK_T_FLUSH, 0, 0, false), (1, IOERR));
    assert_eq!(failed.load(Ordering::Relaxed), 3);
}

#[test]
fn a_state_from_before_driver_ok_resumes_unstarted() {
    let mem = mem();
    let (_tmp, file) = image(8, 0);
    let t = MmioTransport::new(Box::new(oxen_dm::Block::new(file, true, "x").unwrap()), Arc::clone(&mem)).unwrap();
    let state = t.state().unwrap();
    let mut f = MmioTransport::resume(Box::new(Failed::new(&state)), Arc::clone(&mem), &state).unwrap();
    assert!(!f.is_activated());
    assert_eq!(rd(&mut f, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(f.process_queue(0), Effect::None);
}

#[test]
fn a_state_is_only_resumed_behind_the_same_kind_of_device() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(8, 0);
    let t = blk_up(&mem, &vq, file, false);
    let mut state = t.state().unwrap();
    let (_tmp2, file2) = image(8, 0);
    // A device of another type.
    let mut other = state;
    other.device_type = VIRTIO_ID_BLOCK + 1;
    let other_dev = Failed::new(&other);
    assert_eq!(MmioTransport::resume(Box::new(other_dev), Arc::clone(&mem), &state).err(), Some(ResumeError::OtherDevice));
    // A ready queue whose rings are not in guest memory any more.
    state.queues[0].device = (MEM_SIZE as u64) + 0x1000;
    let dev = oxen_dm::Block::new(file2, false, "x").unwrap();
    assert_eq!(MmioTransport::resume(Box::new(dev), Arc::clone(&mem), &state).err(), Some(ResumeError::BadQueue(0)));
}

/// Records the lines a router drives.
struct Lines(Vec<(u32, bool)>);

impl oxen_dm::serve::Host for Lines {
    fn wait(&mut self, _: std::time::Duration, _: &mut [oxen_dm::serve::Watch]) -> std::io::Result<oxen_dm::serve::Wake> {
        Ok(oxen_dm::serve::Wake::Timeout)
    }
    fn ioreq_done(&mut self, _: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn irq_line(&mut self, gsi: u32, level: bool) -> std::io::Result<()> {
        self.0.push((gsi, level));
        Ok(())
    }
    fn domain_info(&mut self) -> std::io::Result<Option<oxen_abi::DomainInfo>> {
        Ok(None)
    }
}

#[test]
fn a_router_taking_over_sets_every_line_and_fails_what_was_pending() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(64, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    // The dead model had raised the line for a completed request the driver had not acknowledged.
    assert_eq!(request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 0, 512, true), (513, OK));
    header(&mem, VIRTIO_BLK_T_IN, 1);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    vq.add_desc_chains(&[desc(HDR, 16, F_NEXT, 1), desc(DATA, 512, F_NEXT | F_WRITE, 2), desc(STATUS, 1, F_WRITE, 0)], 0);
    let state = t.state().unwrap();
    let resumed = MmioTransport::resume(Box::new(Failed::new(&state)), Arc::clone(&mem), &state).unwrap();
    let spec = oxen_dm::spec::DiskSpec { base: 0xfeb0_0000, gsi: 16, read_only: false, vdev: "xvda".into(), target: tmp.as_path().into() };
    let mut router = oxen_dm::serve::Router::new(vec![oxen_dm::serve::Disk::new(spec, resumed, Arc::default(), None)], String::new());
    let mut host = Lines(Vec::new());
    // Nothing pending in InterruptStatus (the driver acknowledged): the line is set low, even
    // though this router never raised it.
    router.take_lines(&mut host);
    assert_eq!(host.0, [(16, false)]);
    router.process_all(&mut host);
    assert_eq!(host.0, [(16, false), (16, true)], "the pending request completed, the driver interrupted");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), IOERR);
}
