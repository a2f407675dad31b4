//! Read-back through a small ring of reused staging buffers.
//!
//! A sampling loop that shows a preview reads x_t every step. Mapping a fresh MAP_READ
//! buffer per step costs an allocation (and, in the browser, GPU memory until the garbage
//! collector runs), and waiting for the read before submitting the next step leaves the GPU
//! idle for a whole round trip per step. With a ring the loop submits step k + 1 first and
//! only then waits for step k's copy: `enqueue` records the copy behind everything already
//! submitted and starts the map, `take` waits for that map alone. Copies run in submission
//! order, so a ticket holds exactly the values the tensors had when it was enqueued.

use futures_channel::oneshot;

use super::{Gpu, Owned, Tensor};
use crate::error::{EngineError, Result};

type MapOutcome = oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// `depth` staging buffers, each allocated on first use and grown when a read needs more.
pub struct ReadRing {
    slots: Vec<Slot>,
    next: usize,
    tickets: u64,
    created: usize,
}

#[derive(Default)]
struct Slot {
    staging: Option<Owned<wgpu::Buffer>>,
    /// The map started by the last `enqueue` into this slot, until `take` (or a later
    /// `enqueue`) consumes it.
    pending: Option<MapOutcome>,
    /// The ticket whose values the slot holds (tickets count from 1).
    ticket: u64,
}

/// A read in flight: which slot holds it and how its bytes split into tensors.
#[must_use = "a ticket's values are only read by `ReadRing::take`"]
pub struct ReadTicket {
    slot: usize,
    id: u64,
    sizes: Vec<u64>,
}

impl ReadRing {
    /// A ring of `depth` buffers: a loop may hold `depth` tickets at once.
    pub fn new(depth: usize) -> Self {
        let depth = depth.max(1);
        ReadRing { slots: (0..depth).map(|_| Slot::default()).collect(), next: 0, tickets: 0, created: 0 }
    }

    /// How many staging buffers the ring has allocated so far (a test's window on reuse).
    pub fn buffers_created(&self) -> usize {
        self.created
    }

    /// Queues a copy of `tensors` (after all submitted work) and starts mapping it. Reusing
    /// a slot whose ticket was never taken (a cancelled loop) first waits for that map.
    pub async fn enqueue(&mut self, gpu: &Gpu, tensors: &[&Tensor]) -> Result<ReadTicket> {
        let ranges: Vec<(&Tensor, u64, u64)> =
            tensors.iter().map(|t| (*t, 0, t.numel() as u64 * 4)).collect();
        self.enqueue_ranges(gpu, &ranges).await
    }

    /// As [`ReadRing::enqueue`], for (tensor, byte offset, bytes) ranges of tensors' buffers
    /// (a tensor's partial statistics live past its values).
    pub async fn enqueue_ranges(&mut self, gpu: &Gpu, ranges: &[(&Tensor, u64, u64)]) -> Result<ReadTicket> {
        gpu.check()?;
        let sizes: Vec<u64> = ranges.iter().map(|r| r.2).collect();
        let total: u64 = sizes.iter().sum();
        let index = self.next;
        self.next = (index + 1) % self.slots.len();
        Self::settle(gpu, &mut self.slots[index]).await?;

        let slot = &mut self.slots[index];
        if slot.staging.as_ref().is_none_or(|b| b.size() < total) {
            slot.staging = None; // give the old buffer back before asking for a larger one
                                 // As large as what it reads (every image of a run, twice with x0_hat): this may
                                 // be the allocation that no longer fits.
            let staging = gpu
                .scoped(format!("a read-back buffer of {total} bytes"), || {
                    Ok(gpu.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("read-back"),
                        size: total,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }))
                })
                .await?;
            slot.staging = Some(staging);
            self.created += 1;
        }
        let staging = slot.staging.as_ref().expect("allocated above");
        let mut encoder =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        let mut offset = 0;
        for &(t, from, size) in ranges {
            encoder.copy_buffer_to_buffer(t.buffer(), from, staging, offset, size);
            offset += size;
        }
        gpu.queue.submit([encoder.finish()]);
        let (tx, rx) = oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, ..total, move |r| {
            let _ = tx.send(r);
        });
        self.tickets += 1;
        slot.pending = Some(rx);
        slot.ticket = self.tickets;
        Ok(ReadTicket { slot: index, id: self.tickets, sizes })
    }

    /// Waits for a ticket's copy and returns its tensors' values, in `enqueue`'s order.
    pub async fn take(&mut self, gpu: &Gpu, ticket: ReadTicket) -> Result<Vec<Vec<f32>>> {
        let slot = &mut self.slots[ticket.slot];
        let pending = match slot.pending.take() {
            Some(p) if slot.ticket == ticket.id => p,
            other => {
                slot.pending = other;
                return Err(EngineError::Internal(format!(
                    "read-back ticket {} was overwritten: more than {} reads in flight",
                    ticket.id,
                    self.slots.len()
                )));
            }
        };
        gpu.poll_wait()?;
        pending
            .await
            .map_err(|_| EngineError::ReadBack("the map callback was dropped".into()))?
            .map_err(|e| EngineError::ReadBack(e.to_string()))?;
        let staging = slot.staging.as_ref().expect("a pending map has a buffer");
        // Checked after the map: a device lost meanwhile maps garbage or nothing.
        let checked = gpu.check();
        let out = checked.and_then(|()| {
            let total: u64 = ticket.sizes.iter().sum();
            let view = staging.get_mapped_range(..total).map_err(|e| EngineError::ReadBack(e.to_string()))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            let mut start = 0;
            Ok(ticket
                .sizes
                .iter()
                .map(|&s| {
                    let len = (s / 4) as usize;
                    start += len;
                    all[start - len..start].to_vec()
                })
                .collect())
        });
        staging.unmap();
        out
    }

    /// Finishes a map nobody took, so the slot's buffer can be copied into again.
    async fn settle(gpu: &Gpu, slot: &mut Slot) -> Result<()> {
        if let Some(pending) = slot.pending.take() {
            gpu.poll_wait()?;
            if let Ok(Ok(())) = pending.await {
                if let Some(b) = &slot.staging {
                    b.unmap();
                }
            }
        }
        Ok(())
    }
}
