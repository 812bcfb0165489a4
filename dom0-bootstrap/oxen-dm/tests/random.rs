//! Randomized guest input: register writes and descriptor tables a hostile or buggy driver
//! could produce. The assertions are that nothing panics and the disk file keeps its size
//! (no I/O outside it). A fixed-seed LCG keeps runs reproducible without a fuzzing crate.

mod common;

use common::*;
use oxen_dm::mmio::Effect;
use oxen_dm::{Block, MmioTransport};
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

/// Knuth's MMIX LCG; the high bits are the good ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Follows up an Effect as the ioreq loop would.
fn apply(t: &mut MmioTransport, e: Effect) {
    if let Effect::QueueNotify(q) = e {
        let _ = t.process_queue(q);
    }
}

#[test]
fn random_register_accesses_never_panic() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let regs: Vec<u64> = (0..0x40).map(|i| i * 4).collect();
    for seed in 0..64u64 {
        let mut r = Lcg(seed);
        let (_tmp, file) = image(64, 0);
        let mut t = MmioTransport::new(
            Box::new(Block::new(file, r.below(2) == 0, "rnd").unwrap()),
            mem.clone(),
        )
        .unwrap();
        // Half the runs start from a working device, so notifies reach the queue code.
        if seed % 2 == 0 {
            let f = offered(&mut t);
            let _ = negotiate(&mut t, f);
            setup_queue(&mut t, &vq);
            let _ = wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL);
        }
        for _ in 0..2000 {
            let off = match r.below(4) {
                0 => r.below(0x1100),
                1 => r.next(),
                _ => r.pick(&regs),
            };
            let size = if r.below(4) == 0 {
                r.below(16) as u8
            } else {
                4
            };
            let val = match r.below(4) {
                0 => r.next(),
                1 => r.below(0x200),
                2 => r.pick(&[0, 1, 2, 3, 0xb, 0xf, 0x4f, 0x80, u32::MAX as u64]),
                _ => vq.desc_table_addr().0 + r.below(0x1000),
            };
            if r.below(3) == 0 {
                let _ = t.read(off, size);
            } else {
                let e = t.write(off, size, val);
                apply(&mut t, e);
            }
        }
    }
}

#[test]
fn random_descriptor_tables_never_panic() {
    const DATA_AREA: u64 = 0x10_0000;
    const DATA_LEN: u64 = 0x4_0000;
    let mut completed = 0u64;
    for seed in 0..200u64 {
        let mut r = Lcg(seed.wrapping_mul(0x9e37_79b9));
        let mem = mem();
        let vq = Vq::new(&mem, GuestAddress(0));
        let (tmp, file) = image(64, 0x5a);
        let ro = r.below(4) == 0;
        let mut t = blk_up(&mem, &vq, file, ro);

        // Random bytes where buffers will point, with well-formed headers sprinkled in.
        let junk: Vec<u8> = (0..DATA_LEN).map(|_| r.next() as u8).collect();
        mem.write_slice(&junk, GuestAddress(DATA_AREA)).unwrap();
        for _ in 0..32 {
            let at = (DATA_AREA + r.below(DATA_LEN - 16)) & !0xf;
            let ty = r.pick(&[0u32, 1, 4, 8, 11, 99]);
            let any = r.next();
            let sector = r.pick(&[0u64, 1, 63, 64, 65, u64::MAX, any]);
            mem.write_obj(ty, GuestAddress(at)).unwrap();
            mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        }

        for _round in 0..8 {
            // A random descriptor table.
            for i in 0..QSIZE {
                let addr = match r.below(6) {
                    0 => r.next() << 16 | r.next(),
                    1 => MEM_SIZE as u64 - r.below(64),
                    _ => DATA_AREA + r.below(DATA_LEN),
                };
                let len = match r.below(5) {
                    0 => r.next() as u32,
                    1 => r.pick(&[0, 1, 15, 16, 17, 512, 513, 4096]),
                    _ => r.below(2048) as u32,
                };
                let flags = r.below(8) as u16; // NEXT | WRITE | INDIRECT
                let next = if r.below(8) == 0 {
                    r.next() as u16
                } else {
                    r.below(u64::from(QSIZE)) as u16
                };
                vq.desc_table()
                    .store(i, desc(addr, len, flags, next))
                    .unwrap();
            }
            // A random avail ring and index: sometimes far ahead of what was used.
            let avail = vq.avail_addr();
            let old_idx: u16 = mem.read_obj(GuestAddress(avail.0 + 2)).unwrap();
            for i in 0..QSIZE {
                let head = if r.below(8) == 0 {
                    r.next() as u16
                } else {
                    r.below(u64::from(QSIZE)) as u16
                };
                mem.write_obj(head, GuestAddress(avail.0 + 4 + 2 * u64::from(i)))
                    .unwrap();
            }
            let new_idx = match r.below(4) {
                0 => r.next() as u16,
                _ => old_idx.wrapping_add(1 + r.below(u64::from(QSIZE)) as u16),
            };
            mem.write_obj(new_idx, GuestAddress(avail.0 + 2)).unwrap();
            let e = wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            apply(&mut t, e);
            let _ = wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX);
        }
        completed += u64::from(
            mem.read_obj::<u16>(GuestAddress(vq.used_addr().0 + 2))
                .unwrap(),
        );
        let f = std::fs::read(tmp.as_path()).unwrap();
        assert_eq!(f.len(), 64 * 512, "seed {seed}: I/O stayed inside the disk");
        if ro {
            assert!(
                f.iter().all(|&b| b == 0x5a),
                "seed {seed}: read-only disk unchanged"
            );
        }
    }
    // The inputs reach request handling, not only virtio-queue's index checks.
    assert!(completed > 200, "only {completed} chains completed");
    eprintln!("{completed} random chains completed");
}
